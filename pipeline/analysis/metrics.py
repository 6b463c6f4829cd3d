"""Per-request records -> per-cell figures: the glossary (README, What the numbers mean), in one place.

ttft_s   request sent -> first chunk carrying output tokens
e2e_s    request sent -> last token received
tpot_s   (e2e_s - ttft_s) / (output_tokens - 1)
itl_s    every gap between consecutive chunks (pooled over requests)
ms_per_10_words  10000 * sum(e2e_s) / sum(words)   (the notebook's metric; never the headline)
output_tok_s     all output tokens / measured window
slo_attainment   share of the measured requests meeting every target of workload.slo (a failed
                 request meets none)
goodput_req_s, goodput_tok_s   requests/s and output tokens/s of those requests, over the same
                 window as output_tok_s (DistServe's goodput; vLLM's --goodput)
slo_met          for each target, at least `percentile`% of the measured requests within it
                 (its percentile, by rank, within the target; a failed request is never within)
*_low, *_high    the 95% interval of TPOT p50, TTFT p50 and output tok/s (pipeline.stats)
"""

from __future__ import annotations

import json
import math
import statistics

import numpy as np

from pipeline.results.schema import PERCENTILES
from pipeline.stats import by_repeat, headline_intervals, measured_window, total_window, trend


def _stats(name: str, values: list[float]) -> dict[str, float | None]:
    out: dict[str, float | None] = {f"{name}_mean": None, **{f"{name}_p{p}": None for p in PERCENTILES}}
    if values:
        array = np.asarray(values, dtype=float)
        out[f"{name}_mean"] = float(array.mean())
        for p in PERCENTILES:
            out[f"{name}_p{p}"] = float(np.percentile(array, p))
    return out


def summarize(records: list[dict]) -> dict[str, float | int | None]:
    """Per-cell figures from the measured requests (records carry a `repeat` column); records
    of a discarded repeat (pipeline.run.measure) are left out."""
    records = [r for r in records if not r.get("discarded")]
    ok = [r for r in records if r["success"]]
    figures: dict[str, float | int | None] = {
        "requests": len(records),
        "requests_ok": len(ok),
        "requests_failed": len(records) - len(ok),
    }
    for name in ("ttft_s", "tpot_s", "e2e_s"):
        figures.update(_stats(name, [r[name] for r in ok if r[name] is not None]))
    figures.update(_stats("itl_s", [gap for r in ok for gap in json.loads(r["itl_s"])]))

    tokens = [r["output_tokens"] for r in ok]
    figures["output_tokens"] = statistics.fmean(tokens) if tokens else None
    figures["output_tokens_total"] = sum(tokens)
    retok = [r["output_tokens_retok"] for r in ok if r["output_tokens_retok"] is not None]
    figures["output_tokens_retok"] = statistics.fmean(retok) if retok else None
    figures["tokens_per_chunk"] = statistics.fmean(r["tokens_per_chunk"] for r in ok) if ok else None

    # Throughput and TPOT per repeat (each repeat's own window), then over all repeats.
    groups = by_repeat(records)
    per_repeat, tpot_per_repeat = [], []
    window_total = total_window(records)
    for rows in groups.values():
        window = measured_window(rows)
        if window:
            per_repeat.append(sum(r["output_tokens"] for r in rows) / window)
        tpots = [r["tpot_s"] for r in rows if r["tpot_s"] is not None]
        if tpots:
            tpot_per_repeat.append(float(np.median(tpots)))
    figures["output_tok_s"] = sum(tokens) / window_total if window_total else None
    figures["req_s"] = len(ok) / window_total if window_total else None
    figures["output_tok_s_repeats"] = json.dumps(per_repeat)
    figures["tpot_s_p50_repeats"] = json.dumps(tpot_per_repeat)
    figures["output_tok_s_spread"] = spread(per_repeat)
    figures["tpot_s_p50_spread"] = spread(tpot_per_repeat)
    drift = trend(tpot_per_repeat)  # repeats are numbered in time order, across engine starts
    figures["tpot_s_p50_trend"], figures["tpot_s_p50_trend_p"] = drift if drift else (None, None)
    for name, interval in headline_intervals(records).items():
        low, high = (None, None) if interval is None else interval[1:]
        figures[f"{name}_low"] = None if low is None or math.isnan(low) else low
        figures[f"{name}_high"] = None if high is None or math.isnan(high) else high
    words = sum(r["words"] for r in ok)
    figures["ms_per_10_words"] = 10_000 * sum(r["e2e_s"] for r in ok) / words if words else None
    return figures


def spread(values: list[float]) -> float | None:
    """(max - min) / median over repeats; None with fewer than two."""
    return (max(values) - min(values)) / statistics.median(values) if len(values) > 1 else None


def as_number(value) -> float | None:
    """A float, or None for anything missing (None, NaN, empty, text): a cells.csv value read back."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number
