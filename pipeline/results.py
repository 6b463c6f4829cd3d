"""Where a cell's results live, how they are written (atomically) and read back."""

from __future__ import annotations

import csv
import json
import os
import tempfile
from pathlib import Path

from pipeline.planner import Cell

OK, UNSUPPORTED, ERROR, TIMEOUT = "ok", "unsupported", "error", "timeout"
STATUSES = (OK, UNSUPPORTED, ERROR, TIMEOUT)
FINAL = (OK, UNSUPPORTED)  # re-running the workflow retries every other status

REQUEST_COLUMNS = (
    "repeat",
    "wave",
    "request",
    "success",
    "error",
    "input_tokens",
    "output_tokens",
    "output_tokens_retok",
    "chunks",
    "tokens_per_chunk",
    "ttft_s",
    "tpot_s",
    "e2e_s",
    "itl_s",
    "words",
    "t_send",
    "t_end",
)


def cell_dir(results_dir: str | Path, cell: Cell) -> Path:
    return Path(results_dir) / cell.engine / cell.model / cell.precision / f"bs{cell.batch_size}"


def summary_path(results_dir: str | Path, cell: Cell) -> Path:
    return cell_dir(results_dir, cell) / "summary.json"


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as handle:
            write(handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, payload: dict) -> None:
    _atomic_write(path, lambda h: json.dump(payload, h, indent=2, default=str))


def write_cell(out_dir: str | Path, summary: dict, records: list[dict]) -> None:
    """requests.csv first, summary.json last: a summary means the cell is complete."""
    out_dir = Path(out_dir)

    def write_requests(handle):
        writer = csv.DictWriter(handle, fieldnames=REQUEST_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)

    _atomic_write(out_dir / "requests.csv", write_requests)
    write_json(out_dir / "summary.json", summary)


def read_summary(path: Path) -> dict | None:
    """The summary, or None if absent or unreadable (then the cell is simply re-run)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
