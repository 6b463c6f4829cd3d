"""Run one cell's workload on a loaded engine: warmup, then repeats of full-batch waves."""

from __future__ import annotations

import time

from pipeline.config import CellConfig
from pipeline.engines.base import Engine
from pipeline.metrics import request_record
from pipeline.workload import make_prompts, warmup_waves, waves


def measure_cell(engine: Engine, cell: CellConfig, progress=print) -> dict:
    """Records of the measured requests plus the cell's timing breakdown.

    batch_size prompts are submitted together per wave; warmup waves run first and are
    not recorded. Each repeat sends at least workload.num_requests requests.
    """
    workload, bs = cell.workload, cell.batch_size
    vocab = engine.vocab_size()

    def batch(stream: str) -> list[list[int]]:
        return make_prompts(bs, workload.input_tokens, vocab, workload.seed, f"bs{bs}/{stream}")

    engine.reset_peak_memory()
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

    # Times relative to the start of measurement: readable, and comparable across cells.
    for record in records:
        for key in ("t_send", "t_end"):
            if record[key] is not None:
                record[key] -= measure_start
    peak_bytes, peak_kind = engine.peak_memory()
    return {
        "records": records,
        "warmup_s": warmup_s,
        "measure_s": measure_s,
        "peak_mem_bytes": peak_bytes,
        "peak_mem_kind": peak_kind,
    }
