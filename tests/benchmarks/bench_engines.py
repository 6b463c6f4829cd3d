"""Every CPU engine at every precision it supports, batch 1 and 8, tiny and small models,
measured in one run so that the ratios compare. Not a test: it times things.

    python tests/benchmarks/bench_engines.py [--workdir DIR]

Runs conf/matrix/engines-cpu.yaml through the real workflow (MLflow off) and prints TPOT
p50, output tokens/s and MBU against the measured peak for each cell, and each engine and
precision relative to hf fp32 on the same model and batch size.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, help="keep the results here (default: a temporary directory)")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-engines-"))
    started = time.perf_counter()
    run = subprocess.run(
        [
            str(Path(sys.executable).parent / "snakemake"),
            "-s",
            str(REPO / "Snakefile"),
            "-d",
            str(workdir),
            "--cores",
            "2",
            "--config",
            "matrix=engines-cpu",
            "tracking=false",
        ],
        capture_output=True,
        text=True,
    )
    if run.returncode != 0:
        sys.exit(run.stderr[-4000:])
    cells = pd.read_csv(workdir / "results/engines-cpu/cells.csv")
    print(f"{len(cells)} cells in {time.perf_counter() - started:.0f}s (workdir {workdir})")
    ok = cells[cells.status == "ok"].copy()
    base = ok[(ok.engine == "hf") & (ok.precision == "fp32")].set_index(["model", "batch_size"])["output_tok_s"]
    ok["vs_hf_fp32"] = [
        row.output_tok_s / base.get((row.model, row.batch_size), float("nan")) for row in ok.itertuples()
    ]
    ok["tpot_ms"] = ok.tpot_s_p50 * 1e3
    ok["spread"] = ok.output_tok_s_spread
    columns = [
        "model",
        "engine",
        "precision",
        "engine_precision",
        "batch_size",
        "tpot_ms",
        "output_tok_s",
        "vs_hf_fp32",
        "mbu_measured",
        "spread",
    ]
    print(
        ok.sort_values(["model", "batch_size", "engine", "precision"])[columns].to_string(
            index=False, float_format=lambda v: f"{v:.3f}"
        )
    )
    skipped = cells[cells.status != "ok"]
    print(f"\nnot measured ({len(skipped)}):")
    for row in skipped.itertuples():
        print(f"  {row.cell_id}: {row.status}: {row.error}")


if __name__ == "__main__":
    main()
