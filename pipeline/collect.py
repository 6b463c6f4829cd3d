"""Cell results -> results/<matrix>/cells.csv (one row per cell) and requests.csv (per request).

    python -m pipeline.collect --cells OUT.csv --requests OUT.csv SUMMARY.json ...

Axes come from each summary's own fields, never from directory names.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from pipeline.results import FINAL, STATUSES, read_summary

AXIS_COLUMNS = ["engine", "model", "precision", "batch_size"]
LEAD_COLUMNS = ["cell_id", *AXIS_COLUMNS, "status", "error"]
META_COLUMNS = [
    "engine_version",
    "engine_precision",
    "load_s",
    "warmup_s",
    "measure_s",
    "cell_wall_s",
    "overhead_s",
    "engine_start",
    "peak_mem_bytes",
    "peak_mem_kind",
    "hardware",
    "cpu",
    "gpu",
    "git_sha",
    "finished_at",
    "input_tokens",
    "output_tokens_target",
    "num_requests",
    "repeats",
    "request_rate",
    "client_cpu_share",
    "client_saturated",
    "overrides",
]


def cell_row(summary: dict) -> dict:
    row = {key: summary.get(key) for key in LEAD_COLUMNS}
    row.update(summary.get("metrics") or {})
    row.update(summary.get("roofline") or {})
    for key in META_COLUMNS:
        if key in summary:
            row[key] = summary[key]
    hardware = summary.get("hardware") or {}
    row.update(hardware=hardware.get("name"), cpu=hardware.get("cpu"), gpu=hardware.get("gpu"))
    workload = ((summary.get("config") or {}).get("workload")) or {}
    row.update(
        input_tokens=workload.get("input_tokens"),
        output_tokens_target=workload.get("output_tokens"),
        num_requests=workload.get("num_requests"),
        repeats=workload.get("repeats"),
        request_rate=workload.get("request_rate"),
        overrides=" ".join(summary.get("overrides") or []),
    )
    client = summary.get("client") or {}  # server engines: could the client keep up?
    row.update(client_cpu_share=client.get("cpu_share_max"), client_saturated=client.get("saturated"))
    return row


def collect(summary_paths: list[Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    rows, requests = [], []
    for path in summary_paths:
        summary = read_summary(path)
        if summary is None:
            raise FileNotFoundError(f"{path}: missing or unreadable summary.json")
        rows.append(cell_row(summary))
        requests_csv = Path(path).with_name("requests.csv")
        if requests_csv.exists() and requests_csv.stat().st_size:
            frame = pd.read_csv(requests_csv)
            if len(frame):
                for position, key in enumerate(("cell_id", *AXIS_COLUMNS)):
                    frame.insert(position, key, summary[key])
                requests.append(frame)
    cells = pd.DataFrame(rows)
    ordered = LEAD_COLUMNS + [c for c in cells.columns if c not in LEAD_COLUMNS and c not in META_COLUMNS]
    cells = cells[ordered + [c for c in META_COLUMNS if c in cells.columns]]
    cells = cells.sort_values(AXIS_COLUMNS, kind="stable").reset_index(drop=True)
    per_request = pd.concat(requests, ignore_index=True) if requests else pd.DataFrame(columns=["cell_id"])
    return cells, per_request


def status_line(cells_csv: str | Path) -> str:
    """One line for the end of a run: where the results are and how the cells ended."""
    cells = pd.read_csv(cells_csv)
    counts = cells["status"].value_counts()
    parts = ", ".join(f"{counts[s]} {s}" for s in STATUSES if s in counts)
    line = f"llm-infer-bench: {len(cells)} cells ({parts}) -> {cells_csv}"
    failed = cells[~cells["status"].isin(FINAL)]
    if len(failed):
        line += "\n  failed cells are retried by running the workflow again:"
        for _, row in failed.iterrows():
            line += f"\n  - {row['cell_id']}: {row['status']}: {row['error']}"
    return line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.collect", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", required=True, type=Path, help="output: one row per cell")
    parser.add_argument("--requests", required=True, type=Path, help="output: one row per measured request")
    parser.add_argument("summaries", nargs="+", type=Path)
    args = parser.parse_args(argv)
    cells, requests = collect(args.summaries)
    for frame, path in ((cells, args.cells), (requests, args.requests)):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        frame.to_csv(tmp, index=False)
        tmp.replace(path)
    print(f"collected {len(cells)} cells, {len(requests)} requests", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
