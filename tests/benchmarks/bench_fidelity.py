"""Precision fidelity on the engines-cpu matrix: the figures, the checks issue 16 asks for, and
what the fidelity passes cost. Not a test: it times things.

    python tests/benchmarks/bench_fidelity.py [--workdir DIR]     # runs conf/matrix/engines-cpu.yaml
    python tests/benchmarks/bench_fidelity.py --existing DIR      # reads DIR/results/engines-cpu

Prints each instance's KL mean and top-1 agreement against hf fp32 (95% intervals), then:
- whether KL(int4) > KL(int8) > KL(bf16) for llama.cpp on small-llama, the intervals separating;
- top-1 agreement of fp32 through hf, llama.cpp and vLLM (target: >= 99.5%);
- the fidelity work (each model's reference, each instance's pass) as a share of the run's wall
  time (target: <= 15%); with --existing, of the summed job wall times (jobs run one at a time
  on 2 cores, so the sum is the run's wall time less Snakemake's own).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[2]
MATRIX = "engines-cpu"


def run_matrix(workdir: Path) -> float:
    started = time.perf_counter()
    command = [str(Path(sys.executable).parent / "snakemake"), "-s", str(REPO / "Snakefile"), "-d", str(workdir)]
    run = subprocess.run(
        [*command, "--cores", "2", "--config", f"matrix={MATRIX}", "tracking=false"], capture_output=True, text=True
    )
    if run.returncode != 0:
        sys.exit(run.stderr[-4000:])
    return time.perf_counter() - started


def fidelity_seconds(workdir: Path) -> tuple[float, float, float]:
    """(the references' build time, the instances' passes, all the jobs' wall time) of a finished run."""
    results = workdir / "results" / MATRIX
    references = 0.0
    for log in (workdir / "models/logs").glob("*-fidelity-reference.log"):
        found = re.search(r"\[fidelity\] wrote \S+: ([\d.]+)s since this process started", log.read_text())
        references += float(found.group(1)) if found else 0.0
    passes, jobs = 0.0, 0.0
    for instance in results.glob("*/*/*/instance.json"):
        jobs += json.loads(instance.read_text())["process_wall_s"]
        summaries = sorted(instance.parent.glob("bs*/summary.json"))
        noted = [json.loads(s.read_text()).get("fidelity") for s in summaries]
        passes += max((n["pass_s"] for n in noted if n), default=0.0)  # one pass per instance, noted in each cell
    return references, passes, jobs + references


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, help="run the matrix here (default: a temporary directory)")
    parser.add_argument("--existing", type=Path, help="read a finished run in this working directory instead")
    args = parser.parse_args()
    workdir = args.existing or args.workdir or Path(tempfile.mkdtemp(prefix="bench-fidelity-"))
    wall = None if args.existing else run_matrix(workdir)
    cells = pd.read_csv(workdir / "results" / MATRIX / "cells.csv")
    instances = (
        cells[cells.status == "ok"].sort_values("batch_size").drop_duplicates(["model", "engine", "precision"]).copy()
    )
    instances["kl_mean"] = instances.apply(
        lambda r: f"{r.fidelity_kl_mean:.2e} [{r.fidelity_kl_mean_low:.2e}-{r.fidelity_kl_mean_high:.2e}]", axis=1
    )
    instances["top1"] = instances.apply(
        lambda r: f"{r.fidelity_top1:.1%} [{r.fidelity_top1_low:.1%}-{r.fidelity_top1_high:.1%}]", axis=1
    )
    columns = ["model", "engine", "precision", "fidelity_status", "kl_mean", "top1", "fidelity_top5_overlap"]
    print(instances[columns].sort_values(["model", "engine", "precision"]).to_string(index=False))

    llama = instances[(instances.model == "small-llama") & (instances.engine == "llama_cpp")].set_index("precision")
    order = [("int4", "int8"), ("int8", "bf16")]
    separated = all(llama.fidelity_kl_mean_low[a] > llama.fidelity_kl_mean_high[b] for a, b in order)
    print(f"\nsmall-llama llama_cpp KL(int4) > KL(int8) > KL(bf16), intervals separate: {separated}")
    fp32 = instances[instances.precision == "fp32"]
    for row in fp32.itertuples():
        print(f"fp32 top-1 agreement with hf fp32: {row.model} {row.engine} {row.fidelity_top1:.2%}")
    print(f"fp32 top-1 >= 99.5% everywhere: {(fp32.fidelity_top1 >= 0.995).all()}")
    references, passes, jobs = fidelity_seconds(workdir)
    total = wall if wall is not None else jobs
    share = (references + passes) / total
    print(
        f"fidelity: references {references:.1f}s + passes {passes:.1f}s = {share:.1%} of "
        f"{'the run' if wall is not None else 'the summed job wall time'}, {total:.0f}s (target <= 15%)"
    )


if __name__ == "__main__":
    main()
