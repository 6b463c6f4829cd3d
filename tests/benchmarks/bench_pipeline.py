"""Benchmarks for the pipeline itself (not tests: they time things; run them by hand).

    python tests/benchmarks/bench_pipeline.py [--skip-run] [--repeats 3]

1. The default matrix end to end in a fresh working directory (models materialized too):
   wall time, engine starts vs engine instances, and where the time went (engine load,
   warmup, measured generation, everything else = harness overhead), per cell and in total.
2. `snakemake -n` on generated 1000-cell matrices: planning time (median of --repeats),
   once with few engine instances (many batch sizes) and once with 250 instances.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[2]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
TARGETS = {"default_matrix_wall_s": 300.0, "dry_run_1000_cells_s": 5.0}


def snakemake(workdir: Path, *args: str, env: dict | None = None) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    run = subprocess.run(
        [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(workdir), *args], capture_output=True, text=True, env=env
    )
    elapsed = time.perf_counter() - started
    if run.returncode != 0:
        sys.exit(f"snakemake failed:\n{run.stderr[-3000:]}")
    return elapsed, run


def bench_default_matrix(workdir: Path) -> None:
    """Run the default matrix (MLflow to a store in the workdir), then print where the time went."""
    wall, _ = snakemake(workdir, "--cores", "2")
    cells = pd.read_csv(workdir / "results/default/cells.csv")
    instances = [json.loads(p.read_text()) for p in (workdir / "results/default").rglob("instance.json")]
    materialize_s = sum(
        float(line.split(" in ")[-1].rstrip("s\n"))
        for log in (workdir / "models/logs").glob("*.log")
        for line in log.read_text().splitlines()
        if line.startswith("[models]")
    )
    ok = cells[cells.status == "ok"]
    loads = sum(
        i["engine_starts"]
        and cells[(cells.engine == i["engine"]) & (cells.model == i["model"]) & (cells.precision == i["precision"])]
        .load_s.dropna()
        .iloc[0]
        for i in instances
        if i["engine_starts"]
    )
    warmup, measure = ok.warmup_s.sum(), ok.measure_s.sum()
    overhead = wall - materialize_s - loads - warmup - measure
    print("\n== default matrix, end to end (fresh working directory, 2 cores)")
    print(f"cells: {len(cells)} ({', '.join(f'{n} {s}' for s, n in cells.status.value_counts().items())})")
    runnable = sum(1 for i in instances if i["engine_starts"] or any(c["status"] != "unsupported" for c in i["cells"]))
    print(
        f"engine instances with supported cells: {runnable}; engine starts: "
        f"{sum(i['engine_starts'] for i in instances)}"
    )
    print(
        f"wall {wall:.1f}s = materialize models {materialize_s:.1f}s + engine load {loads:.1f}s "
        f"+ warmup {warmup:.1f}s + measured generation {measure:.1f}s + everything else {overhead:.1f}s "
        f"({100 * overhead / wall:.1f}% of the wall time: process starts, imports, writing, collect, report, MLflow)"
    )
    print(
        f"target: wall < {TARGETS['default_matrix_wall_s']:.0f}s -> "
        f"{'met' if wall < TARGETS['default_matrix_wall_s'] else 'MISSED'}"
    )
    print(
        "\nper cell (overhead_s: time in the cell's process outside load, warmup and measurement,"
        " including its share of process start-up):"
    )
    print(
        ok[["cell_id", "load_s", "warmup_s", "measure_s", "overhead_s", "tpot_s_p50", "output_tok_s"]].to_string(
            index=False, float_format=lambda v: f"{v:.4f}"
        )
    )
    print_roofline(ok)


def print_roofline(ok: pd.DataFrame) -> None:
    print("\nroofline (MBU against the bandwidth measured on this machine; bytes per step from the architecture):")
    columns = [
        "cell_id",
        "bytes_per_step",
        "tpot_floor_measured_s",
        "tpot_s_p50",
        "achieved_bandwidth_gbs",
        "peak_bandwidth_measured_gbs",
        "mbu_measured",
        "bound",
    ]
    print(ok[columns].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    batch1 = ok[ok.batch_size == 1].set_index(["model", "precision"])["mbu_measured"]
    for precision in sorted({p for _, p in batch1.index}):
        small, tiny = batch1.get(("small-llama", precision)), batch1.get(("tiny-llama", precision))
        if small is not None and tiny is not None:
            print(
                f"batch 1 {precision}: small-llama MBU {small:.1%} vs tiny-llama {tiny:.1%} "
                f"({small / tiny:.1f}x: the tiny model is overhead bound)"
            )


def _big_conf(tmp: Path, models: int) -> Path:
    conf = tmp / "conf"
    shutil.copytree(REPO / "conf", conf)
    source = (conf / "model/tiny-llama.yaml").read_text()
    for i in range(models):
        (conf / f"model/m{i:02d}.yaml").write_text(source)  # a model is named by its file
    return conf


# Two 1000-cell matrices, as (models, precisions, batch sizes): few big instances, many small ones.
PLANNING_SHAPES = {
    "20 instances x 50 batch sizes": (
        "[tiny-llama, small-llama, mistral-7b, llama2-7b]",
        "[fp32, bf16, fp16, int8, int4]",
        list(range(1, 51)),
    ),
    "250 instances x 4 batch sizes": (
        "[" + ", ".join(f"m{i:02d}" for i in range(50)) + "]",
        "[fp32, bf16, fp16, int8, int4]",
        [1, 2, 4, 8],
    ),
}


def bench_dry_run(tmp: Path, repeats: int) -> None:
    print("\n== snakemake -n on generated 1000-cell matrices (planning only)")
    conf = _big_conf(tmp, 50)
    shapes = PLANNING_SHAPES
    env = {**__import__("os").environ, "LLM_BENCH_CONF": str(conf)}
    for label, (models, precisions, sizes) in shapes.items():
        matrix = tmp / "big.yaml"
        matrix.write_text(f"engine: [hf]\nmodel: {models}\nprecision: {precisions}\nbatch_size: {sizes}\n")
        workdir = tmp / "dry"
        times = []
        for _ in range(repeats):
            elapsed, run = snakemake(workdir, "-n", "--config", f"matrix={matrix}", env=env)
            times.append(elapsed)
        line = next(line for line in run.stderr.splitlines() if line.startswith("matrix big"))
        median = statistics.median(times)
        print(f"{label}: median {median:.2f}s over {repeats} runs ({', '.join(f'{t:.2f}' for t in times)}); {line}")
        print(
            f"  target < {TARGETS['dry_run_1000_cells_s']:.0f}s -> "
            f"{'met' if median < TARGETS['dry_run_1000_cells_s'] else 'MISSED'}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-run", action="store_true", help="only the dry-run planning benchmark")
    parser.add_argument("--roofline-of", type=Path, help="only print the roofline table of this cells.csv")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.roofline_of:
        cells = pd.read_csv(args.roofline_of)
        print_roofline(cells[cells.status == "ok"])
        return
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        bench_dry_run(Path(tmp), args.repeats)
        if not args.skip_run:
            bench_default_matrix(Path(tmp) / "default")


if __name__ == "__main__":
    main()
