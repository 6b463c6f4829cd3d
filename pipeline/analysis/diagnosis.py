"""What bounds each cell: overhead, bandwidth or compute, with the evidence that chose it.

The notebook's first principles: a decode step's time goes to moving bytes, to computing, or
to overhead (Python, framework dispatch, kernel launches) that does not grow with the
problem. From the measurements of cells.csv:

- floor: bytes per step / peak bandwidth (the measured peak where there is one);
  overhead_per_step_s = TPOT - floor; MBU = floor / TPOT.
- decode_mfu: the step's FLOPs (batch x FLOPs per token) / TPOT / peak FLOP/s.
- batch_scaling: TPOT at the instance's next batch size / TPOT at this one ("double the
  batch; if time rises only ~10%, you are not compute bound").
- fixed_step_s, effective_bandwidth_gbs: where one engine at one precision ran two or more
  models of different sizes at batch 1, TPOT = fixed + bytes / effective bandwidth, fitted
  (least squares). The fixed part is overhead; a low effective bandwidth with little fixed
  cost is a slow kernel, not overhead.

The label, first rule that holds:
  compute    decode_mfu >= COMPUTE_MFU, or TPOT grows by >= COMPUTE_SCALING of the batch ratio
  bandwidth  MBU >= BANDWIDTH_MBU
  overhead   the fitted fixed cost >= OVERHEAD_SHARE of TPOT; or, with no fit, MBU < BANDWIDTH_MBU
  bandwidth  otherwise: time follows bytes, at an effective bandwidth below the peak (slow kernels)
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from pipeline.analysis.metrics import as_number

COMPUTE_MFU = 0.5
COMPUTE_SCALING = 0.7
BANDWIDTH_MBU = 0.5
OVERHEAD_SHARE = 0.5

COLUMNS = ("bound", "bound_evidence", "overhead_per_step_s", "decode_mfu", "batch_scaling")
FIT_COLUMNS = ("fixed_step_s", "effective_bandwidth_gbs")


def _number(value) -> float | None:
    number = as_number(value)
    return number if number is not None and math.isfinite(number) else None


def _first(row, *keys) -> float | None:
    for key in keys:
        value = _number(row.get(key))
        if value is not None:
            return value
    return None


def fit_fixed_and_bandwidth(tpots: list[float], bytes_per_step: list[float]) -> tuple[float, float] | None:
    """(fixed seconds per step, effective bytes/s) from TPOT = fixed + bytes / bandwidth;
    None unless the sizes differ enough (2x) to tell the two apart and the fit is physical."""
    if len(tpots) < 2 or max(bytes_per_step) < 2 * min(bytes_per_step):
        return None
    slope, fixed = np.polyfit(np.asarray(bytes_per_step, float), np.asarray(tpots, float), 1)
    if slope <= 0:
        return None
    return max(float(fixed), 0.0), 1.0 / float(slope)


def label(
    tpot: float,
    floor: float | None,
    decode_mfu: float | None,
    batch_scaling: float | None,
    batch_ratio: float | None,
    fixed_step: float | None,
    effective_bandwidth: float | None,
) -> tuple[str | None, str]:
    """(label, evidence) for one cell; (None, why) when the measurements cannot say."""
    if floor is None:
        return None, "no bandwidth floor (no peak bandwidth, or no bytes count)"
    mbu = floor / tpot
    if decode_mfu is not None and decode_mfu >= COMPUTE_MFU:
        return "compute", f"decode reaches {decode_mfu:.0%} of the peak FLOP/s (>= {COMPUTE_MFU:.0%})"
    if batch_scaling is not None and batch_ratio and batch_scaling - 1 >= COMPUTE_SCALING * (batch_ratio - 1):
        return "compute", (
            f"TPOT grows x{batch_scaling:.2f} for x{batch_ratio:g} the batch (>= {COMPUTE_SCALING:.0%} of proportional)"
        )
    scaling = f"; x{batch_ratio:g} the batch costs x{batch_scaling:.2f} TPOT" if batch_scaling is not None else ""
    if mbu >= BANDWIDTH_MBU:
        return "bandwidth", f"MBU {mbu:.0%} (>= {BANDWIDTH_MBU:.0%}): the step moves bytes near the peak{scaling}"
    overhead = tpot - floor
    if fixed_step is not None:
        share = fixed_step / tpot
        fit = (
            f"fitted across model sizes at batch 1: {fixed_step * 1e3:.3g} ms fixed per step"
            f" + bytes at {effective_bandwidth / 1e9:.3g} GB/s"
        )
        if share >= OVERHEAD_SHARE:
            return "overhead", f"MBU {mbu:.0%}; {fit}: the fixed part is {share:.0%} of TPOT{scaling}"
        return "bandwidth", (
            f"MBU {mbu:.0%}; {fit}: time follows bytes, but the kernels reach a fraction of the peak "
            f"(slow kernels, not overhead){scaling}"
        )
    return "overhead", (
        f"MBU {mbu:.0%} (< {BANDWIDTH_MBU:.0%}): {overhead * 1e3:.3g} ms per step beyond the floor{scaling}; "
        "one model size only, so a fixed cost and slow kernels cannot be told apart"
    )


def _fits(ok: pd.DataFrame) -> dict[tuple[str, str], tuple[float, float]]:
    """(engine, precision) -> (fixed s, effective B/s), from batch-1 cells of different models."""
    fits = {}
    single = ok[ok["batch_size"] == 1]
    for key, group in single.groupby(["engine", "precision"]):
        found = fit_fixed_and_bandwidth(group["tpot_s_p50"].tolist(), group["bytes_per_step"].tolist())
        if found is not None:
            fits[key] = found
    return fits


def diagnose(cells: pd.DataFrame) -> pd.DataFrame:
    """The diagnosis columns of every cell (empty where a cell was not measured)."""
    out = pd.DataFrame(index=cells.index, columns=[*COLUMNS, *FIT_COLUMNS], dtype=object)
    needed = {"status", "tpot_s_p50", "bytes_per_step", "engine", "model", "precision", "batch_size"}
    if not needed <= set(cells.columns):
        return out
    ok = cells[(cells["status"] == "ok") & cells["tpot_s_p50"].notna() & cells["bytes_per_step"].notna()]
    fits = _fits(ok.astype({"tpot_s_p50": float, "bytes_per_step": float}))
    for index, row in ok.iterrows():
        tpot = float(row["tpot_s_p50"])
        floor = _first(row, "tpot_floor_measured_s", "tpot_floor_s")
        peak_tflops = _first(row, "peak_tflops_measured", "peak_tflops")
        peak_flops = peak_tflops * 1e12 if peak_tflops else None
        flops = _number(row.get("flops_per_token"))
        decode_mfu = row["batch_size"] * flops / tpot / peak_flops if flops and peak_flops else None
        same = ok[
            (ok["engine"] == row["engine"]) & (ok["model"] == row["model"]) & (ok["precision"] == row["precision"])
        ]
        larger = same[same["batch_size"] > row["batch_size"]].sort_values("batch_size")
        scaling = ratio = None
        if len(larger):
            following = larger.iloc[0]
            scaling, ratio = float(following["tpot_s_p50"]) / tpot, following["batch_size"] / row["batch_size"]
        fixed, bandwidth = fits.get((row["engine"], row["precision"]), (None, None))
        bound, evidence = label(tpot, floor, decode_mfu, scaling, ratio, fixed, bandwidth)
        if str(row.get("fits_in_cache")).lower() == "true":
            evidence += (
                "; its bytes per step fit in the CPU's last-level cache, which may serve them faster than memory"
            )
        out.loc[index, list(COLUMNS)] = [
            bound,
            evidence,
            tpot - floor if floor is not None else None,
            decode_mfu,
            scaling,
        ]
        if fixed is not None:
            out.loc[index, list(FIT_COLUMNS)] = [fixed, bandwidth / 1e9]
    return out
