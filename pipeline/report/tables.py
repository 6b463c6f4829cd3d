"""The report's tables as rows of display strings, shared by the HTML and Markdown renderings.

A figure that was not measured shows as a dash, never as 0 (the glossary's rule).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from pipeline.report.verdict import ROOFLINE_FLAG, as_number, cell_trend, flag_text, searched_instances, significant

MISSING = "–"


def text(value) -> str:
    return MISSING if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def integer(value) -> str:
    figure = as_number(value)
    return MISSING if figure is None else str(int(figure))


def number(value) -> str:
    figure = as_number(value)
    return MISSING if figure is None else significant(figure)


def milliseconds(seconds) -> str:
    figure = as_number(seconds)
    return MISSING if figure is None else significant(figure * 1000)


def percent(value) -> str:
    figure = as_number(value)
    return MISSING if figure is None else f"{figure * 100:.1f}%"


@dataclass(frozen=True)
class Column:
    header: str
    key: str
    show: Callable[[object], str]
    numeric: bool = True


CELL_COLUMNS = [
    Column("engine", "engine", text, numeric=False),
    Column("model", "model", text, numeric=False),
    Column("precision", "precision", text, numeric=False),
    Column("batch", "batch_size", integer),
    Column("status", "status_label", text, numeric=False),
    Column("TTFT p50 ms", "ttft_s_p50", milliseconds),
    Column("TTFT p99 ms", "ttft_s_p99", milliseconds),
    Column("TPOT p50 ms", "tpot_s_p50", milliseconds),
    Column("TPOT p99 ms", "tpot_s_p99", milliseconds),
    Column("E2E p50 ms", "e2e_s_p50", milliseconds),
    Column("E2E p99 ms", "e2e_s_p99", milliseconds),
    Column("output tok/s", "output_tok_s", number),
    Column("ms / 10 words", "ms_per_10_words", number),
    Column("TPOT p50 95% interval ms", "tpot_s_p50_interval", text, numeric=False),
    Column("repeats", "repeats_kept", integer),
]
# Shown only where cells.csv has them with at least one value (a CPU has no datasheet peak, for one).
ROOFLINE_COLUMNS = [
    Column("MBU (measured peak)", "mbu_measured", percent),
    Column("MBU (datasheet)", "mbu", percent),
    Column("TPOT floor ms (measured peak)", "tpot_floor_measured_s", milliseconds),
    Column("TPOT floor ms (datasheet)", "tpot_floor_s", milliseconds),
    Column("overhead ms/step", "overhead_per_step_s", milliseconds),
    Column("bound", "bound", text, numeric=False),
]


# Shown where the matrix has an SLO (workload.slo).
SLO_COLUMNS = [
    Column("SLO attainment", "slo_attainment", percent),
    Column("goodput tok/s", "goodput_tok_s", number),
    Column("SLO met", "slo_met", text, numeric=False),
]


def cell_columns(cells: pd.DataFrame) -> list[Column]:
    optional = [*ROOFLINE_COLUMNS, *SLO_COLUMNS]
    return CELL_COLUMNS + [c for c in optional if c.key in cells and cells[c.key].notna().any()]


def status_label(row: pd.Series) -> str:
    status = text(row.get("status"))
    return f"{status}, flagged" if status == "ok" and flag_text(row.get(ROOFLINE_FLAG)) else status


def notes(row: pd.Series) -> str:
    """Why a cell is not a plain success: its error, its roofline flag, its failed requests."""
    found = []
    if row.get("status") != "ok" and text(row.get("error")) != MISSING:
        found.append(str(row["error"]))
    flag = flag_text(row.get(ROOFLINE_FLAG))
    if flag:
        found.append(f"roofline: {flag}")
    failed = as_number(row.get("requests_failed"))
    if failed:
        found.append(f"{int(failed)} of {integer(row.get('requests'))} requests failed")
    return "; ".join(found)


@dataclass(frozen=True)
class TableRow:
    cell_id: str
    status: str  # ok, unsupported, error, timeout (drives the row's style)
    flagged: bool
    values: list[str]
    notes: str


def cell_rows(cells: pd.DataFrame, columns: list[Column]) -> list[TableRow]:
    rows = []
    for _, row in cells.iterrows():
        row["status_label"] = status_label(row)
        row["tpot_s_p50_interval"] = interval_text(row, "tpot_s_p50", milliseconds)
        rows.append(
            TableRow(
                cell_id=text(row.get("cell_id")),
                status=text(row.get("status")),
                flagged=bool(flag_text(row.get(ROOFLINE_FLAG))),
                values=[column.show(row.get(column.key)) for column in columns],
                notes=notes(row),
            )
        )
    return rows


def failure_rows(cells: pd.DataFrame) -> list[dict]:
    failed = cells[cells["status"] != "ok"]
    return [
        {"cell_id": text(row["cell_id"]), "status": text(row["status"]), "reason": text(row.get("error"))}
        for _, row in failed.iterrows()
    ]


SEARCH_HEADERS = (
    ("configuration", "config"),
    ("over", "over"),
    ("most load within the SLO", "found"),
    ("missed at", "missed"),
    ("probes", "probes"),
    ("note", "reason"),
)


def search_rows(cells: pd.DataFrame) -> list[dict]:
    """One row per engine instance's load search (workload.search)."""
    rows = []
    for _, row in searched_instances(cells).iterrows():
        over = "rate" if pd.notna(row.get("slo_max_rate")) else "concurrency"
        found = row.get("slo_max_rate") if over == "rate" else row.get("slo_max_concurrency")
        rows.append(
            {
                "config": text(f"{row['model']} {row['engine']} {row['precision']}"),
                "over": over,
                "found": text(f"{found:g}") if pd.notna(found) else "none",
                "missed": text(f"{row['slo_search_missed_at']:g}") if pd.notna(row["slo_search_missed_at"]) else "-",
                "probes": text(f"{row['slo_search_probes']:g}"),
                "reason": text(row.get("slo_search_reason")) if pd.notna(row.get("slo_search_reason")) else "",
            }
        )
    return rows


FIDELITY_NOTE = (
    "Once per engine instance, after its speed cells: teacher-forced next-token distributions on fixed prompts, "
    "against the model's hf fp32 reference. KL: over the reference's top-k tokens the engine reported plus one "
    "bucket for the rest (a lower bound of the exact KL; pipeline/analysis/fidelity.py). Brackets: 95% intervals "
    "(bootstrap over prompts, then positions)."
)
FIDELITY_HEADERS = (
    ("configuration", "config"),
    ("status", "status"),
    ("KL mean (nats)", "kl"),
    ("KL p99", "kl_p99"),
    ("top-1 agreement", "top1"),
    ("top-5 overlap", "top5"),
    ("log p(ref top) - ref", "delta"),
    ("positions", "positions"),
    ("note", "note"),
)


def _scientific(value) -> str:
    return f"{float(value):.2g}" if pd.notna(value) else ""


def fidelity_rows(cells: pd.DataFrame) -> list[dict]:
    """One row per engine instance's fidelity pass, or why there is none."""
    if "fidelity_status" not in cells:
        return []
    ok = cells[(cells["status"] == "ok") & cells["fidelity_status"].notna() & (cells["fidelity_status"] != "off")]
    rows = []
    for _, row in ok.drop_duplicates(["model", "engine", "precision"]).iterrows():
        measured = row["fidelity_status"] in ("ok", "failed")
        interval = f" [{_scientific(row['fidelity_kl_mean_low'])}-{_scientific(row['fidelity_kl_mean_high'])}]"
        top1 = ""
        if measured:
            low, high = percent(row["fidelity_top1_low"]), percent(row["fidelity_top1_high"])
            top1 = f"{percent(row['fidelity_top1'])} [{low}-{high}]"
        rows.append(
            {
                "config": text(f"{row['model']} {row['engine']} {row['precision']}"),
                "status": text(row["fidelity_status"]),
                "kl": text(_scientific(row["fidelity_kl_mean"]) + interval) if measured else "",
                "kl_p99": text(_scientific(row["fidelity_kl_p99"])) if measured else "",
                "top1": text(top1),
                "top5": percent(row["fidelity_top5_overlap"]) if measured else "",
                "delta": text(_scientific(row["fidelity_ref_logprob_delta"])) if measured else "",
                "positions": integer(row["fidelity_positions"]) if measured else "",
                "note": text(row["fidelity_reason"]) if pd.notna(row.get("fidelity_reason")) else "",
            }
        )
    return rows


def flagged_rows(cells: pd.DataFrame) -> list[dict]:
    if ROOFLINE_FLAG not in cells:
        return []
    return [
        {"cell_id": text(row["cell_id"]), "flag": flag_text(row[ROOFLINE_FLAG])}
        for _, row in cells.iterrows()
        if flag_text(row[ROOFLINE_FLAG])
    ]


def _repeat_values(raw) -> list[float]:
    try:
        values = json.loads(raw) if isinstance(raw, str) else []
    except ValueError:
        return []
    return [float(v) for v in values if as_number(v) is not None]


def interval_text(row, name: str, show) -> str:
    """'23.1-23.8' from <name>_low and <name>_high; a dash where unknown."""
    low, high = as_number(row.get(f"{name}_low")), as_number(row.get(f"{name}_high"))
    return MISSING if low is None or high is None else f"{show(low)}-{show(high)}"


def trend_text(row) -> str:
    """'-45% (p 0.03)': Sen's change of TPOT over the cell's repeats and Mann-Kendall's p; a dash
    with fewer than 5 repeats."""
    found = cell_trend(row)
    return MISSING if found is None else f"{found[0]:+.0%} (p {found[1]:.2g})"


def noise_rows(cells: pd.DataFrame) -> list[dict]:
    """Per cell: how the measurement settled, the per-repeat figures and intervals, the host's noise."""
    ok = cells[cells["status"] == "ok"]
    rows = []
    for _, row in ok.iterrows():
        tpots = _repeat_values(row.get("tpot_s_p50_repeats"))
        throughputs = _repeat_values(row.get("output_tok_s_repeats"))
        discarded = as_number(row.get("repeats_discarded"))
        steady = row.get("warmup_steady")
        rows.append(
            {
                "cell_id": text(row["cell_id"]),
                "warmup": integer(row.get("warmup_rounds"))
                + ("" if str(steady).lower() != "false" else " (not steady)"),
                "repeats": (str(len(tpots)) if tpots else integer(row.get("repeats_kept")))
                + (f" (+{int(discarded)} discarded)" if discarded else "")
                + (f", {row['repeats_stop']}" if isinstance(row.get("repeats_stop"), str) else ""),
                "tpot_per_repeat": ", ".join(significant(v * 1000) for v in tpots) or MISSING,
                "tpot_interval": interval_text(row, "tpot_s_p50", milliseconds),
                "tpot_trend": trend_text(row),
                "per_repeat": ", ".join(f"{v:.3g}" for v in throughputs) or MISSING,
                "throughput_interval": interval_text(row, "output_tok_s", number),
                "steal": percent(row.get("host_steal_share")),
                "others": percent(row.get("host_other_busy_share")),
                "load": number(row.get("host_load_1m")),
            }
        )
    return rows


NOISE_RULE = (
    "Warm-up runs until two rounds in a row agree on step time (within workload.steady_tolerance); a first "
    "repeat outside the others' range is discarded and run again. Each headline figure has a 95% interval "
    "(a two-level bootstrap over repeats and the requests within them, widened for few repeats); a TPOT that "
    "drifts over a cell's repeats in time order (Mann-Kendall p < 0.05 and a change of at least 10%) is named "
    "below. Two configurations are ranked only when their intervals do not overlap."
)


def starts_note(ok: pd.DataFrame) -> str:
    """How many engine processes the intervals cover, and what one alone cannot show."""
    starts = sorted({int(v) for v in ok.get("instance_starts", pd.Series(dtype=float)).dropna()})
    if not starts:
        return ""
    if starts == [1]:
        return (
            " Each configuration was measured by one engine process, so the intervals cover the noise within "
            "a process only: on a shared host a fresh process of the same configuration can differ more "
            "(workload.instance_starts measures several)."
        )
    counts = ", ".join(map(str, starts))
    return f" Each configuration was measured by {counts} fresh engine processes, the top level of its intervals."


NOISE_HEADERS = [
    ("cell", "cell_id"),
    ("warm-up rounds", "warmup"),
    ("repeats", "repeats"),
    ("TPOT p50 ms per repeat", "tpot_per_repeat"),
    ("TPOT p50 95% interval ms", "tpot_interval"),
    ("TPOT trend over the repeats", "tpot_trend"),
    ("output tok/s per repeat", "per_repeat"),
    ("output tok/s 95% interval", "throughput_interval"),
    ("CPU stolen", "steal"),
    ("CPU used by others", "others"),
    ("load (1 min)", "load"),
]


def _distinct(cells: pd.DataFrame, column: str) -> str:
    if column not in cells:
        return MISSING
    # pandas reads an integer column with gaps as floats: 64.0 is shown as 64.
    shown = (str(int(v)) if isinstance(v, float) and v.is_integer() else str(v) for v in cells[column].dropna())
    values = sorted({v for v in shown if v.strip()})
    return ", ".join(values) or MISSING


def _engine_versions(cells: pd.DataFrame) -> str:
    if "engine_version" not in cells:
        return MISSING
    pairs = cells.dropna(subset=["engine_version"])[["engine", "engine_version"]].drop_duplicates()
    return ", ".join(f"{e} {v}" for e, v in sorted(pairs.astype(str).itertuples(index=False))) or MISSING


def _period(cells: pd.DataFrame) -> str:
    if "finished_at" not in cells or cells["finished_at"].dropna().empty:
        return MISSING
    times = sorted(cells["finished_at"].dropna().astype(str))
    return times[0] if times[0] == times[-1] else f"{times[0]} to {times[-1]}"


def environment_rows(cells: pd.DataFrame) -> list[tuple[str, str]]:
    return [
        ("hardware", _distinct(cells, "hardware")),
        ("CPU", _distinct(cells, "cpu")),
        ("GPU", _distinct(cells, "gpu")),
        ("engine versions", _engine_versions(cells)),
        ("git sha", _distinct(cells, "git_sha")),
        ("cells finished", _period(cells)),
        ("input tokens", _distinct(cells, "input_tokens")),
        ("output tokens", _distinct(cells, "output_tokens_target")),
        ("requests per repeat", _distinct(cells, "num_requests")),
        ("repeats", _distinct(cells, "repeats")),
        ("overrides", _distinct(cells, "overrides")),
    ]
