"""Fidelity figures of one engine instance from its fidelity pass (pipeline.run.fidelity).

Per position (one teacher-forced next-token distribution), with p the hf fp32 reference and
q the candidate, over S = the reference's top_k tokens that the candidate reported:

- KL(p || q) estimated over S plus one lumped "rest" bucket (every other token):
  sum_S p_i log(p_i / q_i) + p_rest log(p_rest / q_rest), p_rest = 1 - sum_S p_i, likewise q.
  Merging tokens into one bucket never raises a KL, so this is a lower bound of the exact KL,
  close to it when S holds nearly all of p's mass; the same estimator for every engine, whether
  it gives whole distributions or only its own top-k (then S loses the reference tokens it did
  not report, and `fidelity_reported_share` says how many).
- top-1 agreement: the candidate's most likely token is the reference's.
- top-5 overlap: the share of the reference's top 5 in the candidate's top 5.
- the candidate's log-probability of the reference's top token minus the reference's own.

Means come with 95% intervals from a two-level bootstrap (prompts, then positions within them:
positions of one prompt share its context and are not independent).
"""

from __future__ import annotations

import numpy as np

from pipeline.stats import bootstrap_interval, mean_interval

OK, UNSUPPORTED, ERROR, FAILED, OFF = "ok", "unsupported", "error", "failed", "off"
ESTIMATOR = "KL over the reference's top-{k} tokens the engine reported plus one rest bucket"
FLOAT32 = {"float32", "F32", "fp32"}  # what an fp32 instance is asked for, engine by engine
TINY = 1e-300  # a lumped bucket with no mass left on one side (rounding): logs stay finite


def position_kl(ref_logprobs: np.ndarray, cand_logprobs: np.ndarray) -> np.ndarray:
    """KL(ref || cand) per position over the reported tokens plus the rest, in nats.

    Both arrays are (..., k) natural-log probabilities of the same tokens; NaN in cand marks a
    token the candidate did not report, which then counts in the rest bucket on both sides."""
    known = ~np.isnan(cand_logprobs)
    p = np.where(known, np.exp(ref_logprobs), 0.0)
    q = np.where(known, np.exp(np.where(known, cand_logprobs, 0.0)), 0.0)
    terms = np.where(known, p * (ref_logprobs - np.where(known, cand_logprobs, 0.0)), 0.0).sum(axis=-1)
    p_rest = np.clip(1.0 - p.sum(axis=-1), 0.0, 1.0)
    q_rest = np.clip(1.0 - q.sum(axis=-1), TINY, 1.0)
    rest = np.where(p_rest > 0, p_rest * (np.log(np.maximum(p_rest, TINY)) - np.log(q_rest)), 0.0)
    return np.maximum(terms + rest, 0.0)  # a merged KL is >= 0; below it only by rounding


def position_figures(record: dict) -> dict[str, np.ndarray]:
    """(prompts x positions) arrays of each per-position figure."""
    ref_ids = np.asarray(record["reference_top_ids"])
    ref_lp = np.asarray(record["reference_top_logprobs"], dtype=np.float64)
    cand_lp = np.array(
        [[[np.nan if v is None else v for v in row] for row in prompt] for prompt in record["candidate_logprobs"]],
        dtype=np.float64,
    )
    cand_top = np.asarray(record["candidate_top_ids"])
    shown = cand_top.shape[-1]
    overlap = (ref_ids[..., :shown, None] == cand_top[..., None, :]).any(axis=-1).mean(axis=-1)
    return {
        "kl": position_kl(ref_lp, cand_lp),
        "top1": (cand_top[..., 0] == ref_ids[..., 0]).astype(float),
        "top5": overlap,
        "ref_logprob_delta": cand_lp[..., 0] - ref_lp[..., 0],
        "reported": (~np.isnan(cand_lp)).mean(axis=-1),
    }


def _groups(values: np.ndarray) -> list[np.ndarray]:
    return [row[~np.isnan(row)] for row in values]


def fidelity_columns(entry: dict | None, record: dict | None, settings, engine_precision: str | None) -> dict:
    """cells.csv's fidelity columns for one instance: `entry` is the cell's summary note of the
    pass (status, reason, seconds), `record` the pass itself (fidelity.json) when it ran."""
    if not settings.enabled:
        return {"fidelity_status": OFF}
    if entry is None:
        return {"fidelity_status": ERROR, "fidelity_reason": "no fidelity pass recorded for this instance"}
    if entry.get("status") != OK or record is None:
        return {"fidelity_status": entry.get("status", ERROR), "fidelity_reason": entry.get("reason", "")}
    figures = position_figures(record)
    kl, top1 = figures["kl"], figures["top1"]
    kl_mean = mean_interval(_groups(kl))
    top1_mean = mean_interval(_groups(top1), upper=1.0)
    kl_p99 = bootstrap_interval(_groups(kl), percentile=99)
    k = np.asarray(record["reference_top_ids"]).shape[-1]
    columns = {
        "fidelity_status": OK,
        "fidelity_reason": "",
        "fidelity_source": record["source"],
        "fidelity_estimator": ESTIMATOR.format(k=k),
        "fidelity_positions": int(kl.size),
        "fidelity_kl_mean": kl_mean[0],
        "fidelity_kl_mean_low": kl_mean[1],
        "fidelity_kl_mean_high": kl_mean[2],
        "fidelity_kl_p99": kl_p99[0],
        "fidelity_top1": top1_mean[0],
        "fidelity_top1_low": top1_mean[1],
        "fidelity_top1_high": top1_mean[2],
        "fidelity_top5_overlap": float(figures["top5"].mean()),
        "fidelity_ref_logprob_delta": float(np.nanmean(figures["ref_logprob_delta"]))
        if not np.isnan(figures["ref_logprob_delta"]).all()
        else None,
        "fidelity_reported_share": float(figures["reported"].mean()),
        "fidelity_s": record.get("pass_s"),
    }
    if engine_precision in FLOAT32 and columns["fidelity_top1"] < settings.fp32_min_top1:
        # the same weights at the same precision: anything but near-total agreement is a bug
        columns["fidelity_status"] = FAILED
        columns["fidelity_reason"] = (
            f"fp32 through {record['source']} agrees with hf fp32 on only {columns['fidelity_top1']:.1%} of "
            f"top-1 tokens (workload.fidelity.fp32_min_top1 = {settings.fp32_min_top1:.1%}): the model's "
            "export (a GGUF's q/k permutation) or the prompt path is wrong; its speed cells stand"
        )
    return columns
