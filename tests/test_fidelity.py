"""Precision fidelity: the divergence arithmetic, the top-k estimator, the judging of a pass, and
the interval of a mean; the engines' passes for real are in their own test files."""

import json
import math

import numpy as np
import pytest

from pipeline.analysis.fidelity import fidelity_columns, position_figures, position_kl
from pipeline.config import ConfigError, FidelityConfig
from pipeline.run.fidelity import candidate_values, read_reference, top_tokens
from pipeline.stats import log_softmax, mean_interval


def test_kl_over_the_whole_distribution_is_the_textbook_kl():
    p, q = np.array([0.5, 0.3, 0.2]), np.array([0.4, 0.4, 0.2])
    expected = 0.5 * math.log(0.5 / 0.4) + 0.3 * math.log(0.3 / 0.4)  # the third term is 0
    assert position_kl(np.log(p), np.log(q)) == pytest.approx(expected, rel=1e-12)
    assert position_kl(np.log(p), np.log(p)) == 0.0


def test_the_top_k_estimator_lumps_the_rest_into_one_bucket():
    # vocabulary of 4; k = 2 tokens kept: the rest is 0.2 on both sides, so it adds nothing
    p, q = np.array([0.5, 0.3, 0.15, 0.05]), np.array([0.4, 0.4, 0.1, 0.1])
    expected = 0.5 * math.log(0.5 / 0.4) + 0.3 * math.log(0.3 / 0.4)
    assert position_kl(np.log(p[:2]), np.log(q[:2])) == pytest.approx(expected, rel=1e-12)
    exact = float((p * np.log(p / q)).sum())
    assert position_kl(np.log(p[:2]), np.log(q[:2])) < exact  # merging buckets never raises a KL
    # rest masses that differ: 0.2 against 0.3
    q2 = np.array([0.4, 0.3])
    expected2 = 0.5 * math.log(0.5 / 0.4) + 0.2 * math.log(0.2 / 0.3)
    assert position_kl(np.log(p[:2]), np.log(q2)) == pytest.approx(expected2, rel=1e-12)


def test_an_unreported_token_counts_in_the_rest_bucket():
    p, q = np.array([0.5, 0.3, 0.15]), np.array([0.4, 0.4, 0.1])
    reported = np.log(q)
    reported[2] = np.nan  # the engine's own top-k did not hold the reference's third token
    assert position_kl(np.log(p), reported) == pytest.approx(position_kl(np.log(p[:2]), np.log(q[:2])), rel=1e-12)


def test_the_estimator_is_a_lower_bound_that_tightens_with_k():
    rng = np.random.default_rng(0)
    for _ in range(20):
        ref = log_softmax(rng.normal(0, 3, 500))
        cand = log_softmax(np.log(np.exp(ref)) + rng.normal(0, 0.3, 500))
        exact = float((np.exp(ref) * (ref - cand)).sum())
        order = np.argsort(-ref)
        estimates = [float(position_kl(ref[order[:k]], cand[order[:k]])) for k in (5, 20, 100, 500)]
        assert all(e <= exact * (1 + 1e-9) for e in estimates)
        assert estimates == sorted(estimates)  # more tokens kept: closer to the exact KL
        assert estimates[-1] == pytest.approx(exact, rel=1e-9)


def record_of(ref_logprobs: np.ndarray, cand_logprobs: np.ndarray, k: int = 5) -> dict:
    """A fidelity record from whole distributions (prompts x positions x vocab), as the pass writes it."""
    ids, values, cands, shown = [], [], [], []
    for ref_prompt, cand_prompt in zip(ref_logprobs, cand_logprobs, strict=True):
        top_ids, top_values = top_tokens(ref_prompt, k)
        ids.append(top_ids.tolist())
        values.append(top_values.tolist())
        cand_values, cand_shown = candidate_values(cand_prompt, top_ids.tolist())
        cands.append(cand_values)
        shown.append(cand_shown)
    return {
        "source": "logits",
        "reference_top_ids": ids,
        "reference_top_logprobs": values,
        "candidate_logprobs": cands,
        "candidate_top_ids": shown,
        "pass_s": 0.5,
    }


def test_agreement_overlap_and_log_probability_of_the_reference_token():
    ref = log_softmax(np.array([[[4.0, 3.0, 2.0, 1.0, 0.5, 0.0], [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]]]))
    # position 0: same order; position 1: the top two swapped and token 1 (fifth) pushed out by token 0
    cand = log_softmax(np.array([[[4.0, 3.0, 2.0, 1.0, 0.5, 0.0], [0.2, -1.0, 2.0, 3.0, 5.0, 4.0]]]))
    figures = position_figures(record_of(ref, cand))
    assert figures["top1"].tolist() == [[1.0, 0.0]]
    assert figures["top5"][0, 0] == 1.0 and figures["top5"][0, 1] == pytest.approx(4 / 5)
    assert figures["ref_logprob_delta"][0, 0] == pytest.approx(0.0, abs=1e-12)
    assert figures["ref_logprob_delta"][0, 1] == pytest.approx(cand[0, 1, 5] - ref[0, 1, 5])
    assert figures["kl"][0, 0] == pytest.approx(0.0, abs=1e-12) and figures["kl"][0, 1] > 0


def test_an_engine_reporting_only_its_own_top_k_is_read_the_same_way():
    ref = log_softmax(np.random.default_rng(1).normal(0, 2, (2, 4, 50)))
    cand = log_softmax(ref + np.random.default_rng(2).normal(0, 0.1, ref.shape))
    whole = position_figures(record_of(ref, cand))
    # the same candidate as a top-50 engine reports it: {token: logprob} per position
    as_reported = [[{int(i): float(v) for i, v in enumerate(row)} for row in prompt] for prompt in cand]
    record = record_of(ref, cand)
    record["candidate_logprobs"], record["candidate_top_ids"] = [], []
    for prompt, wanted in zip(as_reported, record["reference_top_ids"], strict=True):
        values, shown = candidate_values(prompt, wanted)
        record["candidate_logprobs"].append(values)
        record["candidate_top_ids"].append(shown)
    reported = position_figures(record)
    for key in ("kl", "top1", "top5"):
        np.testing.assert_allclose(reported[key], whole[key], rtol=1e-12)


def judged(ref, cand, precision="bfloat16", **settings):
    return fidelity_columns({"status": "ok"}, record_of(ref, cand), FidelityConfig(**settings), precision)


def test_an_fp32_instance_that_disagrees_fails_its_fidelity_not_its_speed():
    rng = np.random.default_rng(3)
    ref = log_softmax(rng.normal(0, 2, (4, 8, 40)))
    scrambled = ref[..., rng.permutation(40)]  # a wrong q/k permutation scrambles the logits
    columns = judged(ref, scrambled, precision="F32")
    assert columns["fidelity_status"] == "failed"
    assert "the model's export (a GGUF's q/k permutation) or the prompt path is wrong" in columns["fidelity_reason"]
    assert columns["fidelity_top1"] < 0.5 and columns["fidelity_kl_mean"] > 0.1
    same = judged(ref, ref, precision="F32")
    assert same["fidelity_status"] == "ok" and same["fidelity_top1"] == 1.0 and same["fidelity_kl_mean"] == 0.0
    # a bf16 instance with the same disagreement is a (bad) measurement, not a bug
    assert judged(ref, scrambled)["fidelity_status"] == "ok"


def test_figures_come_with_intervals_that_contain_them():
    rng = np.random.default_rng(4)
    ref = log_softmax(rng.normal(0, 2, (8, 16, 60)))
    columns = judged(ref, log_softmax(ref + rng.normal(0, 0.3, ref.shape)))
    assert columns["fidelity_positions"] == 128 and columns["fidelity_reported_share"] == 1.0
    assert columns["fidelity_kl_mean_low"] < columns["fidelity_kl_mean"] < columns["fidelity_kl_mean_high"]
    assert columns["fidelity_top1_low"] <= columns["fidelity_top1"] <= columns["fidelity_top1_high"] <= 1.0
    assert columns["fidelity_kl_p99"] > columns["fidelity_kl_mean"]
    assert columns["fidelity_estimator"].startswith("KL over the reference's top-5 tokens the engine reported")


def test_a_pass_that_did_not_run_gives_its_reason_and_no_number():
    settings = FidelityConfig()
    unsupported = {"status": "unsupported", "reason": "engine openai reads no next-token distributions"}
    assert fidelity_columns(unsupported, None, settings, None) == {
        "fidelity_status": "unsupported",
        "fidelity_reason": "engine openai reads no next-token distributions",
    }
    assert fidelity_columns(None, None, FidelityConfig(enabled=False), None) == {"fidelity_status": "off"}
    assert fidelity_columns(None, None, settings, None)["fidelity_status"] == "error"


def test_the_interval_of_a_mean_covers_the_true_mean():
    """Groups with a shared offset each (prompts: their positions share a context) and noise within."""
    rng = np.random.default_rng(5)
    trials, covered = 200, 0
    for _ in range(trials):
        groups = [rng.normal(rng.normal(0, 1), 1, 16) + 10 for _ in range(8)]
        estimate, low, high = mean_interval(groups, resamples=1000, seed=int(rng.integers(1 << 30)))
        covered += low <= 10 <= high
    assert 0.90 <= covered / trials <= 0.995  # 95% nominal, within sampling error of 200 trials
    assert mean_interval([[0.0, 1.0, 1.0], [1.0, 1.0]], upper=1.0)[2] <= 1.0
    assert mean_interval([]) is None


def test_a_stale_or_missing_reference_says_how_to_rebuild_it(tmp_path):
    from pipeline.plan.conf import compose_cell

    cfg = compose_cell(["model=tiny-llama", f"models_dir={tmp_path}"])
    path = tmp_path / "reference.json"
    with pytest.raises(FileNotFoundError, match="python -m pipeline.run.fidelity tiny-llama --out"):
        read_reference(path, cfg)
    path.write_text(json.dumps({"model": "tiny-llama", "settings": {"prompts": 3}}))
    with pytest.raises(ValueError, match="delete it and let the workflow rebuild it"):
        read_reference(path, cfg)
    # a reference that could not be built is its error: the pass says so (the cells never waited)
    path.write_text(json.dumps({"model": "tiny-llama", "error": "OSError: no such model"}))
    with pytest.raises(ValueError, match=r"could not be built \(OSError: no such model\); the workflow tries again"):
        read_reference(path, cfg)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"prompts": 0}, "workload.fidelity.prompts must be a whole number >= 1"),
        ({"top_k": 3}, "workload.fidelity.top_k must be >= 5"),
        ({"min_top1": 99}, "workload.fidelity.min_top1 is a share of positions in [0, 1]"),
        ({"prompt": 4}, "unknown workload.fidelity setting(s) ['prompt']"),
        ("yes", "workload.fidelity must be true, false or a mapping"),
    ],
)
def test_bad_fidelity_settings_say_what_is_wrong(value, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        FidelityConfig.parse(value)
    assert FidelityConfig.parse(False).enabled is False and FidelityConfig.parse(None).enabled is False
