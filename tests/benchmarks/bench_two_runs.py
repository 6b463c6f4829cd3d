"""Two runs, one story: a matrix run twice in fresh working directories, its rankings compared
(a benchmark, not a test: it takes minutes and its outcome depends on the host's noise).

    python tests/benchmarks/bench_two_runs.py [--matrix default] [--cores 2] [--keep DIR]

Each run is a fresh `snakemake` (models materialized, no results, MLflow off) in its own
directory. A comparison is a pair of configurations of one model at one batch size, on TPOT
p50 or output tok/s; it is *ranked* when the 95% intervals separate (pipeline.report.ranking).
Printed: how many comparisons each run ranked, the rankings the two runs contradict, the
share of the comparisons whose medians differ by more than 20% (in both runs) that both runs
ranked, each run's wall time, and the largest MBU against the bandwidth measured beside each
cell (1.0 or more would be an accounting error).
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
sys.path.insert(0, str(REPO))

from pipeline.report.ranking import comparisons  # noqa: E402
from pipeline.report.verdict import flagged_cells  # noqa: E402

SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
TARGETS = {"contradictions": 0, "ranked_share_of_clear_gaps": 0.5, "wall_s": 300.0, "mbu_measured_max": 1.0}
CLEAR_GAP = 0.20


def run_matrix(workdir: Path, matrix: str, cores: int) -> tuple[float, pd.DataFrame]:
    started = time.perf_counter()
    command = [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--cores", str(cores)]
    command += ["--config", f"matrix={matrix}", "tracking=false"]
    run = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if run.returncode != 0:
        sys.exit(f"snakemake failed in {workdir}:\n{run.stderr[-3000:]}")
    name = Path(matrix).stem
    return wall, pd.read_csv(workdir / "results" / name / "cells.csv")


def compare(first: pd.DataFrame, second: pd.DataFrame) -> dict:
    a = {c.key: c for c in comparisons(first)}
    b = {c.key: c for c in comparisons(second)}
    common = sorted(set(a) & set(b))
    contradictions = [k for k in common if a[k].order and b[k].order and a[k].order != b[k].order]
    clear = [k for k in common if a[k].gap > CLEAR_GAP and b[k].gap > CLEAR_GAP]
    clear_ranked = [k for k in clear if a[k].order and b[k].order]
    return {
        "comparisons": len(common),
        "ranked_first": sum(bool(a[k].order) for k in common),
        "ranked_second": sum(bool(b[k].order) for k in common),
        "ranked_both_same_order": sum(bool(a[k].order) and a[k].order == b[k].order for k in common),
        "contradictions": [(k, a[k].order, b[k].order) for k in contradictions],
        "clear_gaps": len(clear),
        "clear_gaps_ranked_in_both": len(clear_ranked),
        "unranked_clear_gaps": [(k, round(a[k].gap, 3), round(b[k].gap, 3)) for k in clear if k not in clear_ranked],
    }


def mbu_max(cells: pd.DataFrame, in_cache: bool = False) -> tuple[float | None, int]:
    """The largest MBU against the bandwidth measured beside the cell, over the cells whose bytes
    per step do not fit in the CPU's last-level cache (in_cache: over those that do, which may
    read faster than memory), and how many cells were flagged."""
    ok = cells[cells.status == "ok"]
    flagged = len(flagged_cells(ok))
    fits = ok["fits_in_cache"].astype(str).str.lower() == "true" if "fits_in_cache" in ok else False
    values = ok[fits == in_cache].get("mbu_measured", pd.Series(dtype=float)).dropna()
    return (float(values.max()) if len(values) else None), flagged


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--matrix", default="default")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--keep", type=Path, help="run in DIR/run1 and DIR/run2 and keep them (default: a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="two-runs-") as tmp:
        base = args.keep or Path(tmp)
        runs = []
        for index in (1, 2):
            workdir = base / f"run{index}"
            workdir.mkdir(parents=True, exist_ok=True)
            wall, cells = run_matrix(workdir, args.matrix, args.cores)
            runs.append((wall, cells))
            ok = cells[cells.status == "ok"]
            stops = ok["repeats_stop"].value_counts().to_dict() if "repeats_stop" in ok else {}
            high, flagged = mbu_max(cells)
            cached = mbu_max(cells, in_cache=True)[0]
            print(
                f"run {index}: {wall:.0f} s, {len(ok)} cells ok, repeats kept {ok['repeats_kept'].tolist()} "
                f"(stops {stops}), max MBU vs the measured peak {high if high is None else round(high, 3)} "
                f"(cells that fit in the last-level cache: {cached if cached is None else round(cached, 3)}), "
                f"{flagged} flagged"
            )
        result = compare(runs[0][1], runs[1][1])
    print(f"comparisons: {result['comparisons']}")
    print(
        f"ranked: run 1 {result['ranked_first']}, run 2 {result['ranked_second']}, "
        f"both in the same order {result['ranked_both_same_order']}"
    )
    print(f"contradictions: {len(result['contradictions'])} {result['contradictions']}")
    share = result["clear_gaps_ranked_in_both"] / result["clear_gaps"] if result["clear_gaps"] else None
    print(
        f"medians > {CLEAR_GAP:.0%} apart in both runs: {result['clear_gaps']}, ranked in both: "
        f"{result['clear_gaps_ranked_in_both']} ({'n/a' if share is None else f'{share:.0%}'})"
    )
    for key, gap_1, gap_2 in result["unranked_clear_gaps"]:
        print(f"  not ranked in both: {key} (gaps {gap_1:.1%}, {gap_2:.1%})")
    checks = {
        "no contradictions": len(result["contradictions"]) == TARGETS["contradictions"],
        "half of the clear gaps ranked in both": share is None or share >= TARGETS["ranked_share_of_clear_gaps"],
        "no MBU above 1.0 against the measured peak (cells beyond the cache)": all(
            (mbu_max(cells)[0] or 0) <= TARGETS["mbu_measured_max"] for _, cells in runs
        ),
    }
    if args.matrix == "default":  # the time target is the default matrix's (README: Quick start)
        checks[f"each run under {TARGETS['wall_s']:.0f} s"] = all(wall < TARGETS["wall_s"] for wall, _ in runs)
    for name, passed in checks.items():
        print(f"{'PASS' if passed else 'FAIL'}: {name}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
