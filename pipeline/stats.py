"""The statistics measurement and analysis share (pure functions on numbers, no I/O).

A benchmark process uses them to decide when to stop (steady warm-up, repeats until the
interval is narrow enough); collect uses the same functions for the intervals in cells.csv,
so a cell that stopped because its interval converged shows that interval.

The rules, stated once (README, "What the numbers mean"):

- **Interval**: 95%, percentile bootstrap, two-level: resample the repeats with replacement,
  then the requests within each drawn repeat, and take the statistic of the pooled draw.
  Host drift moves whole repeats, so repeats are the unit of noise; requests within a repeat
  add their own. When a cell was measured by several engine starts (workload.instance_starts),
  the starts are the top level: a fresh process of the same configuration can differ more
  than repeats inside one. With few units at the top level a percentile bootstrap is too
  narrow (it cannot see more variation than the few it has), so the half-widths are widened
  by the small-sample factor t(0.975, k-1) / z(0.975) for k top-level units (k >= 2), the
  same factor a t-interval over their means would use; for positive figures on the log
  scale, so that a wide interval never reaches below zero (two repeats widen 6.5x).
  tests/test_stats.py measures the coverage.
- **Steady warm-up**: warm-up rounds go on until the last two rounds' step times agree
  within `tolerance` (relative to the smaller), or the cap is reached.
- **First-repeat outlier**: with at least three repeats, the first is an outlier when it lies
  outside the others' range by more than `tolerance` of their median (a warm-up the rule
  missed); the measurement then discards and redoes it once.
- **Trend over repeats**: a cell's per-repeat TPOT (in time order, across its engine starts)
  drifts when Mann-Kendall's test finds a trend at 5% and Sen's slope amounts to a change of
  at least 10% over the cell (`trend`, `trending`): the host or the engine changed speed while
  it was measured, which its interval covers but a re-run may not reproduce.
- **SLO met**: for each target of workload.slo, at least `percentile`% of the requests within
  it; a failed request is within none (`slo_figures`: cells in collect, probes in the load search).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 2000
Z_975 = 1.959963984540054

# t(0.975, df) for df = 1..30; beyond, the normal quantile is close enough (t_30 = 2.042)
_T_975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def small_sample_factor(groups: int) -> float:
    """t(0.975, k-1) / z(0.975): how much wider than a normal-theory interval k groups must be."""
    if groups < 2:
        return 1.0
    df = groups - 1
    return (_T_975[df - 1] if df <= len(_T_975) else Z_975) / Z_975


def bootstrap_interval(
    groups: Sequence[Sequence[float]],
    percentile: float = 50,
    resamples: int = RESAMPLES,
    seed: int = 0,
    clusters: Sequence | None = None,
) -> tuple[float, float, float] | None:
    """(estimate, low, high) of a percentile of the pooled values, 95%, two-level bootstrap
    (groups = repeats, values = requests); None when there are no values. With `clusters`
    (one label per group: the engine start that ran it) and more than one of them, three
    levels: starts, then repeats within each drawn start, then requests."""
    kept = [
        (np.asarray(g, dtype=float), c) for g, c in zip(groups, clusters or [0] * len(groups), strict=True) if len(g)
    ]
    if not kept:
        return None
    arrays = [a for a, _ in kept]
    estimate = float(np.percentile(np.concatenate(arrays), percentile))
    labels = sorted({c for _, c in kept})
    if len(labels) > 1:
        nested = [[a for a, c in kept if c == label] for label in labels]
        return _widened(estimate, _nested_draws(nested, percentile, resamples, seed), len(labels))
    k, lengths = len(arrays), np.array([len(a) for a in arrays])
    padded = np.full((k, lengths.max()), np.inf)  # a draw of a short repeat sorts its empty places last
    for i, values in enumerate(arrays):
        padded[i, : len(values)] = values
    positions = np.arange(padded.shape[1])
    rng = np.random.default_rng(seed)
    draws = []
    chunk = max(1, int(4e6 // padded.size))  # bounded memory for large cells
    for start in range(0, resamples, chunk):
        b = min(chunk, resamples - start)
        chosen = rng.integers(0, k, size=(b, k))  # which repeats
        sizes = lengths[chosen][..., None]
        picks = (rng.random((b, k, padded.shape[1])) * sizes).astype(int)  # requests within each
        values = np.where(positions < sizes, padded[chosen[..., None], picks], np.inf).reshape(b, -1)
        draws.append(_row_percentiles(np.sort(values, axis=1), sizes.sum(axis=(1, 2)), percentile))
    return _widened(estimate, np.concatenate(draws), k)


def log_softmax(logits) -> np.ndarray:
    """Natural-log probabilities of each row's logits, in float64 (the engines' fidelity passes)."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def mean_interval(
    groups: Sequence[Sequence[float]], resamples: int = RESAMPLES, seed: int = 0, upper: float | None = None
) -> tuple[float, float, float] | None:
    """(mean, low, high) of the pooled values, 95%, two-level bootstrap as bootstrap_interval's
    (groups, then values within each drawn group), widened alike; `upper` caps a share at 1."""
    arrays = [np.asarray(g, dtype=float) for g in groups if len(g)]
    if not arrays:
        return None
    estimate = float(np.concatenate(arrays).mean())
    k, lengths = len(arrays), np.array([len(a) for a in arrays])
    padded = np.zeros((k, lengths.max()))
    for i, values in enumerate(arrays):
        padded[i, : len(values)] = values
    rng = np.random.default_rng(seed)
    chosen = rng.integers(0, k, size=(resamples, k))
    sizes = lengths[chosen]
    picks = (rng.random((resamples, k, padded.shape[1])) * sizes[..., None]).astype(int)
    inside = np.arange(padded.shape[1]) < sizes[..., None]
    totals = np.where(inside, padded[chosen[..., None], picks], 0.0).sum(axis=(1, 2))
    estimate, low, high = _widened(estimate, totals / sizes.sum(axis=1), k)
    if upper is not None:
        low, high = min(low, upper), min(high, upper)
    return estimate, low, high


def _nested_draws(nested: list[list[np.ndarray]], percentile: float, resamples: int, seed: int) -> np.ndarray:
    """Three-level draws: clusters, groups within each, values within each group. Padded like
    the two-level case: positions past a cluster's groups or a group's values draw inf, which
    sorts last and is not counted."""
    c_count, g_max = len(nested), max(len(groups) for groups in nested)
    v_max = max(len(values) for groups in nested for values in groups)
    padded = np.full((c_count, g_max, v_max), np.inf)
    lengths = np.zeros((c_count, g_max), dtype=int)
    for c, groups in enumerate(nested):
        for g, values in enumerate(groups):
            padded[c, g, : len(values)], lengths[c, g] = values, len(values)
    group_counts = (lengths > 0).sum(axis=1)
    rng = np.random.default_rng(seed)
    draws = []
    chunk = max(1, int(4e6 // padded.size))
    for start in range(0, resamples, chunk):
        b = min(chunk, resamples - start)
        clusters = rng.integers(0, c_count, size=(b, c_count))
        groups_here = group_counts[clusters][..., None]  # (b, C, 1)
        groups = (rng.random((b, c_count, g_max)) * groups_here).astype(int)
        sizes = lengths[clusters[..., None], groups] * (np.arange(g_max) < groups_here)  # 0 past the groups
        picks = (rng.random((b, c_count, g_max, v_max)) * sizes[..., None]).astype(int)
        values = padded[clusters[..., None, None], groups[..., None], picks]
        values = np.where(np.arange(v_max) < sizes[..., None], values, np.inf).reshape(b, -1)
        draws.append(_row_percentiles(np.sort(values, axis=1), sizes.sum(axis=(1, 2)), percentile))
    return np.concatenate(draws)


def _row_percentiles(rows: np.ndarray, counts: np.ndarray, percentile: float) -> np.ndarray:
    """np.percentile (linear) of each sorted row's first counts[i] values."""
    rank = percentile / 100 * (counts - 1)
    low = np.floor(rank).astype(int)
    high = np.minimum(low + 1, counts - 1)
    at = np.arange(len(rows))
    return rows[at, low] + (rows[at, high] - rows[at, low]) * (rank - low)


def ratio_interval(
    numerators: Sequence[float],
    denominators: Sequence[float],
    resamples: int = RESAMPLES,
    seed: int = 0,
    clusters: Sequence | None = None,
) -> tuple[float, float, float] | None:
    """(estimate, low, high) of sum(numerators) / sum(denominators), bootstrapping the pairs
    (one per repeat): a throughput from each repeat's tokens and window. With `clusters` (the
    engine start of each repeat) and more than one, starts are drawn first, then their repeats."""
    num, den = np.asarray(numerators, dtype=float), np.asarray(denominators, dtype=float)
    if not len(num) or den.sum() <= 0:
        return None
    estimate = float(num.sum() / den.sum())
    labels = sorted(set(clusters)) if clusters is not None else [0]
    if len(labels) > 1:
        members = [np.flatnonzero(np.asarray(clusters) == label) for label in labels]
        counts = np.array([len(m) for m in members])
        padded = np.zeros((len(labels), counts.max()), dtype=int)
        for c, m in enumerate(members):
            padded[c, : len(m)] = m
        rng = np.random.default_rng(seed)
        chosen = rng.integers(0, len(labels), size=(resamples, len(labels)))
        sizes = counts[chosen][..., None]
        picks = padded[chosen[..., None], (rng.random((resamples, len(labels), counts.max())) * sizes).astype(int)]
        used = np.arange(counts.max()) < sizes  # positions past a start's repeats count nothing
        draws = (num[picks] * used).sum(axis=(1, 2)) / (den[picks] * used).sum(axis=(1, 2))
        return _widened(estimate, draws, len(labels))
    if len(num) == 1:
        return estimate, math.nan, math.nan
    rng = np.random.default_rng(seed)
    index = rng.integers(0, len(num), size=(resamples, len(num)))
    draws = num[index].sum(axis=1) / den[index].sum(axis=1)
    return _widened(estimate, draws, len(num))


def _widened(estimate: float, draws: np.ndarray, groups: int) -> tuple[float, float, float]:
    """The percentile interval, its half-widths scaled by the small-sample factor; for positive
    figures (times, throughputs) on the log scale, so that a wide interval stays above zero."""
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = (float(v) for v in np.percentile(draws, [tail, 100 - tail]))
    factor = small_sample_factor(groups)
    if estimate > 0 and low > 0:
        return estimate, estimate * (low / estimate) ** factor, estimate * (high / estimate) ** factor
    return estimate, estimate - (estimate - low) * factor, estimate + (high - estimate) * factor


def relative_half_width(interval: tuple[float, float, float] | None) -> float | None:
    """(high - low) / 2 / |estimate|; None when unknown (no interval, one repeat, a zero estimate)."""
    if interval is None:
        return None
    estimate, low, high = interval
    if not estimate or math.isnan(low) or math.isnan(high):
        return None
    return (high - low) / 2 / abs(estimate)


def steady(step_times: Sequence[float], tolerance: float) -> bool:
    """The last two warm-up rounds' step times agree within `tolerance` of the smaller."""
    if len(step_times) < 2:
        return False
    a, b = step_times[-2], step_times[-1]
    return abs(a - b) <= tolerance * min(a, b)


def first_is_outlier(values: Sequence[float], tolerance: float) -> bool:
    """The first repeat's figure lies outside the other repeats' range by more than
    `tolerance` of their median (needs three repeats: two others to span a range)."""
    if len(values) < 3:
        return False
    first, rest = values[0], sorted(values[1:])
    margin = tolerance * float(np.median(rest))
    return first < rest[0] - margin or first > rest[-1] + margin


TREND_P = 0.05  # a trend over a cell's repeats is flagged when Mann-Kendall's p is below this
TREND_CHANGE = 0.10  # and the change it amounts to over the cell is at least this (relative)
TREND_MIN_REPEATS = 5  # fewer cannot show a trend at 5% (a perfect ramp of 4 has p = 2/4! = 0.08)


def trend(values: Sequence[float]) -> tuple[float, float] | None:
    """(change, p) of a series in time order (a cell's per-repeat TPOT): change is Sen's slope
    (the median of the pairwise slopes) over the whole series relative to its median, p the
    two-sided Mann-Kendall p-value (normal approximation, continuity-corrected, no ties
    correction); None with fewer than TREND_MIN_REPEATS values."""
    n = len(values)
    if n < TREND_MIN_REPEATS:
        return None
    x = np.asarray(values, dtype=float)
    i, j = np.triu_indices(n, k=1)
    s = float(np.sign(x[j] - x[i]).sum())
    sd = math.sqrt(n * (n - 1) * (2 * n + 5) / 18)
    z = (s - math.copysign(1, s)) / sd if s else 0.0
    p = math.erfc(abs(z) / math.sqrt(2))
    slope = float(np.median((x[j] - x[i]) / (j - i)))
    return slope * (n - 1) / float(np.median(x)), p


def trending(found: tuple[float, float] | None) -> bool:
    """The series drifts: a significant trend that changes it by at least TREND_CHANGE."""
    return found is not None and found[1] < TREND_P and abs(found[0]) >= TREND_CHANGE


def separated(a: tuple[float, float], b: tuple[float, float]) -> int:
    """-1 when interval a lies wholly below b, 1 when wholly above, 0 when they overlap
    (or either is unknown)."""
    (a_low, a_high), (b_low, b_high) = a, b
    if any(v is None or math.isnan(v) for v in (a_low, a_high, b_low, b_high)):
        return 0
    if a_high < b_low:
        return -1
    if b_high < a_low:
        return 1
    return 0


# ---- the headline figures of a cell, from its request records ----------------------------------

HEADLINE = ("tpot_s_p50", "ttft_s_p50", "output_tok_s")


def measured_window(records: Sequence[dict]) -> float | None:
    """First request sent -> last token received, over successful requests."""
    ok = [r for r in records if r["success"]]
    if not ok:
        return None
    return max(r["t_end"] for r in ok) - min(r["t_send"] for r in ok)


def by_repeat(records: Sequence[dict]) -> dict[int, list[dict]]:
    """Successful records grouped by repeat, in repeat order."""
    groups: dict[int, list[dict]] = {}
    for record in sorted((r for r in records if r["success"]), key=lambda r: r["repeat"]):
        groups.setdefault(record["repeat"], []).append(record)
    return groups


def headline_intervals(records: Sequence[dict]) -> dict[str, tuple[float, float, float] | None]:
    """(estimate, low, high) of each headline figure: TPOT and TTFT p50 by the two-level
    bootstrap (three-level when the cell was measured by several engine starts), output tok/s
    (all tokens / all windows) by resampling repeats (within starts)."""
    groups = by_repeat(records)
    starts = [rows[0].get("start") or 0 for rows in groups.values()]
    out: dict[str, tuple[float, float, float] | None] = {}
    for name in ("tpot_s", "ttft_s"):
        values = [[r[name] for r in rows if r[name] is not None] for rows in groups.values()]
        out[f"{name}_p50"] = bootstrap_interval(values, clusters=starts)
    tokens, windows, clusters = [], [], []
    for rows, start in zip(groups.values(), starts, strict=True):
        window = measured_window(rows)
        if window:
            tokens.append(sum(r["output_tokens"] for r in rows))
            windows.append(window)
            clusters.append(start)
    out["output_tok_s"] = ratio_interval(tokens, windows, clusters=clusters)
    return out


def meets(record: dict, targets: dict[str, float]) -> bool:
    """A request within every target; a failed request meets none."""
    return bool(record["success"]) and all(
        record[key] is not None and record[key] <= target for key, target in targets.items()
    )


def count_within(records: list[dict], key: str, target: float) -> int:
    """How many requests are within one target (a failed request never is)."""
    return sum(meets(r, {key: target}) for r in records)


def target_holds(records: list[dict], key: str, target: float, percentile: float) -> bool:
    """At least `percentile`% of the requests within the target (the SLO-met rule, per target)."""
    return bool(records) and count_within(records, key, target) / len(records) >= percentile / 100


def total_window(records: list[dict]) -> float:
    """The measured windows of the repeats, summed (each repeat's first send to its last token)."""
    return sum(window for rows in by_repeat(records).values() if (window := measured_window(rows)))


def slo_figures(records: list[dict], slo) -> dict:
    """SLO attainment and goodput of a cell's measured requests against `slo` (a
    pipeline.config.SloConfig; None: {}). One rule for collect, which judges each cell, and the
    load search, which judges each probe as it runs."""
    if slo is None:
        return {}
    records = [r for r in records if not r.get("discarded")]
    targets = slo.targets
    good = [r for r in records if meets(r, targets)]
    window = total_window(records)

    return {
        "slo": slo.describe(),
        "slo_attainment": len(good) / len(records) if records else None,
        "slo_met": all(target_holds(records, k, t, slo.percentile) for k, t in targets.items()) if records else None,
        "goodput_req_s": len(good) / window if window else None,
        "goodput_tok_s": sum(r["output_tokens"] for r in good) / window if window else None,
    }
