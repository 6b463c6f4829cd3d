"""The statistics that decide when a measurement stops and what a verdict may rank
(pipeline.stats), checked against constructed data with known answers."""

import numpy as np
import pytest

from pipeline import stats
from pipeline.config import ConfigError, RepeatPolicy, WorkloadConfig
from pipeline.run.measure import measure_repeats, warm_up

TRIALS = 300
# A 95% interval's coverage over TRIALS trials has a binomial standard error of ~1.3%: a
# method that truly covers 95% lands in [0.91, 0.99] except with odds below 1 in 1000.
COVERAGE = (0.91, 0.99)


def _coverage(make_groups, true_median: float, seed: int) -> float:
    rng = np.random.default_rng(seed)
    hits = 0
    for trial in range(TRIALS):
        _, low, high = stats.bootstrap_interval(make_groups(rng), resamples=1000, seed=trial)
        hits += low <= true_median <= high
    return hits / TRIALS


def test_interval_coverage_on_independent_requests():
    # One repeat of 40 requests, lognormal: the median of exp(N(0, 0.3)) is 1.
    coverage = _coverage(lambda rng: [np.exp(rng.normal(0, 0.3, 40))], 1.0, seed=1)
    assert COVERAGE[0] <= coverage <= COVERAGE[1], coverage


@pytest.mark.parametrize("repeats,requests", [(3, 8), (5, 4), (8, 4)])
def test_interval_coverage_when_whole_repeats_drift(repeats, requests):
    # Host drift moves each repeat by its own factor (10%), requests vary within it (5%):
    # the interval must see the drift between repeats, even from a few repeats.
    def groups(rng):
        drift = rng.normal(0, 0.1, repeats)
        return [np.exp(d + rng.normal(0, 0.05, requests)) for d in drift]

    coverage = _coverage(groups, 1.0, seed=repeats)
    assert COVERAGE[0] <= coverage <= COVERAGE[1], coverage


def test_a_plain_bootstrap_of_few_drifting_repeats_would_be_too_narrow():
    # Why the half-widths are widened: without the small-sample factor, 3 drifting repeats
    # cover the true median far less than 95% of the time.
    rng = np.random.default_rng(7)
    hits = 0
    for trial in range(TRIALS):
        groups = [np.exp(d + rng.normal(0, 0.02, 8)) for d in rng.normal(0, 0.1, 3)]
        estimate, low, high = stats.bootstrap_interval(groups, resamples=1000, seed=trial)
        factor = stats.small_sample_factor(3)
        low, high = estimate * (low / estimate) ** (1 / factor), estimate * (high / estimate) ** (1 / factor)
        hits += low <= 1.0 <= high
    assert hits / TRIALS < 0.85


def test_a_wide_interval_of_a_positive_figure_stays_above_zero():
    # Two repeats far apart: the widening (6.5x for two) must not produce a negative TPOT.
    estimate, low, high = stats.bootstrap_interval([[0.004, 0.0041], [0.009, 0.0095]])
    assert 0 < low < estimate < high


def test_ratio_interval_of_throughput_over_repeats():
    estimate, low, high = stats.ratio_interval([100, 100, 100, 100], [1.0, 1.1, 0.9, 1.0])
    assert estimate == pytest.approx(100.0)
    assert low < 100 < high
    # One repeat: the value, but no interval.
    single = stats.ratio_interval([100], [2.0])
    assert single[0] == 50 and np.isnan(single[1]) and stats.relative_half_width(single) is None


def test_uneven_repeats_are_resampled_with_their_own_sizes():
    # The padding of short repeats never enters a draw: no draw's maximum exceeds the largest value.
    estimate, low, high = stats.bootstrap_interval([[1.0] * 9, [2.0], [1.0, 2.0]], percentile=100, resamples=500)
    assert estimate == 2.0 and high == 2.0 and np.isfinite(low)


# --- steady state -----------------------------------------------------------------------------


def test_a_ramp_is_not_steady_and_a_flat_series_is():
    ramp = [0.050, 0.040, 0.032, 0.027]
    assert not any(stats.steady(ramp[: i + 1], 0.10) for i in range(len(ramp)))
    flat = [0.0250, 0.0262]
    assert stats.steady(flat, 0.10)
    assert not stats.steady([0.025], 0.10)  # one round says nothing


def test_a_slow_first_repeat_is_an_outlier_and_noise_is_not():
    assert stats.first_is_outlier([0.052, 0.026, 0.0255, 0.027], 0.10)  # half speed, as seen on this host
    assert stats.first_is_outlier([0.020, 0.026, 0.027], 0.10)  # faster is suspicious too
    assert not stats.first_is_outlier([0.0262, 0.0255, 0.0270], 0.10)
    assert not stats.first_is_outlier([0.0280, 0.0255, 0.0270], 0.10)  # outside the range, within the tolerance
    assert not stats.first_is_outlier([0.05, 0.026], 0.10)  # two repeats span no range


def test_separated_intervals_rank_and_overlapping_ones_do_not():
    assert stats.separated((1.0, 2.0), (2.5, 3.0)) == -1
    assert stats.separated((2.5, 3.0), (1.0, 2.0)) == 1
    assert stats.separated((1.0, 2.6), (2.5, 3.0)) == 0
    assert stats.separated((1.0, float("nan")), (2.5, 3.0)) == 0


def test_a_trend_over_the_repeats_is_found_and_noise_is_not():
    # Measured: five engine starts of hf small-llama bf16 at batch 1, each faster than the last (ms):
    change, p = stats.trend([48.9, 43.7, 39.9, 35.2, 31.0])
    assert stats.trending((change, p)) and p < 0.05 and -0.5 < change < -0.4
    # A ramp under noise across 14 repeats is found; a flat noisy series is not.
    rng = np.random.default_rng(5)
    ramp = np.linspace(1.0, 1.3, 14) * np.exp(rng.normal(0, 0.05, 14))
    assert stats.trending(stats.trend(ramp))
    assert not stats.trending(stats.trend(np.exp(rng.normal(0, 0.05, 14))))
    # A significant trend too small to matter (2% over the cell) is not flagged; four repeats are too few.
    small = stats.trend(np.linspace(1.0, 1.02, 14))
    assert small[1] < 0.05 and not stats.trending(small)
    assert stats.trend([1.0, 2.0, 3.0, 4.0]) is None


def test_a_trend_is_flagged_in_about_five_percent_of_series_without_one():
    rng = np.random.default_rng(6)
    flagged = sum(stats.trending(stats.trend(np.exp(rng.normal(0, 0.2, 14)))) for _ in range(TRIALS))
    assert flagged / TRIALS <= 0.09, flagged


# --- the measurement loop, on a stand-in for an engine's rounds ---------------------------------


class StandInRounds:
    """Stand-in for pipeline.run.measure.Rounds: each round's requests take the next step time
    of a constructed series (TPOT), so the loop's decisions can be checked exactly."""

    batch_size = 1

    def __init__(self, step_times, requests_jitter=0.0):
        self.steps = list(step_times)
        self.calls: list[str] = []
        self.jitter = requests_jitter

    def run(self, requests: int, stream: str) -> list[dict]:
        step = self.steps[min(len(self.calls), len(self.steps) - 1)]
        self.calls.append(stream)
        records, t = [], 0.0
        for index in range(requests):
            tpot = step * (1 + self.jitter * ((index % 3) - 1))
            records.append(
                {
                    "success": True,
                    "tpot_s": tpot,
                    "ttft_s": 2 * tpot,
                    "output_tokens": 16,
                    "t_send": t,
                    "t_end": t + 2 * tpot + 15 * tpot,
                    "request": index,
                }
            )
            t += 17 * tpot
        return records

    def describe(self, count):
        return f"{count} requests"


def workload(**values) -> WorkloadConfig:
    return WorkloadConfig(**{"num_requests": 6, "warmup_requests": 1, **values})


def test_warm_up_runs_until_two_rounds_agree():
    rounds = StandInRounds([0.050, 0.040, 0.030, 0.0295, 0.0294])
    result = warm_up(rounds, workload(), progress=lambda m: None)
    assert result["rounds"] == 4 and result["steady"] is True
    assert result["step_s"] == pytest.approx([0.050, 0.040, 0.030, 0.0295])


def test_warm_up_that_never_settles_stops_at_its_cap_and_says_so():
    said = []
    rounds = StandInRounds([0.05 * 0.8**i for i in range(10)])
    result = warm_up(rounds, workload(warmup_max_rounds=3), progress=said.append)
    assert result == {"rounds": 3, "step_s": pytest.approx([0.05, 0.04, 0.032]), "steady": False}
    assert "did not settle" in said[0]


def test_adaptive_repeats_stop_when_the_intervals_converge():
    rounds = StandInRounds([0.025], requests_jitter=0.01)
    policy = {"min": 3, "max": 8, "target": 0.05}
    records, summary = measure_repeats(rounds, workload(repeats=policy), progress=lambda m: None)
    assert summary["stop"] == "converged" and summary["converged"] is True
    assert summary["kept"] == 3 and summary["run"] == 3 and len(records) == 18
    assert all(w <= 0.05 for w in summary["half_widths"].values())


def test_adaptive_repeats_stop_at_max_when_the_host_keeps_drifting():
    drift = [0.025, 0.031, 0.022, 0.030, 0.021, 0.032]
    rounds = StandInRounds(drift)
    records, summary = measure_repeats(
        rounds, workload(repeats={"min": 3, "max": 5, "target": 0.02}), progress=lambda m: None
    )
    assert summary["stop"] == "max" and summary["converged"] is False
    assert summary["kept"] == 5 and {r["repeat"] for r in records} == {0, 1, 2, 3, 4}


def test_a_first_repeat_at_half_speed_is_discarded_and_run_again():
    rounds = StandInRounds([0.052, 0.026, 0.0255, 0.026])
    records, summary = measure_repeats(rounds, workload(repeats=3), progress=lambda m: None)
    assert summary["discarded"] == [0] and summary["kept"] == 3 and summary["run"] == 4
    assert {r["repeat"] for r in records if r["discarded"]} == {0}
    assert {r["repeat"] for r in records if not r["discarded"]} == {1, 2, 3}
    assert rounds.calls == ["r0", "r1", "r2", "r3"]  # every prompt set distinct


def test_repeat_policy_bad_input_is_a_clear_error():
    assert RepeatPolicy.parse(4) == RepeatPolicy(4, 4)
    assert not RepeatPolicy.parse(4).adaptive
    assert RepeatPolicy.parse({"min": 2, "max": 6, "target": 0.05}).adaptive
    with pytest.raises(ConfigError, match="max .* must be >= min"):
        RepeatPolicy.parse({"min": 5, "max": 3, "target": 0.05})
    with pytest.raises(ConfigError, match=r"unknown workload.repeats setting\(s\) \['targte'\]"):
        RepeatPolicy.parse({"min": 3, "targte": 0.05})
    with pytest.raises(ConfigError, match="relative half-width"):
        WorkloadConfig(repeats={"min": 3, "max": 5, "target": 5})


def test_interval_coverage_when_whole_engine_processes_differ():
    # Three engine starts, each 20% off in its own direction; repeats within a start agree
    # to 3%: the interval must cover the processes' spread, not only the repeats'.
    rng = np.random.default_rng(11)
    hits = {"by start": 0, "repeats as independent": 0}
    trials = 150
    for trial in range(trials):
        groups, clusters = [], []
        for start, shift in enumerate(rng.normal(0, 0.2, 3)):
            for drift in rng.normal(0, 0.03, 2):
                groups.append(np.exp(shift + drift + rng.normal(0, 0.02, 4)))
                clusters.append(start)
        for name, labels in (("by start", clusters), ("repeats as independent", None)):
            _, low, high = stats.bootstrap_interval(groups, resamples=400, seed=trial, clusters=labels)
            hits[name] += low <= 1.0 <= high
    assert hits["by start"] / trials >= 0.90, hits
    assert hits["repeats as independent"] / trials < 0.85, hits  # what ignoring the starts would claim
