"""cells.csv + requests.csv -> a comparison report: reports/<matrix>/index.html and report.md.

    python -m pipeline.report --cells results/NAME/cells.csv --requests results/NAME/requests.csv \\
        --matrix-file conf/matrix/NAME.yaml --out reports/NAME

index.html is self-contained (inline styles, plots as SVG data URIs: it opens offline) and
starts with a verdict in plain words: the fastest single stream, the most throughput, and
where the answer changes with batch size, each stated only when the gap exceeds the noise.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

import jinja2
import pandas as pd

from pipeline.report.markdown import render_markdown
from pipeline.report.plots import all_plots
from pipeline.report.tables import (
    FIDELITY_HEADERS,
    FIDELITY_NOTE,
    NOISE_HEADERS,
    NOISE_RULE,
    SEARCH_HEADERS,
    cell_columns,
    cell_rows,
    environment_rows,
    failure_rows,
    fidelity_rows,
    flagged_rows,
    noise_rows,
    search_rows,
    starts_note,
)
from pipeline.report.verdict import drift_warnings, noise_warnings, verdict
from pipeline.results.schema import LEAD_COLUMNS
from pipeline.results.store import atomic_write

TEMPLATES = Path(__file__).with_name("templates")
REQUIRED_COLUMNS = LEAD_COLUMNS
# Only what the report reads of requests.csv (which carries every chunk gap, itl_s, by far its largest column).
REQUEST_COLUMNS_READ = {"cell_id", "success", "ttft_s"}


def load_cells(path: Path) -> pd.DataFrame:
    cells = pd.read_csv(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in cells]
    if missing:
        raise ValueError(
            f"{path}: not a cells.csv from pipeline.analysis.collect (missing columns: {', '.join(missing)})"
        )
    return cells


def load_requests(path: Path | None) -> pd.DataFrame:
    if path is None or not path.exists() or path.stat().st_size == 0:
        return pd.DataFrame(columns=sorted(REQUEST_COLUMNS_READ))
    return pd.read_csv(path, usecols=lambda column: column in REQUEST_COLUMNS_READ)


def _status_counts(cells: pd.DataFrame) -> str:
    return ", ".join(f"{n} {status}" for status, n in cells["status"].value_counts().items()) or "none"


def load_search(path: Path | None) -> pd.DataFrame | None:
    """search.csv (the load searches' probes), or None where there is none."""
    if path is None or not path.exists() or path.stat().st_size == 0:
        return None
    search = pd.read_csv(path)
    return None if search.empty else search


def build_context(
    cells: pd.DataFrame,
    requests: pd.DataFrame,
    matrix_name: str,
    matrix_text: str,
    search: pd.DataFrame | None = None,
) -> dict:
    """Everything both renderings show, computed once."""
    columns = cell_columns(cells)
    ok = cells[cells["status"] == "ok"]
    spreads = ok["tpot_s_p50_spread"] if "tpot_s_p50_spread" in ok else pd.Series(dtype=float)
    repeats = sorted({str(r) for r in cells.get("repeats", pd.Series(dtype=object)).dropna()})  # the setting
    return {
        "title": f"llm-infer-bench report: {matrix_name}",
        "generated_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cell_count": len(cells),
        "status_counts": _status_counts(cells),
        "verdict": verdict(cells),
        "multiple_models": cells["model"].nunique() > 1,
        "plots": all_plots(cells, requests, search),
        "columns": columns,
        "rows": cell_rows(cells, columns),
        "failures": failure_rows(cells),
        "flagged": flagged_rows(cells),
        "search_rows": search_rows(cells),
        "search_headers": SEARCH_HEADERS,
        "fidelity_rows": fidelity_rows(cells),
        "fidelity_headers": FIDELITY_HEADERS,
        "fidelity_note": FIDELITY_NOTE,
        "repeats": ", ".join(repeats) or "unknown",
        "noise_warnings": [w.text for w in noise_warnings(cells)] + drift_warnings(cells),
        "noise_unknown": not ok.empty and spreads.isna().all(),
        "noise_rows": noise_rows(cells),
        "noise_headers": NOISE_HEADERS,
        "noise_rule": NOISE_RULE + starts_note(ok),
        "environment": environment_rows(cells),
        "matrix_name": matrix_name,
        "matrix_text": matrix_text,
    }


def render_html(context: dict) -> str:
    # autoescape=True for every template, whatever its file name: all data is escaped by default.
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, undefined=jinja2.StrictUndefined
    )
    return environment.get_template("report.html.j2").render(**context)


def write_report(
    cells_csv: Path, requests_csv: Path | None, matrix_file: Path, out_dir: Path, search_csv: Path | None = None
) -> Path:
    cells = load_cells(cells_csv)
    requests = load_requests(requests_csv)
    matrix_text = matrix_file.read_text(encoding="utf-8")
    context = build_context(cells, requests, matrix_file.stem, matrix_text, load_search(search_csv))
    atomic_write(out_dir / "report.md", render_markdown(context))
    atomic_write(out_dir / "index.html", render_html(context))
    return out_dir / "index.html"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.report",
        description=__doc__,
        epilog="Both files are written atomically (a temporary file, then a rename); OUT is created if needed.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--cells", required=True, type=Path, help="cells.csv from pipeline.analysis.collect (one row per cell)"
    )
    parser.add_argument(
        "--requests", type=Path, help="requests.csv from pipeline.analysis.collect; without it, no TTFT distribution"
    )
    parser.add_argument("--search", type=Path, help="search.csv from pipeline.analysis.collect (load-search probes)")
    parser.add_argument(
        "--matrix-file", required=True, type=Path, help="the matrix yaml the cells came from (shown in the report)"
    )
    parser.add_argument("--out", required=True, type=Path, help="output directory, e.g. reports/NAME")
    args = parser.parse_args(argv)
    try:
        index = write_report(args.cells, args.requests, args.matrix_file, args.out, args.search)
    except (OSError, ValueError) as error:
        print(f"pipeline.report: {error}", file=sys.stderr)
        return 1
    print(f"report -> {index}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
