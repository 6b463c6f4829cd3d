"""Where a cell's results live, how they are written (atomically) and read back."""

from __future__ import annotations

import csv
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from pipeline.results.schema import REQUEST_COLUMNS, Cell, CellResult


FIDELITY_FILE = "fidelity.json"  # an instance's fidelity pass, beside its cells' directories


def cell_dir(results_dir: str | Path, cell: Cell) -> Path:
    return Path(results_dir) / cell.engine / cell.model / cell.precision / f"bs{cell.batch_size}"


def summary_path(results_dir: str | Path, cell: Cell) -> Path:
    return cell_dir(results_dir, cell) / "summary.json"


def atomic_write(path: str | Path, write: Callable[[IO[str]], None] | str) -> None:
    """Write a file so that it either exists complete or not at all (a temp file, then rename).

    `write` is the text itself, or a function that writes into the open handle.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, 0o644)  # mkstemp's 0600 would make a published report unreadable to a web server
    try:
        with os.fdopen(fd, "w", newline="") as handle:
            if isinstance(write, str):
                handle.write(write)
            else:
                write(handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, payload: dict) -> None:
    atomic_write(path, lambda h: json.dump(payload, h, indent=2, default=str))


def write_cell(out_dir: str | Path, result: CellResult, records: list[dict]) -> None:
    """requests.csv first, summary.json last: a summary means the cell is complete."""
    out_dir = Path(out_dir)

    def write_requests(handle):
        writer = csv.DictWriter(handle, fieldnames=REQUEST_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)

    atomic_write(out_dir / "requests.csv", write_requests)
    write_json(out_dir / "summary.json", result.to_dict())


def read_result(path: str | Path) -> CellResult | None:
    """The cell's result, or None if absent, unreadable or of another schema version (then the
    cell is simply measured again)."""
    try:
        values = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return CellResult.from_dict(values) if isinstance(values, dict) else None
