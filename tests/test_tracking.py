"""pipeline.tracking.mlflow_sync on real results: MLflow's default sqlite store and a real `mlflow server`.

Every test runs the real CLI (`python -m pipeline.tracking.mlflow_sync`) and reads the runs back with
MlflowClient, against both stores.
"""

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pipeline.results.schema import AXIS, PARAM, columns_of
from pipeline.tracking.mlflow_sync import metric_columns, shorten
from tests.conftest import REPO, run_snakemake

pytestmark = pytest.mark.workflow

MLFLOW = Path(sys.executable).with_name("mlflow")
FAILED_CELL = "hf/tiny-llama/bf16/bs3"
FAILED_ERROR = "Traceback (most recent call last):\n" + "  frame\n" * 800 + "RuntimeError: engine died (exit 137)"
PARAMS = columns_of(AXIS, PARAM)


# ---- real results, once per module ------------------------------------------------------


def add_failed_cell(results: Path) -> None:
    """A cell that errored, as the workflow writes one: its own directory and a cells.csv row."""
    source, target = results / "hf/tiny-llama/bf16/bs2", results / FAILED_CELL
    shutil.copytree(source, target)
    summary = json.loads((target / "summary.json").read_text())
    summary.update(cell_id=FAILED_CELL, batch_size=3, status="error", error=FAILED_ERROR)
    (target / "summary.json").write_text(json.dumps(summary))
    (target / "requests.csv").write_text((source / "requests.csv").read_text().splitlines()[0] + "\n")

    cells = pd.read_csv(results / "cells.csv", dtype=str, keep_default_na=False)
    row = cells[cells.cell_id == "hf/tiny-llama/bf16/bs2"].iloc[0].copy()
    for column in metric_columns(cells):
        row[column] = ""
    row["cell_id"], row["batch_size"], row["status"], row["error"] = FAILED_CELL, "3", "error", FAILED_ERROR
    pd.concat([cells, row.to_frame().T]).to_csv(results / "cells.csv", index=False)


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory, models_dir) -> Path:
    workdir = tmp_path_factory.mktemp("tracking-results")
    run = run_snakemake(
        workdir, "--cores", "2", "--config", "matrix=smoke", f"models_dir={models_dir}", "tracking=false"
    )
    assert run.returncode == 0, run.stderr[-3000:]
    results = workdir / "results/smoke"
    assert set(pd.read_csv(results / "cells.csv").status) == {"ok"}, "the smoke matrix should measure every cell"
    add_failed_cell(results)
    return results


@pytest.fixture
def results(smoke_results, tmp_path) -> Path:
    """A private copy: tests that change a cell change only theirs."""
    return Path(shutil.copytree(smoke_results, tmp_path / "results/smoke"))


# ---- the two stores ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real tracking server with its own sqlite store and artifact folder."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    command = [str(MLFLOW), "server", "--workers", "1", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--backend-store-uri", f"sqlite:///{root}/store.db", "--artifacts-destination", str(root / "artifacts")]
    with open(root / "server.log", "w") as log:
        # its own process group: the server's worker goes down with it
        server = subprocess.Popen(command, cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, (root / "server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline, "mlflow server not ready in 120 s"
                time.sleep(0.5)
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


@dataclass
class Store:
    cwd: Path  # where the CLI runs: MLflow's default store is ./mlflow.db
    env_uri: str | None  # MLFLOW_TRACKING_URI, or None for MLflow's default
    uri: str  # how the tests read it back

    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(self.uri)


@pytest.fixture(scope="module", params=["default-sqlite", "server"])
def store(request, tmp_path_factory) -> Store:
    cwd = tmp_path_factory.mktemp(request.param)
    if request.param == "server":
        uri = request.getfixturevalue("mlflow_server")
        return Store(cwd, uri, uri)
    return Store(cwd, None, f"sqlite:///{cwd}/mlflow.db")


def track(store: Store, results: Path, matrix: str, *extra: str):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PYTHONPATH"] = str(REPO)
    if store.env_uri:
        env["MLFLOW_TRACKING_URI"] = store.env_uri
    command = [sys.executable, "-m", "pipeline.tracking.mlflow_sync", "--matrix", matrix]
    command += ["--cells", str(results / "cells.csv"), "--results-dir", str(results), *extra]
    return subprocess.run(command, cwd=store.cwd, env=env, capture_output=True, text=True, timeout=300)


def active_runs(store: Store, matrix: str) -> list:
    client = store.client()
    experiment = client.get_experiment_by_name(f"llm-infer-bench/{matrix}")
    assert experiment is not None
    return client.search_runs([experiment.experiment_id], max_results=1000)


def cell_runs(runs) -> dict[str, list]:
    grouped = {}
    for run in runs:
        if run.data.tags.get("kind") == "cell":
            grouped.setdefault(run.data.tags["cell_id"], []).append(run)
    return grouped


def run_ids(grouped: dict[str, list]) -> dict[str, str]:
    return {cell: run.info.run_id for cell, (run,) in grouped.items()}


def matrix_runs(runs) -> list:
    return [run for run in runs if run.data.tags.get("kind") == "matrix"]


def artifact_text(store: Store, run_id: str, path: str, tmp_path: Path) -> str:
    destination = tmp_path / f"download-{run_id}"
    destination.mkdir(exist_ok=True)
    return Path(store.client().download_artifacts(run_id, path, str(destination))).read_text()


def tree_digest(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


# ---- a first logging of the results, once per store -------------------------------------


@pytest.fixture(scope="module")
def first_log(store, smoke_results, tmp_path_factory):
    root = tmp_path_factory.mktemp("first-log")
    results = Path(shutil.copytree(smoke_results, root / "results/smoke"))
    report = root / "reports/smoke"
    report.mkdir(parents=True)
    (report / "report.md").write_text("# smoke\n")
    (report / "index.html").write_text("<h1>smoke</h1>\n")
    marker = results / "tracking.done"
    started = time.monotonic()
    run = track(store, results, "first", "--report-dir", str(report), "--done-marker", str(marker))
    elapsed = time.monotonic() - started
    assert run.returncode == 0, run.stderr[-3000:]
    print(f"[{store.uri}] first log of 3 cells + matrix run: {elapsed:.1f} s")
    return results, report, run, active_runs(store, "first")


def test_every_cell_is_one_run_with_its_params_metrics_and_tags(first_log):
    results, _, _, runs = first_log
    cells = pd.read_csv(results / "cells.csv", dtype=str, keep_default_na=False)
    grouped = cell_runs(runs)
    assert sorted(grouped) == sorted(cells.cell_id) and len(cells) == 3
    assert all(len(found) == 1 for found in grouped.values())
    for row in cells[cells.status == "ok"].to_dict("records"):
        run = grouped[row["cell_id"]][0]
        assert run.data.params == {key: row[key] for key in PARAMS if row[key] != ""}
        assert run.data.params["batch_size"] == row["cell_id"].rsplit("bs", 1)[1]
        assert run.data.tags["status"] == "ok" and "error" not in run.data.tags
        assert run.data.tags["finished_at"] == row["finished_at"]
        metrics = run.data.metrics
        for key in ("ttft_s_p50", "tpot_s_p50", "e2e_s_p50", "output_tok_s", "load_s", "peak_mem_bytes"):
            assert metrics[key] == float(row[key]) and metrics[key] > 0
        assert all(metrics[key] == float(row[key]) for key in metrics)
        # text and list columns are no metrics; settings are params, not metrics
        assert not {"output_tok_s_repeats", "hardware", "finished_at", "input_tokens", "batch_size"} & set(metrics)
        assert run.info.status == "FINISHED"


def test_each_cell_run_carries_its_files_and_composed_config(first_log, store, tmp_path):
    results, _, _, runs = first_log
    for cell_id, (run,) in cell_runs(runs).items():
        names = {a.path for a in store.client().list_artifacts(run.info.run_id)}
        assert names == {"requests.csv", "summary.json", "config.yaml"}
        summary = json.loads((results / cell_id / "summary.json").read_text())
        assert json.loads(artifact_text(store, run.info.run_id, "summary.json", tmp_path)) == summary
        assert yaml.safe_load(artifact_text(store, run.info.run_id, "config.yaml", tmp_path)) == summary["config"]
        requests_csv = artifact_text(store, run.info.run_id, "requests.csv", tmp_path)
        assert requests_csv == (results / cell_id / "requests.csv").read_text()


def test_a_failed_cell_is_logged_with_its_status_and_error(first_log):
    _, _, _, runs = first_log
    (run,) = cell_runs(runs)[FAILED_CELL]
    assert run.data.tags["status"] == "error" and run.info.status == "FAILED"
    error = run.data.tags["error"]
    assert len(FAILED_ERROR) > 2000 >= len(error)
    assert error.startswith("Traceback") and error.endswith("RuntimeError: engine died (exit 137)")
    assert run.data.metrics == {}
    assert run.data.params["batch_size"] == "3"


def test_one_matrix_run_holds_cells_csv_and_the_report(first_log, store, tmp_path):
    results, report, _, runs = first_log
    (run,) = matrix_runs(runs)
    names = {a.path for a in store.client().list_artifacts(run.info.run_id)}
    assert names == {"cells.csv", "report"}
    report_names = {a.path for a in store.client().list_artifacts(run.info.run_id, "report")}
    assert report_names == {"report/report.md", "report/index.html"}
    assert artifact_text(store, run.info.run_id, "cells.csv", tmp_path) == (results / "cells.csv").read_text()
    assert run.data.metrics["cells"] == 3 and run.data.metrics["cells_ok"] == 2 and run.data.metrics["cells_error"] == 1


def test_progress_lines_and_done_marker(first_log, store):
    results, _, run, _ = first_log
    lines = run.stdout.splitlines()
    assert sorted(line.split()[2] for line in lines if line.startswith("tracking: logged")) == sorted(
        ["hf/tiny-llama/bf16/bs1", "hf/tiny-llama/bf16/bs2", FAILED_CELL]
    )
    assert "3 logged, 0 updated, 0 skipped; matrix summary logged" in lines[-1]
    marker = json.loads((results / "tracking.done").read_text())
    assert marker["logged"] == 3 and marker["experiment"] == "llm-infer-bench/first"
    if store.env_uri is None:
        assert (store.cwd / "mlflow.db").is_file()  # MLflow's own default store, in the working directory


# ---- re-runs ----------------------------------------------------------------------------


def test_running_again_duplicates_nothing(store, results):
    assert track(store, results, "again").returncode == 0
    before = {run.info.run_id for run in active_runs(store, "again")}
    second = track(store, results, "again")
    assert second.returncode == 0, second.stderr[-3000:]
    assert {run.info.run_id for run in active_runs(store, "again")} == before and len(before) == 4
    assert second.stdout.count("tracking: skipped") == 3
    assert "0 logged, 0 updated, 3 skipped; matrix summary skipped" in second.stdout


def remeasure(results: Path, cell_id: str, finished_at: str, ttft_s_p50: float, new_figure: float) -> None:
    """What a re-run of one cell leaves behind: a new summary and a new row, here with a figure
    that was empty before (a datasheet MBU, once the datasheet has a number)."""
    summary_json = results / cell_id / "summary.json"
    summary = json.loads(summary_json.read_text())
    summary["finished_at"] = finished_at
    summary_json.write_text(json.dumps(summary))
    cells = pd.read_csv(results / "cells.csv", dtype=str, keep_default_na=False)
    assert (cells["mbu"] == "").all()  # no datasheet bandwidth for a CPU
    changed = cells.cell_id == cell_id
    cells.loc[changed, ["finished_at", "ttft_s_p50", "mbu"]] = [finished_at, str(ttft_s_p50), str(new_figure)]
    cells.to_csv(results / "cells.csv", index=False)


def test_a_cell_that_ran_again_replaces_its_figures(store, results):
    assert track(store, results, "changed").returncode == 0
    before = active_runs(store, "changed")
    remeasure(results, "hf/tiny-llama/bf16/bs1", "2031-01-01T00:00:00+00:00", ttft_s_p50=123.5, new_figure=0.25)
    second = track(store, results, "changed")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "tracking: updated hf/tiny-llama/bf16/bs1" in second.stdout
    assert "1 updated, 2 skipped; matrix summary updated" in second.stdout

    after = active_runs(store, "changed")
    grouped = cell_runs(after)
    assert all(len(found) == 1 for found in grouped.values()) and len(grouped) == 3
    (run,) = grouped["hf/tiny-llama/bf16/bs1"]
    assert run.data.metrics["ttft_s_p50"] == 123.5 and run.data.metrics["mbu"] == 0.25
    assert run.data.tags["finished_at"] == "2031-01-01T00:00:00+00:00"
    old_ids = run_ids(cell_runs(before))
    assert run.info.run_id not in old_ids.values()
    assert {cell: old_ids[cell] for cell in old_ids if cell != "hf/tiny-llama/bf16/bs1"} == {
        cell: run_id for cell, run_id in run_ids(grouped).items() if cell != "hf/tiny-llama/bf16/bs1"
    }
    (matrix_run,) = matrix_runs(after)
    assert matrix_run.info.run_id not in {r.info.run_id for r in matrix_runs(before)}


# ---- a tracking server that is down -----------------------------------------------------


def test_a_server_that_is_down_fails_fast_and_leaves_results_alone(results, tmp_path):
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    store = Store(tmp_path, down, down)
    before = tree_digest(results)
    marker = results / "tracking.done"
    started = time.monotonic()
    run = track(store, results, "down", "--done-marker", str(marker))
    elapsed = time.monotonic() - started
    assert run.returncode != 0
    assert elapsed < 20, elapsed
    message = [line for line in run.stderr.splitlines() if line.startswith("tracking:")]
    assert len(message) == 1, run.stderr
    assert down in message[0] and "complete" in message[0] and "again" in message[0]
    assert "tracking: logged" not in run.stdout
    assert not marker.exists() and tree_digest(results) == before


# ---- small pure pieces ------------------------------------------------------------------


def test_shorten_keeps_the_start_and_the_cause():
    text = "start " + "x" * 10_000 + " the cause"
    short = shorten(text, 500)
    assert len(short) <= 500 and short.startswith("start ") and short.endswith(" the cause")
    assert shorten("short", 500) == "short"


def test_metric_columns_are_the_schemas_metrics_only():
    cells = pd.DataFrame(
        {
            "cell_id": ["a", "b"],
            "batch_size": ["1", "2"],
            "ttft_s_p50": ["0.1", ""],
            "output_tok_s_repeats": ["[1.0, 2.0]", "[3.0]"],
            "gpu": ["", ""],
            "git_sha": ["123", "456"],  # numbers, but a param
            "mbu": ["", "0.5"],
            "not_in_the_schema": ["1", "2"],
        }
    )
    assert metric_columns(cells) == ["ttft_s_p50", "mbu"]
