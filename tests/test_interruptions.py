"""Interrupting the real workflow (SIGINT, SIGTERM, SIGKILL) and starting it again.

Each test starts the real `snakemake` CLI, kills it for real at a known point (a cell has
just finished, another is being measured), then checks what is left: no process of the
run alive, no half-measured cell counted as done; and that the next run measures only the
missing cells, with one MLflow run per cell.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest

from pipeline.run.gpu_slots import try_acquire
from tests.conftest import REPO, run_snakemake, write_matrix

pytestmark = pytest.mark.workflow

# Cells of a few seconds each, so that a kill right after the first cell lands inside the second.
WORKLOAD = """
overrides:
  workload.input_tokens: 8
  workload.output_tokens: 64
  workload.num_requests: 4
  workload.repeats: 2
  workload.warmup_requests: 1
"""
TWO_CELLS = "engine: [hf]\nmodel: [tiny-llama]\nprecision: [fp32]\nbatch_size: [1, 2]\n" + WORKLOAD
TWO_INSTANCES = "engine: [hf]\nmodel: [tiny-llama]\nprecision: [fp32, bf16]\nbatch_size: [1]\n" + WORKLOAD
FP32 = "hf/tiny-llama/fp32"


def start_snakemake(workdir: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    """The real CLI in the background, in a session of its own (as a terminal would start it)."""
    snakemake = shutil.which("snakemake", path=str(Path(sys.executable).parent)) or "snakemake"
    command = [snakemake, "-s", str(REPO / "Snakefile"), "-d", str(workdir), *args]
    log = (workdir / "snakemake.out").open("a")
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)


def wait_for(condition, what: str, process: subprocess.Popen, workdir: Path, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            tail = (workdir / "snakemake.out").read_text()[-4000:]
            pytest.fail(f"{what}: not seen (snakemake exit {process.poll()}); its output:\n{tail}")
        time.sleep(0.01)


def descendants(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def assert_all_gone(processes: list[psutil.Process], timeout_s: float = 30) -> None:
    """Every process of the interrupted run has ended (zombies count as ended)."""
    deadline = time.monotonic() + timeout_s
    alive = processes
    while time.monotonic() < deadline:
        alive = [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not alive:
            return
        time.sleep(0.1)
    pytest.fail(f"still running after the interruption: {[(p.pid, p.cmdline()[:4]) for p in alive]}")


def summary(workdir: Path, cell_id: str) -> dict | None:
    path = workdir / "results/m" / cell_id / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else None


def config(workdir: Path, matrix: str, models_dir: Path, *extra: str) -> list[str]:
    return ["--config", f"matrix={write_matrix(workdir, 'm', matrix)}", f"models_dir={models_dir}", *extra]


def test_ctrl_c_stops_the_engine_and_the_rerun_measures_only_the_missing_cell(tmp_path, models_dir):
    args = ["--cores", "2", *config(tmp_path, TWO_CELLS, models_dir, "tracking=false")]
    run = start_snakemake(tmp_path, *args)
    wait_for(lambda: summary(tmp_path, f"{FP32}/bs1") is not None, "the first cell's result", run, tmp_path)
    processes = descendants(run.pid)
    assert any("pipeline.run.supervisor" in " ".join(p.cmdline()) for p in processes)
    os.killpg(run.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
    assert run.wait(timeout=120) != 0
    assert_all_gone(processes)
    first = summary(tmp_path, f"{FP32}/bs1")
    assert first["status"] == "ok"  # kept, although its job was interrupted
    assert summary(tmp_path, f"{FP32}/bs2") is None  # the cell being measured is not counted
    assert "stopping the engine; finished cells are kept" in (tmp_path / f"results/m/logs/{FP32}.log").read_text()

    again = run_snakemake(tmp_path, *args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "2 cells in 1 engine instances; 1 done, 1 new" in again.stderr
    assert summary(tmp_path, f"{FP32}/bs1")["finished_at"] == first["finished_at"]  # not measured again
    assert summary(tmp_path, f"{FP32}/bs2")["status"] == "ok"
    cells = pd.read_csv(tmp_path / "results/m/cells.csv")
    assert sorted(cells.cell_id) == [f"{FP32}/bs1", f"{FP32}/bs2"] and set(cells.status) == {"ok"}


def test_sigterm_lets_the_running_job_finish_and_starts_nothing_new(tmp_path, models_dir):
    args = ["--cores", "2", *config(tmp_path, TWO_INSTANCES, models_dir, "tracking=false")]
    run = start_snakemake(tmp_path, *args)
    logs = tmp_path / "results/m/logs/hf/tiny-llama"
    wait_for(
        lambda: any("engine ready" in p.read_text() for p in logs.glob("*.log")) if logs.is_dir() else False,
        "an engine ready",
        run,
        tmp_path,
    )
    processes = descendants(run.pid)
    run.send_signal(signal.SIGTERM)  # `kill PID`: Snakemake's graceful stop
    assert run.wait(timeout=300) != 0
    assert_all_gone(processes)
    done = [c for c in ("hf/tiny-llama/fp32/bs1", "hf/tiny-llama/bf16/bs1") if summary(tmp_path, c)]
    assert len(done) == 1, "the running instance finishes its cells; the other one never starts"
    assert summary(tmp_path, done[0])["status"] == "ok"
    assert "Will exit after finishing currently running jobs" in (tmp_path / "snakemake.out").read_text()

    again = run_snakemake(tmp_path, *args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "2 cells in 2 engine instances; 1 done, 1 new; 1 instance job(s) to run" in again.stderr
    assert set(pd.read_csv(tmp_path / "results/m/cells.csv").status) == {"ok"}


def mlflow_runs(workdir: Path) -> dict[str, list[str]]:
    """Active runs in the workdir's default MLflow store, by cell id (the matrix run as 'matrix')."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("llm-infer-bench/m")
    runs: dict[str, list[str]] = {}
    for run in client.search_runs([experiment.experiment_id], max_results=1000):
        key = run.data.tags.get("cell_id") or run.data.tags.get("kind")
        runs.setdefault(key, []).append(run.info.run_id)
    return runs


def test_sigkill_leaves_nothing_running_and_a_restart_finishes_without_duplicates(tmp_path, models_dir):
    """Snakemake killed outright, twice (while measuring, then while logging to MLflow); the
    instance also holds the machine's only GPU slot, which must come back."""
    slots = tmp_path / "gpu-slots"
    env = {**os.environ, "LLM_BENCH_GPU_SLOTS": "1", "LLM_BENCH_GPU_LOCK_DIR": str(slots)}
    args = ["--cores", "2", "--resources", "gpu=1", *config(tmp_path, TWO_CELLS, models_dir, "gpus=1")]

    run = start_snakemake(tmp_path, *args, env=env)
    wait_for(lambda: summary(tmp_path, f"{FP32}/bs1") is not None, "the first cell's result", run, tmp_path)
    processes = descendants(run.pid)
    assert try_acquire(1, ["0"], slots) is None, "the running instance holds the only GPU slot"
    run.kill()
    run.wait(timeout=30)
    assert_all_gone(processes)  # the instance heard its parent die and stopped its engine
    first = summary(tmp_path, f"{FP32}/bs1")
    assert first["status"] == "ok" and first["gpu_devices"] == "0"
    assert summary(tmp_path, f"{FP32}/bs2") is None
    assert list((tmp_path / ".snakemake/locks").glob("*.lock")), "SIGKILL leaves Snakemake's lock behind"
    lease = try_acquire(1, ["0"], slots)
    assert lease is not None, "the killed instance's GPU slot came back"
    lease.release()

    # again, killed while the tracking step logs the cells
    run = start_snakemake(tmp_path, *args, env=env)
    tracking_log = tmp_path / "results/m/logs/tracking.log"
    wait_for(
        lambda: tracking_log.is_file() and "tracking: logged" in tracking_log.read_text(),
        "the first MLflow run logged",
        run,
        tmp_path,
    )
    processes = descendants(run.pid)
    run.kill()
    run.wait(timeout=30)
    assert_all_gone(processes)
    assert not (tmp_path / "results/m/tracking.done").exists(), "killed before tracking finished"
    assert "matrix summary" not in tracking_log.read_text()
    logged = [line.split()[2] for line in tracking_log.read_text().splitlines() if line.startswith("tracking: logged")]
    logged_cell = logged[0]
    logged_before = mlflow_runs(tmp_path)

    final = start_snakemake(tmp_path, *args, env=env)
    assert final.wait(timeout=600) == 0, (tmp_path / "snakemake.out").read_text()[-3000:]
    runs_out = (tmp_path / "snakemake.out").read_text().split("stale Snakemake lock file(s) left by an interrupted run")
    assert len(runs_out) == 3, "both restarts removed the lock their killed predecessor left"
    out = runs_out[-1]
    assert "2 cells in 1 engine instances; 2 done; 0 instance job(s) to run" in out
    assert summary(tmp_path, f"{FP32}/bs1")["finished_at"] == first["finished_at"]
    second = summary(tmp_path, f"{FP32}/bs2")
    assert second["status"] == "ok" and second["gpu_devices"] == "0"
    runs = mlflow_runs(tmp_path)
    assert sorted(runs) == [f"{FP32}/bs1", f"{FP32}/bs2", "matrix"]
    assert all(len(ids) == 1 for ids in runs.values()), runs  # no duplicate, no half-logged run left
    assert runs[logged_cell] == logged_before[logged_cell], "a run completed before the kill is kept as is"
    assert f"tracking: skipped {logged_cell}" in tracking_log.read_text()


def test_a_job_killed_from_outside_is_retried_by_snakemake(tmp_path, models_dir):
    """profiles/local retries a job once: its supervisor SIGKILLed (as the OOM killer would)
    costs one more attempt, not the sweep."""
    one_cell = "engine: [hf]\nmodel: [tiny-llama]\nprecision: [fp32]\nbatch_size: [1]\n" + WORKLOAD
    args = ["--profile", str(REPO / "profiles/local"), *config(tmp_path, one_cell, models_dir, "tracking=false")]
    run = start_snakemake(tmp_path, *args)
    log = tmp_path / f"results/m/logs/{FP32}.log"
    wait_for(lambda: log.is_file() and "engine ready" in log.read_text(), "the engine ready", run, tmp_path)
    (instance,) = [p for p in descendants(run.pid) if "pipeline.run.supervisor" in " ".join(p.cmdline())]
    engines = instance.children(recursive=True)
    instance.kill()
    assert run.wait(timeout=300) == 0, (tmp_path / "snakemake.out").read_text()[-3000:]
    assert_all_gone([instance, *engines])
    out = (tmp_path / "snakemake.out").read_text()
    assert "Trying to restart job" in out
    assert summary(tmp_path, f"{FP32}/bs1")["status"] == "ok"
    assert pd.read_csv(tmp_path / "results/m/cells.csv").status.tolist() == ["ok"]
