"""cells.csv -> MLflow: one run per cell and one matrix-summary run, logged idempotently.

    python -m pipeline.tracking.mlflow_sync --matrix NAME --cells results/NAME/cells.csv --results-dir results/NAME \\
        [--report-dir reports/NAME] [--done-marker results/NAME/tracking.done]

The experiment is "llm-infer-bench/NAME". The store is MLflow's own choice: MLFLOW_TRACKING_URI
when set (e.g. http://host:5000), else MLflow's default (sqlite:///mlflow.db in the working
directory). Running it again logs nothing twice: a cell whose run is current is skipped, a
cell that re-ran gets a fresh run in place of the old one. The results on disk are only read.

This is the only module that imports mlflow; benchmark processes never import it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import signal
import sys
import tempfile
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path

import pandas as pd
import yaml

from pipeline.results.schema import AXIS, ERROR, METRIC, PARAM, TIMEOUT, Cell, columns_of
from pipeline.results.store import cell_dir, read_result, write_json
from pipeline.run.lifetime import die_with_parent

EXPERIMENT_PREFIX = "llm-infer-bench/"
PARAM_COLUMNS = columns_of(AXIS, PARAM)  # the schema says what is a param and what a metric
METRIC_COLUMNS = columns_of(METRIC)
# Tags that identify our runs; FINGERPRINT is set last, so a run without it was cut short.
KIND, CELL_ID, MATRIX, FINISHED_AT, FINGERPRINT = "kind", "cell_id", "matrix", "finished_at", "fingerprint"
CELL_KIND, MATRIX_KIND = "cell", "matrix"
ERROR_TAG_CHARS = 2000  # the full error stays in the run's summary.json artifact

# MLflow's HTTP defaults retry for minutes (7 retries, backoff x2, 120 s timeout): fine for a
# rate-limited hosted server, wrong for a step that should say "server down" at once. The
# user's own settings win.
FAIL_FAST_HTTP = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
    # its "View run at ..." lines, two per run, would drown the one progress line per cell
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}
PROBE_TIMEOUT_S = 5


class TrackingUnavailable(Exception):
    """The tracking server cannot be reached."""


@dataclass(frozen=True)
class CellRun:
    """What one cell's MLflow run holds, read from its cells.csv row and its directory."""

    cell_id: str
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]
    finished_at: str
    fingerprint: str
    run_status: str  # MLflow's: FINISHED, or FAILED for a cell that errored or timed out
    artifacts: list[Path]
    config: dict | None


# ---- reading the results (pure: no mlflow) ----------------------------------------------


def read_cells(path: Path) -> pd.DataFrame:
    """Every value as its text in the file ("" when empty), so params and fingerprints are exact."""
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def metric_columns(cells: pd.DataFrame) -> list[str]:
    """The schema's metric columns that this cells.csv has."""
    return [column for column in METRIC_COLUMNS if column in cells.columns]


def finite_metrics(row: dict[str, str], columns: list[str]) -> dict[str, float]:
    """NaN/inf are skipped: an unmeasured figure is absent, never zero (and JSON cannot carry inf)."""
    metrics = {}
    for column in columns:
        try:
            value = float(row[column])
        except ValueError:
            continue
        if math.isfinite(value):
            metrics[column] = value
    return metrics


def shorten(text: str, limit: int = ERROR_TAG_CHARS) -> str:
    """Head and tail of a long text: tracebacks put the cause last, the context first."""
    if len(text) <= limit:
        return text
    head = limit // 4
    tail = limit - head - 40
    return f"{text[:head]} ... [{len(text) - head - tail} chars cut] ... {text[-tail:]}"


def fingerprint(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(hashlib.sha256(part).digest())
    return digest.hexdigest()[:16]


def row_fingerprint(row: dict[str, str], finished_at: str) -> str:
    """The row as well as finished_at, so that a figure collect fills in later (e.g. mbu) reaches
    the runs without re-measuring; empty values are left out, so a new column that is empty
    for a cell does not make that cell's run stale."""
    present = {key: value for key, value in row.items() if value != ""}
    return fingerprint(finished_at.encode(), json.dumps(present, sort_keys=True).encode())


def cell_run(row: dict[str, str], results_dir: Path, matrix: str, metrics: list[str]) -> CellRun:
    cell_id = row["cell_id"]
    directory = cell_dir(results_dir, Cell.from_row(row))
    result = read_result(directory / "summary.json")
    finished_at = str((result and result.finished_at) or row.get("finished_at", ""))
    status = row["status"]
    tags = {KIND: CELL_KIND, MATRIX: matrix, CELL_ID: cell_id, "status": status, FINISHED_AT: finished_at}
    if row.get("error"):
        tags["error"] = shorten(row["error"])
    return CellRun(
        cell_id=cell_id,
        params={column: row[column] for column in PARAM_COLUMNS if row.get(column)},  # absent, not ""
        metrics=finite_metrics(row, metrics),
        tags=tags,
        finished_at=finished_at,
        fingerprint=row_fingerprint(row, finished_at),
        run_status="FAILED" if status in (ERROR, TIMEOUT) else "FINISHED",
        artifacts=[p for p in (directory / "requests.csv", directory / "summary.json") if p.is_file()],
        config=result.config if result else None,
    )


def report_files(report_dir: Path | None) -> list[Path]:
    if report_dir is None or not report_dir.is_dir():
        return []
    return sorted(p for p in report_dir.rglob("*") if p.is_file())


def matrix_fingerprint(cells_csv: Path, report_dir: Path | None) -> str:
    parts = [cells_csv.read_bytes()]
    for path in report_files(report_dir):
        parts += [str(path.relative_to(report_dir)).encode(), path.read_bytes()]
    return fingerprint(*parts)


def timestamp_ms(iso: str) -> int:
    """A cell's metrics carry the time it was measured, not the time it was logged."""
    try:
        return int(datetime.fromisoformat(iso).timestamp() * 1000)
    except (TypeError, ValueError):
        return int(datetime.now().timestamp() * 1000)


# ---- the tracking store -----------------------------------------------------------------


def check_reachable(uri: str) -> None:
    """One quick request before any logging, so a server that is down costs seconds, not retries.

    Any HTTP answer (even 401/404 from a proxy) means something is listening; the real calls
    report anything else. Local stores (sqlite, files) need no check.
    """
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=PROBE_TIMEOUT_S):
            pass
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise TrackingUnavailable(f"cannot reach the MLflow tracking server at {uri} ({reason})") from error


def experiment_id(client, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return client.create_experiment(name)
    if experiment.lifecycle_stage == "deleted":  # a deleted name cannot be created again
        client.restore_experiment(experiment.experiment_id)
    return experiment.experiment_id


def runs_by_key(client, experiment: str, kind: str, key_tag: str) -> dict[str, list]:
    """Our active runs of one kind, grouped by their identifying tag (one query per page)."""
    grouped: dict[str, list] = {}
    token = None
    while True:
        page = client.search_runs(
            [experiment], filter_string=f"tags.{KIND} = '{kind}'", max_results=1000, page_token=token
        )
        for run in page:
            grouped.setdefault(run.data.tags.get(key_tag, ""), []).append(run)
        token = page.token
        if not token:
            return grouped


def current_run(runs: list, wanted_fingerprint: str):
    return next((r for r in runs if r.data.tags.get(FINGERPRINT) == wanted_fingerprint), None)


def log_cell(client, experiment: str, cell: CellRun) -> str:
    from mlflow.entities import Metric, Param, RunTag

    run = client.create_run(experiment, run_name=cell.cell_id, tags=cell.tags)
    run_id = run.info.run_id
    at = timestamp_ms(cell.finished_at)
    client.log_batch(
        run_id,
        metrics=[Metric(key, value, at, 0) for key, value in cell.metrics.items()],
        params=[Param(key, value) for key, value in cell.params.items()],
    )
    for path in cell.artifacts:
        client.log_artifact(run_id, str(path))
    if cell.config is not None:
        with tempfile.TemporaryDirectory() as scratch:
            config_yaml = Path(scratch) / "config.yaml"
            config_yaml.write_text(yaml.safe_dump(cell.config, sort_keys=False))
            client.log_artifact(run_id, str(config_yaml))
    client.set_terminated(run_id, status=cell.run_status)
    client.log_batch(run_id, tags=[RunTag(FINGERPRINT, cell.fingerprint)])
    return run_id


def log_matrix(client, experiment: str, matrix: str, cells_csv: Path, report_dir: Path | None, digest: str) -> str:
    from mlflow.entities import Metric, RunTag

    cells = read_cells(cells_csv)
    counts = Counter(cells["status"])
    run = client.create_run(experiment, run_name=f"matrix {matrix}", tags={KIND: MATRIX_KIND, MATRIX: matrix})
    run_id = run.info.run_id
    now = timestamp_ms("")
    metrics = {"cells": len(cells), **{f"cells_{status}": n for status, n in counts.items()}}
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])
    client.log_artifact(run_id, str(cells_csv))
    if report_files(report_dir):
        client.log_artifacts(run_id, str(report_dir), artifact_path="report")
    client.set_terminated(run_id)
    client.log_batch(run_id, tags=[RunTag(FINGERPRINT, digest)])
    return run_id


def replace_stale(client, runs: list, keep_id: str) -> None:
    """Params are immutable in MLflow, so a re-measured cell gets a new run and the old one is
    deleted (soft: `mlflow gc` purges it). The alternative, one run with metric history and
    changed params moved to tags, would mix two measurements in one run and keep stale
    artifacts. The new run is complete before the old one goes, so nothing is ever missing;
    deleting every other run also heals duplicates and runs cut short."""
    for run in runs:
        if run.info.run_id != keep_id:
            client.delete_run(run.info.run_id)


def sync(client, runs: list, wanted_fingerprint: str, log_run) -> str:
    """Keep the run that is current, else log a new one; either way, drop every other run."""
    keep = current_run(runs, wanted_fingerprint)
    replace_stale(client, runs, keep.info.run_id if keep else log_run())
    if keep:
        return "skipped"
    return "updated" if runs else "logged"


def _say(line: str) -> None:
    print(line, flush=True)  # one line per run as it happens: the log shows how far an interrupted step got


def track(matrix: str, cells_csv: Path, results_dir: Path, report_dir: Path | None = None, say=_say) -> dict:
    """Log every cell of the matrix and its summary run; returns the URI and what was done."""
    for key, value in FAIL_FAST_HTTP.items():
        os.environ.setdefault(key, value)
    import mlflow
    from mlflow import MlflowClient

    uri = mlflow.get_tracking_uri()
    check_reachable(uri)
    client = MlflowClient(uri)
    experiment = experiment_id(client, f"{EXPERIMENT_PREFIX}{matrix}")

    cells = read_cells(cells_csv)
    metrics = metric_columns(cells)
    existing = runs_by_key(client, experiment, CELL_KIND, CELL_ID)
    counts = Counter()
    for row in cells.to_dict("records"):
        cell = cell_run(row, results_dir, matrix, metrics)
        action = sync(
            client, existing.get(cell.cell_id, []), cell.fingerprint, partial(log_cell, client, experiment, cell)
        )
        counts[action] += 1
        say(f"tracking: {action:7} {cell.cell_id} ({cell.tags['status']})")

    digest = matrix_fingerprint(cells_csv, report_dir)
    matrix_runs = runs_by_key(client, experiment, MATRIX_KIND, MATRIX).get(matrix, [])
    log_this_matrix = partial(log_matrix, client, experiment, matrix, cells_csv, report_dir, digest)
    matrix_action = sync(client, matrix_runs, digest, log_this_matrix)
    say(
        f"tracking: {len(cells)} cells -> experiment {EXPERIMENT_PREFIX}{matrix} at {uri}: "
        f"{counts['logged']} logged, {counts['updated']} updated, {counts['skipped']} skipped; "
        f"matrix summary {matrix_action}"
    )
    return {"tracking_uri": uri, **{a: counts[a] for a in ("logged", "updated", "skipped")}, "matrix": matrix_action}


def tracking_uri_for_messages() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db (MLflow's default)"


def main(argv: list[str] | None = None) -> int:
    parent = os.getppid()
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.tracking.mlflow_sync", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--matrix", required=True, help="matrix name: the experiment is llm-infer-bench/NAME")
    parser.add_argument("--cells", required=True, type=Path, help="results/NAME/cells.csv")
    parser.add_argument("--results-dir", required=True, type=Path, help="results/NAME (cell directories below it)")
    parser.add_argument("--report-dir", type=Path, help="rendered report files, logged with the matrix run if present")
    parser.add_argument("--done-marker", type=Path, help="written only when everything was logged")
    args = parser.parse_args(argv)
    # Snakemake killed outright: stop too (an interrupted logging is redone, never duplicated)
    die_with_parent(signal.SIGTERM, expected_parent=parent)
    if not args.cells.is_file():
        parser.error(f"{args.cells}: no such file (run the workflow first)")

    if args.done_marker is not None:
        args.done_marker.unlink(missing_ok=True)  # ours, and it must never outlive a failed attempt
    try:
        counts = track(args.matrix, args.cells, args.results_dir, args.report_dir)
    except Exception as error:  # whatever failed, the results are intact: say so, plainly
        uri = tracking_uri_for_messages()
        cause = str(error) if isinstance(error, TrackingUnavailable) else f"MLflow logging to {uri} failed: {error!r}"
        print(
            f"tracking: {cause.splitlines()[0] if cause else type(error).__name__}. "
            f"The benchmark results in {args.results_dir} are complete and were not changed; "
            "running the workflow again logs them.",
            file=sys.stderr,
        )
        return 1
    if args.done_marker is not None:
        write_json(args.done_marker, {"experiment": f"{EXPERIMENT_PREFIX}{args.matrix}", **counts})
    return 0


if __name__ == "__main__":
    sys.exit(main())
