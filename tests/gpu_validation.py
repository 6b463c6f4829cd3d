"""The prepared GPU validation run: the real workflow on one GPU, its results in one folder.

    python tests/gpu_validation.py OUT [--wheels DIR] [--mode auto|gpu|cpu] [--budget-s 480]

For a bare, offline machine with one NVIDIA GPU whose Python has torch, transformers, numpy,
pandas, jinja2 and matplotlib: what else the pipeline needs (snakemake, hydra-core and their
dependencies) is installed from the wheels in --wheels (`make gpu-wheels` collects them here,
for Python 3.12), without network. The checkout is used in place (on PYTHONPATH), not installed.

GPU mode: synthetic Mistral-7B- and Llama-2-7B-shaped models (random bf16 weights,
materialized on the GPU) measured by hf, then by hf_compiled (torch.compile with CUDA graphs),
at batch 1, 8 and 32, with the device probes (copy bandwidth, bf16 matmul) beside every cell.
CPU mode (no GPU; what CI runs): the same steps on tiny-llama at batch 1 and 2.

The two engines run as two phases of one matrix (first hf alone, then hf with hf_compiled,
whose hf cells are then already done): if the compiled phase runs past the budget, the hf
results and their report are kept. OUT gets cells.csv, report/, validation.log (the
machine's facts, what Snakemake printed, each phase's wall time), logs/ (each engine
instance's log) and summary.txt (the quoted columns per cell). Exit status 0 only when every
cell of both phases is ok.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NEEDED = {"snakemake": "snakemake", "hydra": "hydra-core", "omegaconf": "omegaconf", "yaml": "pyyaml"}
MATRIX_NAME = "gpu-validation"
QUOTED = [
    "cell_id",
    "status",
    "engine_device",
    "tpot_s_p50",
    "tpot_s_p50_low",
    "tpot_s_p50_high",
    "output_tok_s",
    "tpot_floor_s",
    "tpot_floor_measured_s",
    "mbu",
    "mbu_measured",
    "peak_bandwidth_measured_gbs",
    "hardware_entry",
    "peak_mem_bytes",
    "peak_mem_kind",
    "load_s",
    "compile_s",
    "bound",
]

GPU_MATRIX = """# written by tests/gpu_validation.py (GPU mode)
gpus: 1
engine: {engines}
model: [mistral-7b, llama2-7b]
precision: [bf16]
batch_size: [1, 8, 32]
overrides:
  model.synthetic: true    # their architectures, random weights: no download
  model.hub_id: null
  workload.input_tokens: 128
  workload.output_tokens: 32
  workload.num_requests: 8
  workload.warmup_requests: 1
  workload.repeats: 2
  workload.fidelity: false   # a 7B hf fp32 reference per model costs device minutes this check has not
"""

CPU_MATRIX = """# written by tests/gpu_validation.py (CPU mode: no GPU on this machine)
engine: {engines}
model: [tiny-llama]
precision: [bf16]
batch_size: [1, 2]
overrides:
  workload.input_tokens: 16
  workload.output_tokens: 8
  workload.num_requests: 4
  workload.warmup_requests: 1
  workload.repeats: 2
"""


class Log:
    def __init__(self, path: Path):
        self.file = path.open("a", buffering=1)

    def __call__(self, message: str) -> None:
        line = f"[gpu-validation {time.strftime('%H:%M:%S')}] {message}"
        print(line, flush=True)
        self.file.write(line + "\n")


def install_missing(wheels: Path | None, log: Log) -> None:
    missing = [dist for module, dist in NEEDED.items() if importlib.util.find_spec(module) is None]
    if not missing:
        log("snakemake, hydra-core: already importable")
        return
    if wheels is None or not wheels.is_dir():
        sys.exit(f"missing {', '.join(missing)} and no --wheels folder to install them from (make gpu-wheels)")
    log(f"installing {', '.join(missing)} from {wheels} (no network)")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--find-links", str(wheels), *missing],
        check=True,
    )


def machine_facts(log: Log) -> str:
    import torch

    log(f"python {platform.python_version()} at {sys.executable}")
    log(f"torch {torch.__version__} (CUDA {torch.version.cuda}); GPU usable: {torch.cuda.is_available()}")
    smi = shutil.which("nvidia-smi")
    if smi:
        query = "--query-gpu=index,name,driver_version,memory.total,clocks.max.memory"
        out = subprocess.run([smi, query, "--format=csv,noheader"], capture_output=True, text=True)
        log(f"nvidia-smi: {out.stdout.strip() or out.stderr.strip()}")
    return "gpu" if torch.cuda.is_available() else "cpu"


def run_phase(name: str, engines: list[str], mode: str, work: Path, cores: int, timeout_s: float, log: Log) -> bool:
    matrix = work / f"{MATRIX_NAME}.yaml"
    matrix.write_text((GPU_MATRIX if mode == "gpu" else CPU_MATRIX).format(engines="[" + ", ".join(engines) + "]"))
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(work), "--cores", str(cores)]
    command += ["--config", f"matrix={matrix}", "tracking=false", f"models_dir={work / 'models'}"]
    path = [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    log(f"phase {name}: {' '.join(command)} (at most {timeout_s:.0f} s)")
    started = time.perf_counter()
    with (work.parent / "validation.log").open("a") as out:
        try:
            done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env, timeout=timeout_s)
            ok = done.returncode == 0
        except subprocess.TimeoutExpired:
            ok = False
            log(f"phase {name}: past its {timeout_s:.0f} s, stopped; the earlier phases' results are kept")
    log(f"phase {name}: {'done' if ok else 'FAILED'} in {time.perf_counter() - started:.0f} s")
    return ok


def gather(work: Path, out: Path, log: Log) -> bool:
    import pandas as pd

    cells_csv = work / "results" / MATRIX_NAME / "cells.csv"
    if not cells_csv.is_file():
        log(f"no {cells_csv}: nothing was collected")
        return False
    shutil.copy(cells_csv, out / "cells.csv")
    report = work / "reports" / MATRIX_NAME
    if report.is_dir():
        shutil.copytree(report, out / "report", dirs_exist_ok=True)
    logs = work / "results" / MATRIX_NAME / "logs"  # each engine instance's own log
    if logs.is_dir():
        shutil.copytree(logs, out / "logs", dirs_exist_ok=True)
    cells = pd.read_csv(cells_csv)
    columns = [c for c in QUOTED if c in cells.columns]
    with pd.option_context("display.width", 250, "display.max_columns", None):
        table = cells[columns].to_string(index=False)
    (out / "summary.txt").write_text(table + "\n")
    log("cells:\n" + table)
    return bool(len(cells)) and (cells.status == "ok").all()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder for cells.csv, report/, validation.log, summary.txt")
    parser.add_argument("--wheels", type=Path, help="wheels of what this Python lacks (make gpu-wheels)")
    parser.add_argument("--mode", choices=("auto", "gpu", "cpu"), default="auto")
    parser.add_argument("--budget-s", type=float, default=480.0, help="wall time for both phases (default 8 min)")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    started = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.out / "work"
    work.mkdir(exist_ok=True)
    log = Log(args.out / "validation.log")
    install_missing(args.wheels, log)
    detected = machine_facts(log)
    mode = detected if args.mode == "auto" else args.mode
    if mode == "gpu" and detected != "gpu":
        sys.exit("--mode gpu, but torch sees no GPU here (see validation.log for nvidia-smi)")
    log(f"mode: {mode}")
    if not run_phase("hf", ["hf"], mode, work, args.cores, args.budget_s, log):
        gather(work, args.out, log)
        return 1
    left = args.budget_s - (time.monotonic() - started)
    compiled = left > 30 and run_phase("hf_compiled", ["hf", "hf_compiled"], mode, work, args.cores, left, log)
    if not compiled:
        log("the hf_compiled phase did not finish: cells.csv and the report hold the hf phase")
    all_ok = gather(work, args.out, log)
    log(f"total {time.monotonic() - started:.0f} s; {'every cell ok' if all_ok and compiled else 'NOT every cell ok'}")
    return 0 if all_ok and compiled else 1


if __name__ == "__main__":
    sys.exit(main())
