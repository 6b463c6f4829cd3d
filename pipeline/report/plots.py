"""The report's plots: matplotlib figures -> SVG data URIs, ready for <img src=...>.

Figures are built with matplotlib.figure.Figure, never pyplot: no GUI backend is ever
selected and no global figure state leaks between plots (the non-interactive canvases
are used directly, as with the Agg backend). An <img> data URI rather than inline <svg>
keeps whatever text a figure carries (model names) out of the page's DOM: an image
cannot run script.
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from pipeline.config import SLO_NAMES
from pipeline.report.verdict import flag_text, pareto_front

# Text stays text (small files, crisp in the browser); fixed ids and no date: same data, same bytes.
SVG_STYLE = {"svg.fonttype": "none", "svg.hashsalt": "llm-infer-bench", "font.size": 9}
PANEL_W, PANEL_H = 4.4, 3.2
MAX_POINT_LABELS = 12
CELL_LABEL_PT = 7


@dataclass(frozen=True)
class Plot:
    key: str
    title: str
    caption: str
    data_uri: str


def plain(text) -> str:
    """Text for matplotlib: a pair of '$' would start mathtext (and may raise on a model name)."""
    return str(text).replace("$", r"\$")


def to_data_uri(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="svg", metadata={"Date": None})
    return "data:image/svg+xml;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def ok_cells(cells: pd.DataFrame) -> pd.DataFrame:
    ok = cells[cells["status"] == "ok"].copy()
    ok["config"] = ok["engine"].astype(str) + " " + ok["precision"].astype(str)
    return ok


def config_colors(cells: pd.DataFrame) -> dict[str, tuple]:
    """One color per engine x precision, the same in every plot."""
    configs = sorted((cells["engine"].astype(str) + " " + cells["precision"].astype(str)).unique())
    palette = matplotlib.colormaps["tab10" if len(configs) <= 10 else "tab20"]
    return {config: palette(i % palette.N) for i, config in enumerate(configs)}


def _panels(count: int) -> tuple[Figure, list]:
    columns = min(3, count)
    rows = math.ceil(count / columns)
    figure = Figure(figsize=(PANEL_W * columns + 1.4, PANEL_H * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel().tolist()
    for unused in axes[count:]:
        unused.set_visible(False)
    return figure, axes[:count]


def _cell_rows_figure(labels: list[str]) -> Figure:
    """A figure with one row per cell, labelled on the left. Margins are set from the label lengths rather
    than by a layout engine: measuring hundreds of labels dominated the rendering time of a large report."""
    width, height = 9.0, max(2.2, 0.24 * len(labels) + 1.0)
    label_in = max(map(len, labels), default=0) * CELL_LABEL_PT * 0.62 / 72 + 0.2
    figure = Figure(figsize=(width, height))
    figure.subplots_adjust(left=label_in / width, right=1 - 0.2 / width, bottom=0.6 / height, top=1 - 0.15 / height)
    return figure


def _shared_legend(figure: Figure, axes: list) -> None:
    """One legend for all panels (colors mean the same configuration everywhere): cheaper and less clutter."""
    entries: dict[str, object] = {}
    for axis in axes:
        for handle, label in zip(*axis.get_legend_handles_labels(), strict=True):
            entries.setdefault(label, handle)
    figure.legend(list(entries.values()), list(entries), loc="outside right upper", fontsize=7)


def _batch_axis(axis, batches) -> None:
    batches = sorted(set(batches))
    if batches and batches[-1] / batches[0] >= 4:
        axis.set_xscale("log", base=2)
    axis.set_xticks(batches, [str(b) for b in batches])
    axis.minorticks_off()
    axis.set_xlabel("batch size")


def _model_panels(cells: pd.DataFrame, columns: list[str]) -> tuple[Figure, list, list] | None:
    """One panel per model over the ok cells that have `columns`: (figure, axes, [(axis, model, its cells)])."""
    ok = ok_cells(cells).dropna(subset=columns)
    if ok.empty:
        return None
    models = sorted(ok["model"].astype(str).unique())
    figure, axes = _panels(len(models))
    panels = [(axis, model, ok[ok["model"].astype(str) == model]) for axis, model in zip(axes, models, strict=True)]
    return figure, axes, panels


def metric_vs_batch(cells: pd.DataFrame, metric: str, scale: float, ylabel: str) -> Figure | None:
    found = _model_panels(cells, [metric])
    if found is None:
        return None
    figure, axes, panels = found
    colors = config_colors(cells)
    for axis, model, of_model in panels:
        for config, line in of_model.groupby("config", sort=True):
            line = line.sort_values("batch_size")
            axis.plot(line["batch_size"], line[metric] * scale, marker="o", color=colors[config], label=plain(config))
        _batch_axis(axis, of_model["batch_size"])
        axis.set_title(plain(model))
        axis.set_ylabel(ylabel)
        axis.set_ylim(bottom=0)
        axis.grid(alpha=0.3)
    _shared_legend(figure, axes)
    return figure


@dataclass(frozen=True)
class BoxStats:
    """A Tukey box: quartiles, whiskers at the last sample within 1.5 IQR, the rest as outliers."""

    q1: float
    median: float
    q3: float
    low: float
    high: float
    outliers: list[float]


def box_stats(samples) -> BoxStats:
    values = np.sort(np.asarray(samples, dtype=float))
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    reach = 1.5 * (q3 - q1)
    inside = values[(values >= q1 - reach) & (values <= q3 + reach)]
    outliers = values[(values < q1 - reach) | (values > q3 + reach)]
    return BoxStats(q1, median, q3, float(inside.min()), float(inside.max()), outliers.tolist())


def ttft_boxes(cells: pd.DataFrame, requests: pd.DataFrame) -> Figure | None:
    if requests.empty or "ttft_s" not in requests:
        return None
    measured = requests[requests["success"].astype(str).str.lower() == "true"].dropna(subset=["ttft_s"])
    samples = {str(c): group.to_numpy() * 1000 for c, group in measured.groupby("cell_id")["ttft_s"]}
    shown = cells[cells["cell_id"].astype(str).isin(samples)]
    if shown.empty:
        return None
    ids = shown["cell_id"].astype(str).tolist()
    stats = [box_stats(samples[c]) for c in ids]
    configs = (shown["engine"].astype(str) + " " + shown["precision"].astype(str)).tolist()
    colors = config_colors(cells)
    # Drawn as a few collections rather than axis.boxplot's six artists per box: 200 cells stay fast.
    y = np.arange(len(ids))[::-1]  # the table's first cell on top
    q1, median, q3 = (np.array([getattr(b, f) for b in stats]) for f in ("q1", "median", "q3"))
    low, high = np.array([b.low for b in stats]), np.array([b.high for b in stats])
    labels = [plain(c) for c in ids]
    figure = _cell_rows_figure(labels)
    axis = figure.subplots()
    axis.hlines(np.r_[y, y], np.r_[low, q3], np.r_[q1, high], color="black", linewidth=0.8)
    axis.barh(y, q3 - q1, left=q1, height=0.6, color=[colors[c] for c in configs], edgecolor="black", linewidth=0.6)
    axis.vlines(median, y - 0.3, y + 0.3, color="black", linewidth=1.4)
    outliers = [(value, row) for b, row in zip(stats, y, strict=True) for value in b.outliers]
    if outliers:
        axis.plot(*zip(*outliers, strict=True), linestyle="none", marker="o", markersize=2, color="0.35")
    # Cells of different models or batch sizes can be 100x apart: a log axis keeps every box readable.
    positive = [b.low for b in stats if b.low > 0]
    if positive and max(b.high for b in stats) / min(positive) > 20:
        axis.set_xscale("log")
    axis.set_yticks(y, labels, fontsize=CELL_LABEL_PT)
    axis.set_ylim(-0.7, len(ids) - 0.3)
    axis.set_xlabel("TTFT (ms), one box per cell over its measured requests")
    axis.grid(axis="x", alpha=0.3)
    return figure


def latency_vs_throughput(cells: pd.DataFrame) -> Figure | None:
    found = _model_panels(cells, ["output_tok_s", "tpot_s_p50"])
    if found is None:
        return None
    figure, axes, panels = found
    colors = config_colors(cells)
    for axis, model, of_model in panels:
        on_front = pareto_front(of_model["output_tok_s"], of_model["tpot_s_p50"])
        for config, points in of_model.groupby("config", sort=True):
            axis.scatter(points["output_tok_s"], points["tpot_s_p50"] * 1000, color=colors[config], label=plain(config))
        # Batch-size labels on every point while they stay legible, else on the frontier only.
        labelled = of_model if len(of_model) <= MAX_POINT_LABELS else of_model[on_front]
        for point in labelled.itertuples():
            axis.annotate(
                f"bs{point.batch_size}",
                (point.output_tok_s, point.tpot_s_p50 * 1000),
                textcoords="offset points",
                xytext=(4, 3),
                fontsize=7,
            )
        front = of_model[on_front].sort_values("output_tok_s")
        axis.plot(
            front["output_tok_s"],
            front["tpot_s_p50"] * 1000,
            color="black",
            linestyle="--",
            marker="o",
            markerfacecolor="none",
            markersize=10,
            label="Pareto frontier",
        )
        axis.set_title(plain(model))
        axis.set_xlabel("output tok/s")
        axis.set_ylabel("TPOT p50 (ms), lower is better")
        axis.grid(alpha=0.3)
    _shared_legend(figure, axes)
    return figure


def roofline_bars(cells: pd.DataFrame) -> Figure | None:
    if "achieved_bandwidth_gbs" not in cells:
        return None
    ok = ok_cells(cells).dropna(subset=["achieved_bandwidth_gbs"])
    if ok.empty:
        return None
    labels = [plain(c) for c in ok["cell_id"]]
    flags = ok["roofline_flag"].map(flag_text) if "roofline_flag" in ok else pd.Series("", index=ok.index)
    flagged = (flags != "").tolist()
    figure = _cell_rows_figure(labels)
    axis = figure.subplots()
    positions = list(range(len(ok)))[::-1]
    axis.barh(
        positions,
        ok["achieved_bandwidth_gbs"],
        color=["tab:red" if f else "tab:blue" for f in flagged],
        label="achieved" + (" (red: flagged, above the measured peak)" if any(flagged) else ""),
    )
    for column, marker, name in (
        ("peak_bandwidth_measured_gbs", "|", "measured peak"),
        ("peak_bandwidth_gbs", "x", "datasheet peak"),
    ):
        if column in ok and ok[column].notna().any():
            axis.scatter(ok[column], positions, marker=marker, s=120, color="black", label=name, zorder=3)
    axis.set_yticks(positions, labels, fontsize=CELL_LABEL_PT)
    axis.set_ylim(-0.7, len(labels) - 0.3)
    axis.set_xlabel("memory bandwidth (GB/s)")
    axis.grid(axis="x", alpha=0.3)
    axis.legend(fontsize=7, loc="lower right")
    return figure


def _ceiling(axis, xs: np.ndarray, bandwidth_gbs, tflops, style: str, name: str) -> None:
    """min(bandwidth x intensity, peak FLOP/s): the roof for one set of peaks."""
    bandwidth = bandwidth_gbs * 1e9 if bandwidth_gbs else None
    flops = tflops * 1e12 if tflops else None
    if bandwidth is None:
        return
    roof = bandwidth * xs if flops is None else np.minimum(bandwidth * xs, flops)
    axis.plot(
        xs,
        roof,
        style,
        color="black",
        linewidth=1,
        label=f"{name}: {bandwidth_gbs:.4g} GB/s" + (f", {tflops:.4g} TFLOP/s" if flops else ""),
    )


def roofline_plot(cells: pd.DataFrame) -> Figure | None:
    """Log-log: FLOPs per byte moved per decode step (grows with the batch) against achieved
    FLOP/s; the bandwidth slope and compute ceiling of the measured and datasheet peaks."""
    needed = {"flops_per_token", "bytes_per_step", "tpot_s_p50", "batch_size"}
    if not needed <= set(cells.columns):
        return None
    ok = ok_cells(cells).dropna(subset=list(needed))
    if ok.empty:
        return None
    decode_flops = ok["batch_size"] * ok["flops_per_token"].astype(float)
    intensity = decode_flops / ok["bytes_per_step"].astype(float)
    achieved = decode_flops / ok["tpot_s_p50"].astype(float)
    figure = Figure(figsize=(PANEL_W * 1.5, PANEL_H * 1.4), layout="constrained")
    axis = figure.subplots()
    colors = config_colors(ok)
    configs = (ok["engine"].astype(str) + " " + ok["precision"].astype(str)).tolist()
    for config in dict.fromkeys(configs):
        chosen = [c == config for c in configs]
        axis.scatter(intensity[chosen], achieved[chosen], color=colors[config], label=f"{plain(config)} (decode)")
    for x, y, cell_id in list(zip(intensity, achieved, ok["cell_id"], strict=True))[:MAX_POINT_LABELS]:
        axis.annotate(plain(cell_id), (x, y), fontsize=CELL_LABEL_PT - 1, xytext=(3, 3), textcoords="offset points")
    if {"prefill_mfu_measured", "peak_tflops_measured", "input_tokens"} <= set(ok.columns):
        prefill = ok.dropna(subset=["prefill_mfu_measured", "peak_tflops_measured", "input_tokens"])
        if len(prefill):
            flops = prefill["batch_size"] * prefill["input_tokens"].astype(float) * prefill["flops_per_token"]
            axis.scatter(
                flops / prefill["bytes_per_step"].astype(float),
                prefill["prefill_mfu_measured"] * prefill["peak_tflops_measured"] * 1e12,
                marker="^",
                facecolors="none",
                edgecolors="gray",
                label="prefill (intensity: weights read once)",
            )
    low = max(min(intensity.min(), 1.0) / 4, 1e-3)
    xs = np.logspace(math.log10(low), math.log10(max(intensity.max(), 1.0) * 1e3), 200)
    for prefix, style, name in (("_measured", "-", "measured peak"), ("", "--", "datasheet")):
        for precision, group in ok.groupby("precision"):  # the compute ceiling is the precision's matmul peak
            bandwidth = group.get(f"peak_bandwidth{prefix}_gbs")
            tflops = group.get(f"peak_tflops{prefix}")
            if bandwidth is not None and bandwidth.notna().any():
                flops_peak = tflops.dropna().median() if tflops is not None and tflops.notna().any() else None
                _ceiling(axis, xs, float(bandwidth.dropna().median()), flops_peak, style, f"{name}, {precision}")
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("arithmetic intensity (FLOPs per byte moved per decode step)")
    axis.set_ylabel("achieved FLOP/s")
    axis.grid(which="both", alpha=0.2)
    axis.legend(fontsize=6, loc="lower right")
    return figure


def search_plot(search: pd.DataFrame, cells: pd.DataFrame) -> Figure | None:
    """The load searches: per model and SLO target, the target's percentile at each probed load
    (with its 95% interval), the target as a dashed line, each configuration's answer as a dotted one."""
    if search is None or search.empty:
        return None
    search = search.copy()
    search["config"] = search["engine"].astype(str) + " " + search["precision"].astype(str)
    targets = [k for k in SLO_NAMES if search[f"{k}_slo_pct_low"].notna().any()]
    panels = [(model, key) for model in sorted(search["model"].astype(str).unique()) for key in targets]
    if not panels:
        return None
    figure, axes = _panels(len(panels))
    colors = config_colors(cells)
    for axis, (model, key) in zip(axes, panels, strict=True):
        of_model = search[search["model"].astype(str) == model]
        for config, points in of_model.groupby("config", sort=True):
            points = points.sort_values(["load", "probe"])
            values = points[f"{key}_slo_pct"].astype(float) * 1e3
            low = values - points[f"{key}_slo_pct_low"].astype(float) * 1e3
            high = points[f"{key}_slo_pct_high"].astype(float) * 1e3 - values
            color = colors.get(config, "black")
            axis.errorbar(points["load"], values, yerr=[low.clip(lower=0), high.clip(lower=0)], fmt="o", ms=3,
                          color=color, label=plain(config), capsize=2)  # fmt: skip
            by_load = points.groupby("load")[f"{key}_slo_pct"].median() * 1e3
            axis.plot(by_load.index, by_load.values, color=color, alpha=0.6)
            found = points["result"].dropna()
            if not found.empty:
                axis.axvline(float(found.iloc[0]), color=color, linestyle=":", linewidth=1)
        target = of_model[f"{key}_target"].dropna()
        if not target.empty:
            axis.axhline(float(target.iloc[0]) * 1e3, color="black", linestyle="--", linewidth=1, label="SLO target")
        over = str(of_model["over"].dropna().iloc[0]) if of_model["over"].notna().any() else "load"
        axis.set_xlabel("requests in flight" if over == "concurrency" else "requests/s (Poisson)")
        axis.set_ylabel(f"{SLO_NAMES[key]} at the SLO percentile (ms)")
        axis.set_title(plain(f"{model}: {SLO_NAMES[key]}"))
        axis.set_ylim(bottom=0)
        axis.grid(alpha=0.3)
    _shared_legend(figure, axes)
    return figure


KL_FLOOR = 1e-12  # a smaller KL (0 for the reference itself) is drawn on this floor of the log axis


def fidelity_plot(cells: pd.DataFrame) -> Figure | None:
    """Per model, each instance's TPOT p50 (at its smallest batch size) against its KL from hf fp32."""
    if "fidelity_kl_mean" not in cells:
        return None
    ok = ok_cells(cells)
    ok = ok[ok["fidelity_status"] == "ok"].dropna(subset=["fidelity_kl_mean", "tpot_s_p50"])
    ok = ok.sort_values("batch_size", kind="stable").drop_duplicates(["model", "engine", "precision"])
    if ok.empty:
        return None
    models = sorted(ok["model"].astype(str).unique())
    figure, axes = _panels(len(models))
    colors = config_colors(cells)
    for axis, model in zip(axes, models, strict=True):
        of_model = ok[ok["model"].astype(str) == model]
        kl = of_model["fidelity_kl_mean"].astype(float).clip(lower=KL_FLOOR)
        tpot = of_model["tpot_s_p50"].astype(float) * 1000
        for (_, point), x, y in zip(of_model.iterrows(), kl, tpot, strict=True):
            xerr = [
                [max(x - max(point["fidelity_kl_mean_low"], KL_FLOOR), 0)],
                [max(point["fidelity_kl_mean_high"] - x, 0)],
            ]
            yerr = [[max(y - point["tpot_s_p50_low"] * 1000, 0)], [max(point["tpot_s_p50_high"] * 1000 - y, 0)]]
            has_errors = pd.notna(point["fidelity_kl_mean_low"]) and pd.notna(point["tpot_s_p50_low"])
            axis.errorbar(
                [x], [y], xerr=xerr if has_errors else None, yerr=yerr if has_errors else None, fmt="o",
                color=colors[point["config"]], label=plain(point["config"]), capsize=2,
            )  # fmt: skip
            axis.annotate(f"bs{point['batch_size']}", (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
        on_front = pareto_front(-kl, tpot)
        front = pd.DataFrame({"kl": kl, "tpot": tpot})[on_front].sort_values("kl")
        axis.plot(front["kl"], front["tpot"], color="black", linestyle="--", linewidth=1, label="Pareto frontier")
        axis.set_xscale("log")
        axis.set_title(plain(model))
        axis.set_xlabel(f"KL(hf fp32 || engine), nats (<= {KL_FLOOR:g} drawn at it)")
        axis.set_ylabel("TPOT p50 (ms), lower is better")
        axis.grid(alpha=0.3)
    _shared_legend(figure, axes)
    return figure


def all_plots(cells: pd.DataFrame, requests: pd.DataFrame, search: pd.DataFrame | None = None) -> list[Plot]:
    """Every plot the data allows, in report order; a plot without data is left out."""
    specs = [
        (
            "tpot_vs_batch",
            "TPOT p50 vs batch size",
            "Time per output token (median over requests), one line per engine x precision, one panel per model.",
            lambda: metric_vs_batch(cells, "tpot_s_p50", 1000, "TPOT p50 (ms)"),
        ),
        (
            "throughput_vs_batch",
            "Output tokens per second vs batch size",
            "All output tokens over the measured window, summed over repeats.",
            lambda: metric_vs_batch(cells, "output_tok_s", 1, "output tok/s"),
        ),
        (
            "ttft_distribution",
            "TTFT distribution per cell",
            "Time to first token over each cell's measured requests (box: quartiles; whiskers: 1.5 IQR).",
            lambda: ttft_boxes(cells, requests),
        ),
        (
            "latency_vs_throughput",
            "Latency vs throughput",
            "Each point is a cell; the dashed line joins the Pareto frontier: no other cell has both "
            "more throughput and a lower TPOT.",
            lambda: latency_vs_throughput(cells),
        ),
        (
            "roofline",
            "Roofline: achieved FLOP/s vs arithmetic intensity",
            "Each decode cell at its FLOPs per byte moved (batch x FLOPs per token / bytes per step) and its "
            "achieved FLOP/s (the same FLOPs / TPOT p50); the lines are the roofs of the measured (solid) and "
            "datasheet (dashed) peaks: the bandwidth slope, then the compute ceiling. A point far below its "
            "roof is held by overhead or slow kernels (see the bound column).",
            lambda: roofline_plot(cells),
        ),
        (
            "bandwidth",
            "Achieved memory bandwidth vs peak",
            "Bytes read per decode step / TPOT, per cell, against the measured and datasheet peaks.",
            lambda: roofline_bars(cells),
        ),
        (
            "load_search",
            "The most load within the SLO",
            "Each point is one probe of the load search at one load: the SLO target's percentile over its requests, "
            "with its 95% interval; the dashed line is the target, each dotted line the largest load that met the "
            "SLO every time it was probed (pipeline/run/load_search.py states the method).",
            lambda: search_plot(search, cells),
        ),
        (
            "fidelity",
            "Speed vs precision fidelity",
            "Each engine instance at its smallest batch size: its TPOT p50 against the mean KL divergence of its "
            "next-token distributions from the model's hf fp32 reference (teacher-forced on fixed prompts; both "
            "with 95% intervals); the dashed line joins the Pareto frontier: no other instance is both faster and "
            "closer to the reference.",
            lambda: fidelity_plot(cells),
        ),
    ]
    plots = []
    for key, title, caption, build in specs:
        # The style applies while figures are built (font sizes) and saved (SVG options).
        with matplotlib.rc_context(SVG_STYLE):
            figure = build()
            if figure is not None:
                plots.append(Plot(key, title, caption, to_data_uri(figure)))
    return plots
