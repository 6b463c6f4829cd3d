"""Benchmark for the report step (not a test: it times things; run it by hand).

    python tests/benchmarks/bench_report.py [--repeats 3] [--cells 200] [--requests-per-cell 32]

Renders the report for a synthetic cells.csv (4 engines x 2 models x 5 precisions x 5 batch
sizes = 200 cells, a tenth of them failed, roofline columns included) and a synthetic
requests.csv (128 output tokens per request, so itl_s carries 127 gaps, as a real one
would), and prints the median wall time of write_report (CSV reading included), and of its two
largest parts (reading the CSVs, drawing the plots) timed on their own.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from pipeline.report import render as report  # noqa: E402
from pipeline.report.plots import all_plots  # noqa: E402

ENGINES = ["vllm", "mlc", "llama-cpp", "hf"]
MODELS = ["mistral-7b", "llama2-7b"]
PRECISIONS = ["bf16", "fp16", "fp32", "int8", "int4"]
BATCHES = [1, 2, 4, 8, 16]
OUTPUT_TOKENS = 128


def synthetic_cells(count: int, rng: np.random.Generator) -> pd.DataFrame:
    rows = []
    axes = itertools.islice(itertools.product(ENGINES, MODELS, PRECISIONS, BATCHES), count)
    for index, (engine, model, precision, batch) in enumerate(axes):
        tpot = 0.008 * (1 + 0.1 * ENGINES.index(engine)) * (1 + 0.05 * batch) * rng.uniform(0.9, 1.1)
        tok_s = batch / tpot
        spread = rng.uniform(0.01, 0.12)
        status = "ok" if index % 10 else rng.choice(["error", "unsupported", "timeout"])
        ok = status == "ok"
        repeats = [tok_s * rng.uniform(1 - spread / 2, 1 + spread / 2) for _ in range(3)]
        mbu = rng.uniform(0.3, 1.2)
        rows.append(
            {
                "cell_id": f"{engine}/{model}/{precision}/bs{batch}",
                "engine": engine,
                "model": model,
                "precision": precision,
                "batch_size": batch,
                "status": status,
                "error": None if ok else f"synthetic {status}: <details> | {index}",
                "requests": 32,
                "requests_ok": 32 if ok else 0,
                "requests_failed": 0 if ok else 32,
                **{
                    f"{m}_p{p}": (base * (1 + p / 200) if ok else np.nan)
                    for m, base in (
                        ("ttft_s", 0.05 * batch),
                        ("tpot_s", tpot),
                        ("e2e_s", 0.05 * batch + tpot * OUTPUT_TOKENS),
                    )
                    for p in (50, 90, 99)
                },
                "output_tok_s": tok_s if ok else np.nan,
                "output_tok_s_repeats": json.dumps(repeats if ok else []),
                "output_tok_s_spread": spread if ok else np.nan,
                "ms_per_10_words": 1000 * tpot * 13 if ok else np.nan,
                "engine_version": "1.0",
                "hardware": "synthetic H100",
                "git_sha": "0" * 40,
                "finished_at": "2026-01-01T00:00:00+00:00",
                "repeats": 3,
                "mbu": mbu if ok else np.nan,
                "mbu_measured": mbu * 1.1 if ok else np.nan,
                "achieved_bandwidth_gbs": mbu * 3350 if ok else np.nan,
                "peak_bandwidth_gbs": 3350.0,
                "peak_bandwidth_measured_gbs": 3000.0,
                "roofline_flag": "MBU above 1.0 vs measured peak" if ok and mbu * 1.1 > 1 else None,
            }
        )
    return pd.DataFrame(rows)


def synthetic_requests(cells: pd.DataFrame, per_cell: int, rng: np.random.Generator) -> pd.DataFrame:
    ok = cells[cells.status == "ok"]
    rows = []
    for cell in ok.itertuples():
        for request in range(per_cell):
            gaps = rng.normal(cell.tpot_s_p50, cell.tpot_s_p50 * 0.05, OUTPUT_TOKENS - 1).round(6).tolist()
            rows.append(
                {
                    "cell_id": cell.cell_id,
                    "repeat": request % 3,
                    "request": request,
                    "success": True,
                    "ttft_s": cell.ttft_s_p50 * rng.uniform(0.8, 1.3),
                    "tpot_s": cell.tpot_s_p50,
                    "e2e_s": cell.e2e_s_p50,
                    "output_tokens": OUTPUT_TOKENS,
                    "itl_s": json.dumps(gaps),
                }
            )
    return pd.DataFrame(rows)


def timed(function, *args) -> float:
    started = time.perf_counter()
    function(*args)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cells", type=int, default=200)
    parser.add_argument("--requests-per-cell", type=int, default=32)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cells = synthetic_cells(args.cells, rng)
        requests = synthetic_requests(cells, args.requests_per_cell, rng)
        cells.to_csv(tmp / "cells.csv", index=False)
        requests.to_csv(tmp / "requests.csv", index=False)
        matrix = REPO / "conf/matrix/default.yaml"
        inputs = (tmp / "cells.csv", tmp / "requests.csv")
        print(
            f"input: {len(cells)} cells, {len(requests)} requests "
            f"(requests.csv {(tmp / 'requests.csv').stat().st_size / 1e6:.1f} MB)"
        )
        timings: dict[str, list[float]] = {"end to end (write_report)": [], "read CSVs": [], "plots": []}
        for _ in range(args.repeats):
            timings["end to end (write_report)"].append(timed(report.write_report, *inputs, matrix, tmp / "out"))
            timings["read CSVs"].append(timed(lambda: (report.load_cells(inputs[0]), report.load_requests(inputs[1]))))
            timings["plots"].append(timed(all_plots, cells, requests))
        for stage, seconds in timings.items():
            print(
                f"{stage}: median {statistics.median(seconds):.2f} s over {args.repeats} "
                f"(min {min(seconds):.2f}, max {max(seconds):.2f})"
            )
        size = (tmp / "out/index.html").stat().st_size
        print(f"index.html: {size / 1e6:.2f} MB; report.md: {(tmp / 'out/report.md').stat().st_size / 1e3:.0f} kB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
