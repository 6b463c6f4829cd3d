"""The workflow on a real SLURM cluster through snakemake-executor-plugin-slurm.

The cluster is Debian's slurm-wlm as one node on 127.0.0.1 with two fake GPUs and
slurmdbd (so sacct answers as on a real cluster), started by .ci/local_slurm.py.
A Snakemake job is one engine instance (all its batch sizes in one process): the matrix
here has one batch size per instance, so SLURM jobs and cells are one to one.
"""

import csv
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import REPO, write_matrix

pytestmark = pytest.mark.workflow

MATRIX = """
engine: [hf]
model: [tiny-llama]
precision: [fp32, bf16]
batch_size: [1]
overrides:
  workload.input_tokens: 8
  workload.output_tokens: 4
  workload.num_requests: 2
  workload.repeats: 1
  workload.warmup_requests: 1
"""
SACCT_FIELDS = ["JobID", "JobName", "Comment", "State", "Submit", "Start", "End", "AllocTRES"]


def slurm_missing() -> str | None:
    for tool in ("slurmctld", "slurmd", "slurmdbd", "sbatch", "sacct", "mariadbd"):
        if not shutil.which(tool, path=f"/usr/sbin:/usr/bin:{os.environ.get('PATH', '')}"):
            return f"{tool} is not installed (make setup-slurm)"
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        return "snakemake-executor-plugin-slurm is not installed (pip install -e '.[test]')"
    return None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    missing = slurm_missing()
    if missing:
        pytest.skip(missing)
    root = tmp_path_factory.mktemp("slurm")
    script = [sys.executable, str(REPO / ".ci/local_slurm.py")]
    started = subprocess.run([*script, "start", str(root), "--gpus", "2"], capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stderr
    env = {**os.environ, "SLURM_CONF": str(root / "slurm.conf"), "PATH": f"{root}/bin:{os.environ['PATH']}"}
    yield env
    subprocess.run([*script, "stop", str(root)], timeout=120)


def sacct(env: dict) -> list[dict]:
    out = subprocess.run(
        ["sacct", "-a", "-X", "-P", "-n", "-o", ",".join(SACCT_FIELDS)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [dict(zip(SACCT_FIELDS, row, strict=True)) for row in csv.reader(io.StringIO(out), delimiter="|")]


def test_each_cell_runs_as_its_own_slurm_job_with_its_own_gpu(cluster, tmp_path, models_dir):
    matrix = write_matrix(tmp_path, "m", MATRIX)
    snakemake = shutil.which("snakemake", path=str(Path(sys.executable).parent)) or "snakemake"
    # the plugin never gives up polling a job it cannot see: bound the whole run
    run = subprocess.run(
        ["timeout", "-k", "10", "540", snakemake, "-s", str(REPO / "Snakefile"), "-d", str(tmp_path)]
        + ["--profile", str(REPO / "profiles/slurm"), "--slurm-init-seconds-before-status-checks", "2"]
        + ["--config", f"matrix={matrix}", f"models_dir={models_dir}", "gpus=1", "cpus=1", "tracking=false"],
        env=cluster,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    cells = pd.read_csv(tmp_path / "results/m/cells.csv")
    assert sorted(cells.cell_id) == ["hf/tiny-llama/bf16/bs1", "hf/tiny-llama/fp32/bs1"]
    assert set(cells.status) == {"ok"}

    jobs = sacct(cluster)
    # one SLURM job per cell; collect, report (and track) ran locally, materialize_model was not needed
    assert sorted(job["Comment"] for job in jobs) == [
        "rule_measure_hf_tiny_llama_bf16",
        "rule_measure_hf_tiny_llama_fp32",
    ]
    assert {job["State"] for job in jobs} == {"COMPLETED"}
    assert all("gres/gpu=1" in job["AllocTRES"] and "cpu=1" in job["AllocTRES"] for job in jobs)

    devices = {}
    for precision in ("fp32", "bf16"):
        summary = json.loads((tmp_path / f"results/m/hf/tiny-llama/{precision}/bs1/summary.json").read_text())
        devices[f"rule_measure_hf_tiny_llama_{precision}"] = summary["gpu_devices"]
        log = (tmp_path / f"results/m/logs/hf/tiny-llama/{precision}.log").read_text()
        assert f"GPUs assigned by SLURM: CUDA_VISIBLE_DEVICES={summary['gpu_devices']}" in log
    assert set(devices.values()) <= {"0", "1"}
    first, second = jobs
    span = {job["Comment"]: (datetime.fromisoformat(job["Start"]), datetime.fromisoformat(job["End"])) for job in jobs}
    a, b = span[first["Comment"]], span[second["Comment"]]
    if a[0] < b[1] and b[0] < a[1]:  # they ran at the same time: SLURM gave them different GPUs
        assert devices[first["Comment"]] != devices[second["Comment"]]


def test_a_gpu_matrix_plans_for_slurm_with_each_jobs_resources(tmp_path):
    """Dry run through the slurm executor (no cluster needed): every instance job declares its
    GPUs, memory, runtime and partition (that collect, report and track stay local, the run above shows)."""
    matrix = write_matrix(
        tmp_path,
        "big",
        "engine: [hf]\nmodel: [tiny-llama, small-llama]\nprecision: [fp32, bf16, fp16]\nbatch_size: [1, 2, 4, 8, 16]\n",
    )
    snakemake = shutil.which("snakemake", path=str(Path(sys.executable).parent)) or "snakemake"
    run = subprocess.run(
        [snakemake, "-n", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path), "--profile", str(REPO / "profiles/slurm")]
        + ["--config", f"matrix={matrix}", "gpus=1"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "LLM_BENCH_SLURM_PARTITION": "gpu", "LLM_BENCH_SLURM_GPU_MODEL": "a100"},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout + run.stderr
    assert "matrix big: 30 cells in 6 engine instances" in out
    measure = [block for block in out.split("\nrule ") if block.startswith("measure_")]
    assert len(measure) == 6
    for block in measure:
        # (threads show as 1: a dry run forces --cores 1; a real SLURM run gets --cpus-per-task=4)
        assert "gpu=1" in block and "gpu_model=a100" in block
        assert "slurm_partition=gpu" in block and "runtime=" in block and "mem_mb=" in block
    # 5 batch sizes x (600 s load + 600 s cell) + 300 s margin = 105 min; small-llama's bf16 weights
    # are ~0.2 GB, so 3072 MB + twice that
    small = next(b for b in measure if b.startswith("measure_hf_small_llama_bf16"))
    assert "runtime=105" in small
    mem = int(small.split("mem_mb=")[1].split(",")[0])
    assert 3072 + 300 < mem < 3072 + 600
