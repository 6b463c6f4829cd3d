"""Cell results -> results/<matrix>/cells.csv (one row per cell), requests.csv (per request) and
search.csv (per load-search probe).

    python -m pipeline.analysis.collect --cells OUT.csv --requests OUT.csv [--search OUT.csv] \
        [--hardware NAME] SUMMARY.json ...

Everything derived is computed here, from what the jobs measured: per-cell statistics from
each cell's requests.csv, the datasheet entry for the machine the cell ran on (conf/hardware/
as it is now), and the roofline. Change any of them and this step re-runs; no engine does.
Axes come from each result's own fields, never from directory names.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import pandas as pd

from pipeline.analysis.diagnosis import diagnose
from pipeline.analysis.fidelity import fidelity_columns
from pipeline.analysis.metrics import summarize
from pipeline.analysis.roofline import cell_roofline, select_hardware
from pipeline.config import SLO_TARGETS, CellConfig, ConfigError, FidelityConfig, HardwareConfig, SloConfig
from pipeline.plan.conf import CONF_DIR, ConfTree
from pipeline.results.schema import AXES, CELL_COLUMN_NAMES, ERROR, FINAL, OK, STATUSES, CellResult
from pipeline.results.store import atomic_write, read_result
from pipeline.stats import slo_figures


def read_records(requests_csv: Path) -> list[dict]:
    """requests.csv -> records as the job wrote them (empty cells as None)."""
    if not requests_csv.exists() or not requests_csv.stat().st_size:
        return []
    frame = pd.read_csv(requests_csv, dtype={"itl_s": str, "error": str})
    records = frame.astype(object).where(frame.notna(), None).to_dict("records")
    for record in records:
        record["success"] = str(record["success"]).lower() == "true"
        record["discarded"] = str(record.get("discarded")).lower() == "true"
        record["itl_s"] = record["itl_s"] or "[]"
    return records


def _on_cpu(result: CellResult) -> bool:
    """Whether the engine ran on the CPU: as it recorded, else its probe's device, else no GPU."""
    if result.engine_device in ("cpu", "gpu"):
        return result.engine_device == "cpu"
    device = (result.peaks or {}).get("device")
    return device == "cpu" if device else not (result.hardware or {}).get("gpu")


def roofline_columns(
    result: CellResult, metrics: dict, requested: HardwareConfig, entries: list[HardwareConfig]
) -> dict:
    """The roofline of one cell, or empty columns with the reason it cannot be computed."""
    if result.config is None:
        return {"roofline_missing": "the cell has no valid configuration"}
    try:
        cfg = CellConfig.from_dict(result.config)
        # a CPU cell on a GPU machine is judged against the CPU, not the GPU's datasheet
        detected = {**result.hardware, "gpu": None} if _on_cpu(result) else result.hardware
        entry = select_hardware(requested, detected, entries)
        return cell_roofline(
            cfg,
            entry,
            result.peaks,
            metrics.get("tpot_s_p50"),
            metrics.get("ttft_s_p50"),
            weights=result.weights,
            architecture=result.architecture,
            cell_probes=result.cell_probes,
            tpot_interval=(metrics.get("tpot_s_p50_low"), metrics.get("tpot_s_p50_high")),
            cache_bytes=(result.hardware or {}).get("cpu_cache_bytes") if _on_cpu(result) else None,
        )
    except (KeyError, TypeError, ValueError, ConfigError) as exc:
        why = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
        return {"roofline_missing": f"no model architecture to count bytes from ({why}): give model.architecture"}


def cache_columns(counters: dict | None, enabled: bool | None) -> dict:
    """The prefix cache's setting and, where the server counts it, its use over the repeats."""
    row = {"prefix_cache": enabled}
    if not counters:
        return row
    queries, hits = counters["queries"], counters["hits"]
    row.update(
        prefix_cache_queries=queries,
        prefix_cache_hits=hits,
        prefix_cache_hit_rate=hits / queries if queries else None,
    )
    if hits and not enabled:
        row["prefix_cache_flag"] = (
            f"the server counted {hits:g} prefix-cache hits while workload.prefix_cache is off: "
            "its figures may be flattered by a cache (check the engine's prefix_cache_flags)"
        )
    return row


def fidelity_of(path: Path, result: CellResult, judged: FidelityConfig | None, records: dict) -> dict:
    """The fidelity columns of an ok cell: its instance's pass, judged by the budget given now
    (`judged`: the matrix's workload.fidelity) or else by the one it was measured with."""
    if result.status != OK or result.config is None:
        return {}
    settings = FidelityConfig.parse((result.config.get("workload") or {}).get("fidelity"))
    if judged is not None:
        budget = {key: getattr(judged, key) for key in FidelityConfig.ANALYSIS_ONLY}
        settings = dataclasses.replace(settings, **budget)
    entry, record = result.fidelity, None
    if entry and entry.get("file"):
        file = (Path(path).parent / entry["file"]).resolve()
        if file not in records:
            try:
                records[file] = json.loads(file.read_text())
            except (OSError, ValueError) as exc:
                return {"fidelity_status": ERROR, "fidelity_reason": f"the fidelity record {file} is unreadable: {exc}"}
        record = records[file]
    columns = fidelity_columns(entry, record, settings, result.engine_precision)
    return {**columns, "fidelity_budget_top1": settings.min_top1}


def settling(starts: list[dict]) -> dict:
    """How the measurement settled, over the cell's engine starts: rounds and repeats summed,
    steady only if every start's warm-up was, the worst host noise."""
    if not starts:
        return {}

    def part(name: str) -> list[dict]:
        return [s.get(name) or {} for s in starts]

    def worst(key: str):
        values = [h[key] for h in part("host") if h.get(key) is not None]
        return max(values) if values else None

    warmups, repeats = part("warmup"), part("repeats")
    steady = [w.get("steady") for w in warmups if w.get("steady") is not None]
    return {
        "instance_starts": len(starts),
        "warmup_rounds": sum(w.get("rounds", 0) for w in warmups),
        "warmup_steady": all(steady) if steady else None,
        "repeats_run": sum(r.get("run", 0) for r in repeats),
        "repeats_kept": sum(r.get("kept", 0) for r in repeats),
        "repeats_discarded": sum(len(r.get("discarded", [])) for r in repeats),
        "repeats_stop": ",".join(sorted({r["stop"] for r in repeats if r.get("stop")})) or None,
        "host_steal_share": worst("steal_share"),
        "host_other_busy_share": worst("other_busy_share"),
        "host_load_1m": worst("load_1m"),
    }


def cell_row(
    result: CellResult,
    records: list[dict],
    requested: HardwareConfig,
    entries: list[HardwareConfig],
    slo: SloConfig | None = None,
) -> dict:
    row = {"cell_id": result.cell_id, **result.cell.axes(), "status": result.status, "error": result.error}
    metrics = summarize(records) if records else {}
    row.update(metrics)
    if records:
        row.update(slo_figures(records, slo))
    row.update(roofline_columns(result, metrics, requested, entries))
    workload = (result.config or {}).get("workload") or {}
    client = result.client or {}  # server engines: could the client keep up?
    row.update(settling(result.starts))
    row.update(cache_columns(result.prefix_cache, workload.get("prefix_cache")))
    row.update(
        cpu_affinity=",".join(map(str, result.cpu_affinity)) if result.cpu_affinity else None,
        engine_version=result.engine_version,
        engine_precision=result.engine_precision,
        engine_device=result.engine_device,
        engine_args=json.dumps(result.engine_args, sort_keys=True) if result.engine_args else None,
        engine_env=json.dumps(result.engine_env, sort_keys=True) if result.engine_env else None,
        load_s=result.load_s,
        compile_s=result.compile_s,
        warmup_s=result.warmup_s,
        measure_s=result.measure_s,
        cell_wall_s=result.cell_wall_s,
        overhead_s=result.overhead_s,
        engine_start=result.engine_start,
        peak_mem_bytes=result.peak_mem_bytes,
        peak_mem_kind=result.peak_mem_kind,
        hardware=result.hardware.get("name"),
        cpu=result.hardware.get("cpu"),
        gpu=result.hardware.get("gpu"),
        git_sha=result.git_sha,
        finished_at=result.finished_at,
        input_tokens=workload.get("input_tokens"),
        output_tokens_target=workload.get("output_tokens"),
        num_requests=workload.get("num_requests"),
        repeats=json.dumps(workload.get("repeats")),  # a number, or the adaptive policy
        request_rate=workload.get("request_rate"),
        client_cpu_share=client.get("cpu_share_max"),
        client_saturated=client.get("saturated"),
        overrides=" ".join(result.overrides),
        schema_version=result.schema_version,
    )
    unknown = sorted(set(row) - set(CELL_COLUMN_NAMES))
    if unknown:  # a figure added without declaring it in the schema is a bug, not a new column
        raise ValueError(f"cells.csv columns {unknown} are not declared in pipeline/results/schema.py")
    return row


SEARCH_POINT_COLUMNS = (
    "cell_id",
    *AXES,
    "over",
    "slo",
    "probe",
    "phase",
    "load",
    "met",
    "requests",
    "failed",
    "attainment",
    "goodput_req_s",
    "goodput_tok_s",
    *(f"{key}_{end}" for key in SLO_TARGETS for end in ("target", "p50", "slo_pct", "slo_pct_low", "slo_pct_high")),
    "why",
    "errors",
    "wall_s",
    "result",
)


def search_columns(search: dict | None, cell_id: str) -> dict:
    """An instance's load search as cells.csv columns (empty without one)."""
    if not search:
        return {}
    found = {"concurrency": "slo_max_concurrency", "rate": "slo_max_rate"}[search["over"]]
    return {
        found: search["result"],
        "slo_search_missed_at": search["missed_at"],
        "slo_search_missed_why": search.get("missed_why"),
        "slo_search_probes": search["probes"],
        "slo_search_reason": search["reason"],
        "slo_search_cell": cell_id,
    }


def search_points(result: CellResult) -> list[dict]:
    """One row per probe of the search this cell ran (search.csv)."""
    search = result.search or {}
    targets = {f"{key}_target": value for key, value in (search.get("targets") or {}).items()}
    return [
        {"cell_id": result.cell_id, **result.cell.axes(), "over": search["over"], "slo": search["slo"],
         "result": search["result"], **targets, **point}
        for point in search.get("points", [])
    ]  # fmt: skip


def collect(
    summary_paths: list[Path],
    hardware: str = "auto",
    conf_dir: Path = CONF_DIR,
    slo: SloConfig | None = None,
    fidelity: FidelityConfig | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """hardware: the conf/hardware/ entry to judge the cells against (auto: detect per cell);
    slo: the latency targets for goodput, as the matrix's workload states them now; fidelity:
    its workload.fidelity, whose budget judges the fidelity figures (None: each cell's own).
    Returns cells, requests and the load searches' probes."""
    tree = ConfTree(conf_dir, [f"hardware={hardware}"])
    requested, entries = tree.requested_hardware(), tree.hardware_entries()  # the datasheets, read once
    rows, requests, points = [], [], []
    results, fidelity_records = [], {}
    for path in summary_paths:
        result = read_result(path)
        if result is None:
            raise FileNotFoundError(f"{path}: missing, unreadable or of another schema version")
        results.append((path, result))
    # where two cells of one instance searched (a cell retried by a later run), the later search wins
    searched = {
        (r.engine, r.model, r.precision): search_columns(r.search, r.cell_id)
        for _, r in sorted(results, key=lambda pair: pair[1].finished_at)
        if r.search
    }
    for path, result in results:
        records = read_records(Path(path).with_name("requests.csv"))
        rows.append(cell_row(result, records, requested, entries, slo))
        rows[-1].update(searched.get((result.engine, result.model, result.precision), {}))
        rows[-1].update(fidelity_of(path, result, fidelity, fidelity_records))
        points += search_points(result)
        if records:
            frame = pd.DataFrame.from_records(records)
            for position, key in enumerate(("cell_id", *AXES)):
                frame.insert(position, key, rows[-1][key])
            requests.append(frame)
    cells = pd.DataFrame(rows).reindex(columns=list(CELL_COLUMN_NAMES))  # every column, empty where unmeasured
    cells = cells.sort_values(list(AXES), kind="stable").reset_index(drop=True)
    diagnosis = diagnose(cells)  # across cells: batch scaling, fits across model sizes
    cells[diagnosis.columns] = diagnosis
    per_request = pd.concat(requests, ignore_index=True) if requests else pd.DataFrame(columns=["cell_id"])
    search = pd.DataFrame(points).reindex(columns=list(SEARCH_POINT_COLUMNS))
    return cells, per_request, search


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
    parser = argparse.ArgumentParser(prog="python -m pipeline.analysis.collect", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", required=True, type=Path, help="output: one row per cell")
    parser.add_argument("--requests", required=True, type=Path, help="output: one row per measured request")
    parser.add_argument(
        "--hardware", default="auto", help="datasheet entry (conf/hardware/NAME.yaml); auto: detect per cell"
    )
    parser.add_argument("--search", type=Path, help="output: one row per load-search probe (workload.search)")
    parser.add_argument("--slo", default="null", help="workload.slo as JSON, e.g. '{\"tpot_s\": 0.05}' (null: none)")
    parser.add_argument(
        "--fidelity", default=None, help="workload.fidelity as JSON, whose budget judges the fidelity figures"
    )
    parser.add_argument("summaries", nargs="+", type=Path)
    args = parser.parse_args(argv)
    try:
        fidelity = FidelityConfig.parse(json.loads(args.fidelity)) if args.fidelity else None
        cells, requests, search = collect(
            args.summaries, args.hardware, slo=SloConfig.parse(json.loads(args.slo)), fidelity=fidelity
        )
    except ConfigError as exc:
        parser.error(str(exc))
    outputs = [(cells, args.cells), (requests, args.requests)] + ([(search, args.search)] if args.search else [])
    for frame, path in outputs:
        atomic_write(path, lambda handle, frame=frame: frame.to_csv(handle, index=False))
    print(f"collected {len(cells)} cells, {len(requests)} requests", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
