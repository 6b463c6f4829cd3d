"""How good is this inference speed, from first principles.

Decode reads every weight once per step (plus each sequence's KV cache), so at small
batch sizes it is memory-bandwidth bound: the best time per output token is

    tpot_floor = bytes read per step / peak memory bandwidth

(a 7B model in bf16 on an A100 at 1935 GB/s: 14 GB / 1935 GB/s = 7.2 ms). Model bandwidth
utilization (MBU) says how close a cell came: (bytes per step / measured TPOT) / peak.
Prefill is compute bound: MFU = 2 x params x prompt tokens / TTFT / peak FLOP/s.

    python -m pipeline.analysis.roofline model=llama2-7b precision=fp16 hardware=a100-80g batch_size=1 [--table]
    python -m pipeline.analysis.roofline --params 7e9 precision=bf16 hardware=a100-80g-pcie --table
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys

from pipeline.config import CellConfig, HardwareConfig, PrecisionConfig
from pipeline.models.shape import ModelShape, weight_bytes


def mean_decode_context(input_tokens: int, output_tokens: int) -> float:
    """Context length averaged over the decode steps (input_tokens + 1 .. + output_tokens - 1)."""
    return input_tokens + output_tokens / 2


def _peak_flops(tflops: dict[str, float], precision: PrecisionConfig) -> float | None:
    # weight-only int8/int4 still compute in 16-bit
    dtype = precision.name if precision.name in ("fp32", "bf16", "fp16") else "bf16"
    value = tflops.get(dtype)
    return value * 1e12 if value else None


def ridge_batch_size(
    shape: ModelShape, precision: PrecisionConfig, context: float, bandwidth_gbs: float | None, flops: float | None
) -> float | None:
    """The batch size at which decode turns compute bound (inf: never, since KV reads grow too)."""
    if not bandwidth_gbs or not flops:
        return None
    ridge = flops / (bandwidth_gbs * 1e9)  # FLOPs per byte where the two roofs meet
    weights = weight_bytes(shape, precision, read_per_step=True)
    per_seq_flops = shape.flops_per_token(context)
    per_seq_bytes = shape.kv_bytes_per_token(precision.kv_bytes) * context
    denominator = per_seq_flops - ridge * per_seq_bytes
    return ridge * weights / denominator if denominator > 0 else math.inf


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator or (isinstance(numerator, float) and math.isnan(numerator)):
        return None
    return numerator / denominator


def cell_roofline(
    cfg: CellConfig,
    hardware: HardwareConfig,
    measured: dict | None = None,
    tpot_s: float | None = None,
    ttft_s: float | None = None,
    weights: dict | None = None,
    architecture: dict | None = None,
    cell_probes: list[dict] | None = None,
    tpot_interval: tuple[float | None, float | None] | None = None,
    cache_bytes: int | None = None,
) -> dict:
    """The roofline columns of one cell; measured = the probe's peaks on the cell's machine
    (at engine load, cached); cell_probes = the bandwidth measured just before and after the
    cell, which is then the measured peak (the better of the two; the worse bounds the MBU
    interval); weights = the engine's exact weight bytes when its file says (else: from the
    architecture); architecture = the model's shape where its conf has none (its config.json);
    tpot_interval = (low, high) of TPOT p50, for the MBU interval; cache_bytes = the last-level
    cache of the CPU the cell ran on (None on a GPU), which a small enough model stays in.
    Raises KeyError/TypeError when the architecture lacks what the accounting needs."""
    shape = ModelShape.from_architecture(cfg.model.architecture or architecture or {})
    precision, workload, batch = cfg.precision, cfg.workload, cfg.batch_size
    context = mean_decode_context(workload.input_tokens, workload.output_tokens)
    kv_per_token = shape.kv_bytes_per_token(precision.kv_bytes)
    if weights:
        total_weights, read_weights, source = weights["total"], weights["read_per_step"], "engine file"
    else:
        total_weights = weight_bytes(shape, precision)
        read_weights, source = weight_bytes(shape, precision, read_per_step=True), "architecture"
    bytes_per_step = read_weights + batch * kv_per_token * context
    bandwidth = hardware.memory_bandwidth_gbs
    measured = measured or {}
    probed = [p["bandwidth_gbs"] for p in cell_probes or () if p.get("bandwidth_gbs")]
    if probed:
        bandwidth_measured, bandwidth_low, probe = max(probed), min(probed), "cell"
    else:
        bandwidth_measured = bandwidth_low = measured.get("bandwidth_gbs")
        probe = "load" if bandwidth_measured else None
    flops = _peak_flops(hardware.peak_tflops, precision)
    flops_measured = measured.get("matmul_tflops") and measured["matmul_tflops"] * 1e12
    achieved = _ratio(bytes_per_step, tpot_s)
    tpot_low, tpot_high = tpot_interval or (None, None)
    ridge = ridge_batch_size(shape, precision, context, bandwidth or bandwidth_measured, flops or flops_measured)
    prefill_flops = 2 * shape.matmul_params * batch * workload.input_tokens
    row = {
        "hardware_entry": hardware.name,
        "params": shape.params,
        "weight_bytes": total_weights,
        "weight_bytes_source": source,
        "kv_bytes_per_token": kv_per_token,
        "mean_context": context,
        "bytes_per_step": bytes_per_step,
        "flops_per_token": shape.flops_per_token(context),
        "peak_bandwidth_gbs": bandwidth,
        "peak_bandwidth_measured_gbs": bandwidth_measured,
        "peak_bandwidth_measured_low_gbs": bandwidth_low,
        "peak_bandwidth_probe": probe,
        "tpot_floor_s": _ratio(bytes_per_step, bandwidth and bandwidth * 1e9),
        "tpot_floor_measured_s": _ratio(bytes_per_step, bandwidth_measured and bandwidth_measured * 1e9),
        "achieved_bandwidth_gbs": achieved and achieved / 1e9,
        "mbu": _ratio(achieved, bandwidth and bandwidth * 1e9),
        "mbu_measured": _ratio(achieved, bandwidth_measured and bandwidth_measured * 1e9),
        # the slowest TPOT against the best probe .. the fastest TPOT against the worst probe
        "mbu_measured_low": _ratio(_ratio(bytes_per_step, tpot_high), bandwidth_measured and bandwidth_measured * 1e9),
        "mbu_measured_high": _ratio(_ratio(bytes_per_step, tpot_low), bandwidth_low and bandwidth_low * 1e9),
        "prefill_mfu": _ratio(_ratio(prefill_flops, ttft_s), flops),
        "prefill_mfu_measured": _ratio(_ratio(prefill_flops, ttft_s), flops_measured),
        "peak_tflops": flops and flops / 1e12,
        "peak_tflops_measured": flops_measured and flops_measured / 1e12,
        "ridge_batch_size": ridge,
        # Bytes that fit in the CPU's last-level cache may be read from it, faster than from memory:
        # the memory roofline does not bound such a cell (llama.cpp F32 tiny-llama, 15 MB against a
        # 300 MiB L3, read 1.3x the DRAM probe here).
        "fits_in_cache": None if not cache_bytes else bytes_per_step <= cache_bytes,
        "roofline_flag": "",
    }
    # Flagged only when even the least favourable reading exceeds 1.0: the slowest TPOT in its
    # interval against the best bandwidth probed (the point estimate where no interval is known).
    mbu_least = row["mbu_measured_low"] if row["mbu_measured_low"] is not None else row["mbu_measured"]
    if mbu_least is not None and mbu_least > 1.0 and not row["fits_in_cache"]:
        row["roofline_flag"] = (
            f"MBU {row['mbu_measured']:.2f} (at least {mbu_least:.2f}) exceeds 1.0 against the measured peak "
            f"({bandwidth_measured:.1f} GB/s): a bytes count or a timing is wrong"
        )
    return row


# -- hardware detection ---------------------------------------------------------------


def _device_names(device: str) -> tuple[str, str]:
    """The detected name, spaces collapsed, with and without its "NVIDIA " (older drivers omit it)."""
    name = " ".join(device.split())
    return name, re.sub(r"^NVIDIA ", "", name, flags=re.IGNORECASE)


def fits(entry: HardwareConfig, device: str) -> bool:
    """Whether one of the entry's `match` patterns fits the device's whole name."""
    names = _device_names(device)
    return entry.kind == "gpu" and any(re.fullmatch(p, n, re.IGNORECASE) for p in entry.match for n in names)


def check_requested_hardware(requested: HardwareConfig, gpus: list[str], catalog: list[HardwareConfig]) -> None:
    """A GPU datasheet asked for by name (hardware=NAME) must be the machine's GPU, else every MBU
    would be judged against another chip: a ConfigError that names the entry that does fit."""
    from pipeline.config import ConfigError

    if requested.kind != "gpu" or not requested.match or any(fits(requested, gpu) for gpu in gpus):
        return
    if not gpus:
        raise ConfigError(
            f"hardware={requested.name} is a GPU's datasheet but this machine has no GPU: use hardware=auto "
            "(the CPU's measured peaks), or run where that GPU is"
        )
    suggestion = select_hardware(HardwareConfig(name="auto", kind="auto"), {"gpu": gpus[0]}, catalog)
    instead = (
        f"hardware={suggestion.name}" if not suggestion.name.startswith("unlisted") else "a new conf/hardware entry"
    )
    raise ConfigError(
        f"hardware={requested.name} ({requested.source or requested.name}) does not fit this machine's GPU "
        f"{gpus[0]!r}: use hardware=auto, or {instead}"
    )


def select_hardware(requested: HardwareConfig, detected: dict, catalog: list[HardwareConfig]) -> HardwareConfig:
    """The requested entry, or for `auto` the one entry whose `match` fits the detected device's
    whole name (conf/hardware/auto.yaml): a substring search took an H200 NVL or a GH200 for an H200."""
    from pipeline.config import ConfigError

    if requested.kind != "auto":
        return requested
    device = detected.get("gpu")
    if not device:
        return next((e for e in catalog if e.kind == "cpu"), HardwareConfig(name="cpu", kind="cpu"))
    names = _device_names(device)
    hits = [entry for entry in catalog if fits(entry, device)]
    if len(hits) > 1:
        # first-listed-wins would silently judge the cell against whichever file sorts first
        raise ConfigError(
            f"GPU {device!r} fits the match of more than one conf/hardware entry: "
            f"{', '.join(e.name for e in hits)}; narrow their patterns so exactly one fits"
        )
    if hits:
        return hits[0]
    pattern = re.escape(names[1]).replace("\\ ", " ").replace("\\-", "-")
    return HardwareConfig(
        name=f"unlisted: {device}",
        kind="gpu",
        source=(
            f"no conf/hardware entry matches {device!r}: measured peaks only. To judge it against its datasheet, "
            f"add conf/hardware/NAME.yaml (kind: gpu, match: ['{pattern}'], its dense figures) or pass hardware=NAME"
        ),
    )


def compare_hardware(cfg: CellConfig, entries: list[HardwareConfig]) -> tuple[list[dict], str]:
    """The notebook's hardware comparison for one model at batch 1: each entry's ridge point
    (FLOPs per byte where compute and bandwidth meet), the model's arithmetic intensity at
    batch 1 and the batch size at the ridge, the batch-1 floor; and which is faster for decode
    at batch 1, and why."""
    shape = ModelShape.from_architecture(cfg.model.architecture)
    context = mean_decode_context(cfg.workload.input_tokens, cfg.workload.output_tokens)
    bytes_batch1 = (
        weight_bytes(shape, cfg.precision, read_per_step=True)
        + shape.kv_bytes_per_token(cfg.precision.kv_bytes) * context
    )
    intensity = shape.flops_per_token(context) / bytes_batch1  # FLOPs per byte moved, batch 1
    rows = []
    for entry in entries:
        flops = _peak_flops(entry.peak_tflops, cfg.precision)
        bandwidth = entry.memory_bandwidth_gbs and entry.memory_bandwidth_gbs * 1e9
        ridge = flops / bandwidth if flops and bandwidth else None
        rows.append(
            {
                "hardware": entry.name,
                "peak_bandwidth_gbs": entry.memory_bandwidth_gbs,
                "peak_tflops": flops and flops / 1e12,
                "ridge_flops_per_byte": ridge,
                "intensity_batch1_flops_per_byte": intensity,
                "ridge_batch_size": ridge_batch_size(shape, cfg.precision, context, entry.memory_bandwidth_gbs, flops),
                "tpot_floor_batch1_ms": bytes_batch1 / bandwidth * 1e3 if bandwidth else None,
                "bound_batch1": None if ridge is None else ("bandwidth" if intensity < ridge else "compute"),
            }
        )
    ranked = sorted((r for r in rows if r["tpot_floor_batch1_ms"]), key=lambda r: r["tpot_floor_batch1_ms"])
    if len(ranked) < 2:
        return rows, "fewer than two entries with a memory bandwidth: nothing to compare"
    best, other = ranked[0], ranked[1]
    ratio = other["tpot_floor_batch1_ms"] / best["tpot_floor_batch1_ms"]
    ridges = ", ".join(f"{r['hardware']} {r['ridge_flops_per_byte']:.0f}" for r in rows if r["ridge_flops_per_byte"])
    why = (
        f"{best['hardware']} is {ratio:.2f}x faster for batch-1 decode ({best['tpot_floor_batch1_ms']:.2f} vs "
        f"{other['tpot_floor_batch1_ms']:.2f} ms per token at best): at batch 1 the model does "
        f"{intensity:.2f} FLOPs per byte, far below every ridge point "
        f"({ridges}),"
        f" so decode is bandwidth bound and only memory bandwidth counts "
        f"({best['peak_bandwidth_gbs']:g} vs {other['peak_bandwidth_gbs']:g} GB/s); the FLOP/s matter only from "
        "the ridge batch size on"
    )
    if any(r["bound_batch1"] == "compute" for r in rows):
        why = f"{best['hardware']} has the lower batch-1 floor, but decode is compute bound on some entries at batch 1"
    return rows, why


# -- command line ------------------------------------------------------------------------


def _table(figures: dict) -> str:
    def show(value):
        if isinstance(value, float):
            return f"{value:.4g}"
        return "" if value is None else str(value)

    width = max(map(len, figures))
    return "\n".join(f"{key:<{width}}  {show(value)}" for key, value in figures.items())


def main(argv: list[str] | None = None) -> int:
    from pipeline.config import ConfigError
    from pipeline.plan.conf import ConfTree, compose_cell

    parser = argparse.ArgumentParser(
        prog="python -m pipeline.analysis.roofline",
        description="The memory-bandwidth floor of decode, and how close a measured TPOT came to it. "
        "Arguments are Hydra overrides (model=..., precision=..., hardware=..., batch_size=..., "
        "workload.input_tokens=...); nothing is run.",
    )
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--table", action="store_true", help="a readable table instead of JSON")
    parser.add_argument(
        "--params",
        type=float,
        help="a flat parameter count (e.g. 7e9) instead of the model's "
        "architecture: weights only, no KV cache (the notebook's back-of-envelope figure)",
    )
    parser.add_argument("--tpot-ms", type=float, help="a measured TPOT: adds MBU")
    parser.add_argument(
        "--compare",
        nargs="+",
        metavar="ENTRY",
        help="two or more conf/hardware entries: ridge points, batch-1 intensity and floors, and which is faster",
    )
    args = parser.parse_args(argv)
    try:
        cfg = compose_cell(args.overrides)
    except ConfigError as exc:
        parser.error(str(exc))
    if args.compare:
        tree = ConfTree()
        try:
            entries = [tree.hardware(name) for name in args.compare]
        except ConfigError as exc:
            parser.error(str(exc))
        rows, why = compare_hardware(cfg, entries)
        for row in rows:
            print(_table(row) if args.table else json.dumps(row, default=str), end="\n\n" if args.table else "\n")
        print(why)
        return 0
    hardware = cfg.hardware
    if hardware.kind == "auto":
        parser.error("name a datasheet entry: hardware=" + "|".join(e.name for e in ConfTree().hardware_entries()))
    tpot_s = args.tpot_ms / 1e3 if args.tpot_ms else None
    if args.params:
        bits = cfg.precision.bits_per_weight or cfg.precision.weight_bits
        bytes_per_step = args.params * bits / 8
        figures = {
            "params": args.params,
            "weight_bytes": bytes_per_step,
            "bytes_per_step": bytes_per_step,
            "peak_bandwidth_gbs": hardware.memory_bandwidth_gbs,
            "tpot_floor_s": bytes_per_step / (hardware.memory_bandwidth_gbs * 1e9),
        }
        if tpot_s:
            figures["mbu"] = figures["tpot_floor_s"] / tpot_s
    else:
        figures = cell_roofline(cfg, hardware, tpot_s=tpot_s)
    figures = {
        "model": "params" if args.params else cfg.model.name,
        "precision": cfg.precision.name,
        "batch_size": cfg.batch_size,
        **figures,
    }
    if "tpot_floor_s" in figures and figures["tpot_floor_s"]:
        figures["tpot_floor_ms"] = figures["tpot_floor_s"] * 1e3
    print(_table(figures) if args.table else json.dumps(figures, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
