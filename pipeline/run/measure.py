"""Run one cell's workload on a loaded engine: warmup, then repeats of full-batch waves
(in-process engines) or of streamed requests under a load pattern (server engines)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from pipeline.config import CellConfig
from pipeline.engines.base import Engine, RequestResult
from pipeline.run.prompts import make_prompts, warmup_waves, waves
from pipeline.run.protocol import CellDone


def request_record(result: RequestResult, count_tokens: Callable[[str], int], input_tokens: int) -> dict:
    """One row of requests.csv; metrics that were not measured stay None, never 0."""
    record = {
        "success": result.success,
        "error": result.error,
        "input_tokens": result.input_tokens if result.input_tokens is not None else input_tokens,
        "output_tokens": result.output_tokens,
        "output_tokens_retok": None,
        "chunks": len(result.chunk_times),
        "tokens_per_chunk": None,
        "tokens_counted_by": result.counted_by,
        "ttft_s": None,
        "e2e_s": None,
        "tpot_s": None,
        "itl_s": "[]",
        "words": None,
        "t_send": result.t_send,
        "t_end": None,
    }
    if not result.success or not result.chunk_times:
        record["success"] = False
        record["error"] = result.error or "no output tokens received"
        return record
    first, last = result.chunk_times[0], result.chunk_times[-1]
    gaps = [b - a for a, b in zip(result.chunk_times, result.chunk_times[1:], strict=False)]
    tokens = result.output_tokens if result.output_tokens is not None else sum(result.chunk_tokens)
    record.update(
        output_tokens=tokens,
        output_tokens_retok=count_tokens(result.text),
        tokens_per_chunk=tokens / len(result.chunk_times),
        ttft_s=first - result.t_send,
        e2e_s=last - result.t_send,
        tpot_s=(last - first) / (tokens - 1) if tokens > 1 else None,
        itl_s=json.dumps(gaps),
        words=len(result.text.split()),
        t_end=last,
    )
    return record


def measure_cell(engine: Engine, cell: CellConfig, progress=print) -> CellDone:
    """Records of the measured requests plus the cell's timing breakdown.

    batch_size prompts are submitted together per wave; warmup waves run first and are
    not recorded. Each repeat sends at least workload.num_requests requests.
    """
    if engine.serves_streams:
        return measure_streams(engine, cell, progress)
    if cell.workload.request_rate is not None:
        raise ValueError(
            "workload.request_rate (open-loop arrivals) needs a server engine (engine=<name>_server or openai)"
        )
    workload, bs = cell.workload, cell.batch_size
    vocab = engine.vocab_size()

    def batch(stream: str) -> list[list[int]]:
        return make_prompts(bs, workload.input_tokens, vocab, workload.seed, f"bs{bs}/{stream}")

    engine.reset_peak_memory()
    prepare_s = engine.prepare(bs, workload.input_tokens, workload.output_tokens)  # e.g. a compile, off the clock
    if prepare_s is not None:
        progress(f"prepared batch size {bs} in {prepare_s:.1f}s")
    started = time.perf_counter()
    for wave in range(warmup_waves(workload, bs)):
        engine.generate(batch(f"warmup/{wave}"), workload.output_tokens)
    warmup_s = time.perf_counter() - started

    records = []
    measure_start = time.perf_counter()
    n_waves = waves(workload.num_requests, bs)
    for repeat in range(workload.repeats):
        for wave in range(n_waves):
            results = engine.generate(batch(f"r{repeat}/w{wave}"), workload.output_tokens)
            for index, result in enumerate(results):
                record = request_record(result, engine.count_tokens, workload.input_tokens)
                record.update(repeat=repeat, wave=wave, request=wave * bs + index)
                records.append(record)
        progress(f"repeat {repeat + 1}/{workload.repeats}: {n_waves} wave(s) of {bs}")
    measure_s = time.perf_counter() - measure_start

    return _result(engine, records, warmup_s, measure_s, measure_start, prepare_s=prepare_s)


def measure_streams(engine, cell: CellConfig, progress=print) -> CellDone:
    """A server engine: per repeat, the same number of requests as the offline waves, sent by the
    streaming client either closed loop (batch_size in flight) or open loop (request_rate)."""
    from pipeline.engines.client import Load

    workload, bs = cell.workload, cell.batch_size
    load = Load(
        concurrency=bs,
        request_rate=workload.request_rate,
        processes=workload.client_processes,
        seed=workload.seed,
        timeout_s=workload.timeout_s,
    )
    vocab = engine.vocab_size()

    def prompts(count: int, stream: str) -> list[list[int]]:
        return make_prompts(count, workload.input_tokens, vocab, workload.seed, f"bs{bs}/{stream}")

    engine.reset_peak_memory()
    started = time.perf_counter()
    if workload.warmup_requests:
        engine.stream(prompts(max(workload.warmup_requests, bs), "warmup"), workload.output_tokens, load)
    warmup_s = time.perf_counter() - started

    records, clients = [], []
    measure_start = time.perf_counter()
    count = waves(workload.num_requests, bs) * bs
    for repeat in range(workload.repeats):
        results, client = engine.stream(prompts(count, f"r{repeat}"), workload.output_tokens, load)
        clients.append(client)
        for index, result in enumerate(results):
            record = request_record(result, engine.count_tokens, workload.input_tokens)
            record.update(repeat=repeat, wave=None, request=index)
            records.append(record)
        pattern = f"{workload.request_rate:g} req/s" if workload.request_rate else f"{bs} in flight"
        busy = " (the client was saturated: add workload.client_processes)" if client["saturated"] else ""
        progress(f"repeat {repeat + 1}/{workload.repeats}: {count} requests, {pattern}{busy}")
    measure_s = time.perf_counter() - measure_start
    client = {
        "processes": clients[0]["processes"],
        "cpu_share_max": max(c["cpu_share"] for c in clients),
        "max_loop_lag_s": max(c["max_loop_lag_s"] for c in clients),
        "saturated": any(c["saturated"] for c in clients),
    }
    return _result(engine, records, warmup_s, measure_s, measure_start, client)


def _result(
    engine: Engine,
    records: list[dict],
    warmup_s: float,
    measure_s: float,
    measure_start: float,
    client=None,
    prepare_s: float | None = None,
) -> CellDone:
    # Times relative to the start of measurement: readable, and comparable across cells.
    for record in records:
        for key in ("t_send", "t_end"):
            if record[key] is not None:
                record[key] -= measure_start
    peak_bytes, peak_kind = engine.peak_memory()
    return CellDone(records, warmup_s, measure_s, peak_bytes, peak_kind, client, prepare_s)
