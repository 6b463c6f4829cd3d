"""Benchmarks for running the workflow through SLURM (not tests: they time things; run by hand).

    python tests/benchmarks/bench_slurm.py [--repeats 3] [--skip-cluster]

1. Planning: `snakemake -n --profile profiles/slurm` (the slurm executor, gpus=1) on
   generated 1000-cell matrices, median of --repeats, beside the same dry run locally.
2. Scheduling overhead on a local one-node SLURM (.ci/local_slurm.py; needs Debian's
   slurm-wlm and MariaDB: `make setup-slurm`): a small matrix through the slurm executor,
   then, per SLURM job from sacct, submission -> start (apart: a job submitted while every
   CPU of the node was taken waited for another job to end: queueing, not overhead); and
   from each instance's own record, SLURM start -> the benchmark process running
   (Snakemake's start inside the job, srun included).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_pipeline import PLANNING_SHAPES, _big_conf  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
CLUSTER_SCRIPT = [sys.executable, str(REPO / ".ci/local_slurm.py")]
SMALL_MATRIX = """
engine: [hf]
model: [tiny-llama, small-llama]
precision: [fp32, bf16, fp16]
batch_size: [1]
overrides:
  workload.input_tokens: 8
  workload.output_tokens: 4
  workload.num_requests: 2
  workload.repeats: 1
  workload.warmup_requests: 1
"""


def snakemake(workdir: Path, *args: str, env: dict | None = None, timeout: float = 900) -> tuple[float, str]:
    started = time.perf_counter()
    run = subprocess.run(
        ["timeout", "-k", "10", str(int(timeout)), SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(workdir), *args],
        capture_output=True,
        text=True,
        env=env,
    )
    elapsed = time.perf_counter() - started
    if run.returncode != 0:
        sys.exit(f"snakemake failed ({run.returncode}):\n{run.stderr[-3000:]}")
    return elapsed, run.stdout + run.stderr


def bench_planning(tmp: Path, repeats: int) -> None:
    print("\n== snakemake -n on generated 1000-cell matrices: slurm executor vs local (planning only)")
    conf = _big_conf(tmp, 50)
    shapes = PLANNING_SHAPES
    env = {**os.environ, "LLM_BENCH_CONF": str(conf), "LLM_BENCH_SLURM_PARTITION": "gpu"}
    for label, (models, precisions, sizes) in shapes.items():
        matrix = tmp / "big.yaml"
        matrix.write_text(f"engine: [hf]\nmodel: {models}\nprecision: {precisions}\nbatch_size: {sizes}\n")
        config = ["--config", f"matrix={matrix}", "gpus=1"]
        for mode, args in (
            ("slurm", ["--profile", str(REPO / "profiles/slurm"), *config]),
            ("local", ["--cores", "2", *config]),
        ):
            times = []
            for _ in range(repeats):
                elapsed, out = snakemake(tmp / f"dry-{mode}", "-n", *args, env=env)
                times.append(elapsed)
            jobs = sum(1 for line in out.splitlines() if line.startswith(("rule measure_", "localrule measure_")))
            print(
                f"{label}, {mode:5}: median {statistics.median(times):.2f}s over {repeats} "
                f"({', '.join(f'{t:.2f}' for t in times)}); {jobs} engine instance jobs planned"
            )


SACCT_FIELDS = ["JobID", "Comment", "State", "Submit", "Start", "End"]
CPUS = 2  # the local node's CPUs (this machine's); each job asks one


def bench_scheduling(tmp: Path) -> None:
    print("\n== scheduling overhead on the local one-node SLURM (from sacct)")
    root = tmp / "slurm"
    command = [*CLUSTER_SCRIPT, "start", str(root), "--gpus", "2", "--cpus", str(CPUS)]
    started = subprocess.run(command, capture_output=True, text=True)
    if started.returncode != 0:
        sys.exit(f"could not start the local SLURM:\n{started.stderr}")
    env = {**os.environ, "SLURM_CONF": str(root / "slurm.conf"), "PATH": f"{root}/bin:{os.environ['PATH']}"}
    try:
        workdir = tmp / "run"
        workdir.mkdir()
        matrix = workdir / "m.yaml"
        matrix.write_text(SMALL_MATRIX)
        wall, _ = snakemake(
            workdir,
            "--profile",
            str(REPO / "profiles/slurm"),
            "--slurm-init-seconds-before-status-checks",
            "2",
            "--config",
            f"matrix={matrix}",
            "gpus=1",
            "cpus=1",
            "tracking=false",
            env=env,
        )
        out = subprocess.run(
            ["sacct", "-a", "-X", "-P", "-n", "-o", ",".join(SACCT_FIELDS)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        subprocess.run([*CLUSTER_SCRIPT, "stop", str(root)], capture_output=True)
    jobs = [dict(zip(SACCT_FIELDS, row, strict=True)) for row in csv.reader(io.StringIO(out), delimiter="|")]
    for job in jobs:
        job.update({k.lower(): datetime.fromisoformat(job[k]) for k in ("Submit", "Start", "End")})
    print(f"{len(jobs)} SLURM jobs, whole workflow {wall:.1f}s (node: {CPUS} CPUs, 1 per job; 2 fake GPUs)")
    print(f"{'job (rule)':44} {'state':10} {'submit->start':>13} {'CPU free':>8} {'start->bench':>12} {'run':>5}")
    free, queued, startups = [], [], []
    for job in jobs:
        rule = job["Comment"].removeprefix("rule_")
        wait = (job["start"] - job["submit"]).total_seconds()
        # a job submitted while every CPU was taken waited for another to end: queueing, not overhead
        busy = sum(1 for other in jobs if other is not job and other["start"] <= job["submit"] < other["end"])
        (free if busy < CPUS else queued).append(wait)
        startup = ""
        if rule.startswith("measure_"):
            model, precision = rule.removeprefix("measure_hf_").rsplit("_", 1)
            path = workdir / f"results/m/hf/{model.replace('_', '-')}/{precision}/instance.json"
            instance = json.loads(path.read_text())
            process_start = datetime.fromisoformat(instance["finished_at"]).timestamp() - instance["process_wall_s"]
            seconds = process_start - job["start"].astimezone().timestamp()
            startups.append(seconds)
            startup = f"{seconds:.1f}s"
        run_s = (job["end"] - job["start"]).total_seconds()
        cpu_free = "yes" if busy < CPUS else "no"
        print(f"{rule:44} {job['State']:10} {wait:>12.0f}s {cpu_free:>8} {startup:>12} {run_s:>4.0f}s")
    if free:
        print(
            f"submission -> start, CPU free (sacct, 1 s resolution): median {statistics.median(free):.1f}s, "
            f"max {max(free):.0f}s over {len(free)} jobs"
        )
    if queued:
        print(f"(queued behind running jobs: {len(queued)} jobs, median wait {statistics.median(queued):.0f}s)")
    if startups:
        print(
            f"SLURM start -> benchmark process running (Snakemake and srun inside the job): "
            f"median {statistics.median(startups):.1f}s over {len(startups)} instance jobs"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-cluster", action="store_true", help="only the dry-run planning benchmark")
    parser.add_argument("--skip-planning", action="store_true", help="only the local SLURM scheduling benchmark")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-slurm-") as tmp:
        if not args.skip_planning:
            bench_planning(Path(tmp), args.repeats)
        if not args.skip_cluster:
            bench_scheduling(Path(tmp))


if __name__ == "__main__":
    main()
