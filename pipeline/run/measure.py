"""Run one cell's workload on a loaded engine: warm-up until steady, then repeats (a fixed
number, or until the headline intervals are narrow enough) of full-batch waves (in-process
engines) or of streamed requests under a load pattern (server engines)."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable

from pipeline.config import CellConfig
from pipeline.engines.base import Engine, RequestResult
from pipeline.run.host import host_noise, host_sample
from pipeline.run.probes import measure_bandwidth
from pipeline.run.prompts import make_prompts, waves
from pipeline.run.protocol import CellDone
from pipeline.stats import first_is_outlier, headline_intervals, relative_half_width, steady


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


class Rounds:
    """One round = the cell's measured requests once: full-batch waves (in-process engines) or
    streamed requests under the cell's load (server engines). Warm-up and repeats are rounds."""

    def __init__(self, engine: Engine, cell: CellConfig):
        workload, bs = cell.workload, cell.batch_size
        self.engine, self.workload, self.batch_size = engine, workload, bs
        self.vocab = engine.vocab_size()
        self.clients: list[dict] = []
        if engine.serves_streams:
            from pipeline.engines.client import Load

            self.load = Load(
                concurrency=bs,
                request_rate=workload.request_rate,
                processes=workload.client_processes,
                seed=workload.seed,
                timeout_s=workload.timeout_s,
            )
        elif workload.request_rate is not None:
            raise ValueError(
                "workload.request_rate (open-loop arrivals) needs a server engine (engine=<name>_server or openai)"
            )

    def _prompts(self, count: int, stream: str) -> list[list[int]]:
        w = self.workload
        return make_prompts(count, w.input_tokens, self.vocab, w.seed, f"bs{self.batch_size}/{stream}")

    def run(self, requests: int, stream: str) -> list[dict]:
        """At least `requests` requests (whole batches), as records; distinct prompts per stream."""
        engine, bs, out = self.engine, self.batch_size, self.workload.output_tokens
        records = []
        if engine.serves_streams:
            results, client = engine.stream(self._prompts(waves(requests, bs) * bs, stream), out, self.load)
            self.clients.append(client)
            for index, result in enumerate(results):
                records.append({**self._record(result), "wave": None, "request": index})
            return records
        for wave in range(waves(requests, bs)):
            for index, result in enumerate(engine.generate(self._prompts(bs, f"{stream}/w{wave}"), out)):
                records.append({**self._record(result), "wave": wave, "request": wave * bs + index})
        return records

    def probe(self, load: float, index: int) -> list[dict]:
        """One probe of the load search (pipeline.run.load_search): its requests at this load, as
        records; prompts unique to the probe, never those of warm-up or repeats."""
        from pipeline.engines.client import Load
        from pipeline.run.load_search import probe_requests

        search, w = self.workload.search_config, self.workload
        closed = search.over == "concurrency"
        pattern = Load(
            concurrency=int(load) if closed else self.batch_size,  # open loop: at most the cell's batch in flight
            request_rate=None if closed else load,
            processes=w.client_processes,
            seed=w.seed + index,
            timeout_s=w.timeout_s,
        )
        prompts = self._prompts(probe_requests(search, load, w.num_requests), f"search/{index}")
        results, client = self.engine.stream(prompts, w.output_tokens, pattern)
        if client["saturated"]:
            self.clients.append(client)  # the cell's client figures say so
        return [self._record(result) for result in results]

    def _record(self, result: RequestResult) -> dict:
        return request_record(result, self.engine.count_tokens, self.workload.input_tokens)

    def describe(self, count: int) -> str:
        if not self.engine.serves_streams:
            return f"{waves(count, self.batch_size)} wave(s) of {self.batch_size}"
        rate = self.workload.request_rate
        pattern = f"{rate:g} req/s" if rate else f"{self.batch_size} in flight"
        busy = " (the client was saturated: add workload.client_processes)" if self.clients[-1]["saturated"] else ""
        return f"{waves(count, self.batch_size) * self.batch_size} requests, {pattern}{busy}"

    def client(self) -> dict | None:
        if not self.clients:
            return None
        return {
            "processes": self.clients[0]["processes"],
            "cpu_share_max": max(c["cpu_share"] for c in self.clients),
            "max_loop_lag_s": max(c["max_loop_lag_s"] for c in self.clients),
            "saturated": any(c["saturated"] for c in self.clients),
        }


def step_time(records: list[dict]) -> float | None:
    """A round's step time: the median TPOT of its successful requests."""
    tpots = [r["tpot_s"] for r in records if r["success"] and r["tpot_s"] is not None]
    return statistics.median(tpots) if tpots else None


def warm_up(rounds: Rounds, workload, progress) -> dict:
    """Warm-up rounds until two in a row agree on step time (pipeline.stats.steady), at most
    workload.warmup_max_rounds; none when warmup_requests is 0."""
    steps: list[float] = []
    if not workload.warmup_requests:
        return {"rounds": 0, "step_s": [], "steady": None}
    for index in range(workload.warmup_max_rounds):
        step = step_time(rounds.run(max(workload.warmup_requests, rounds.batch_size), f"warmup/{index}"))
        if step is None:  # failing requests: the measured repeats will say so
            break
        steps.append(step)
        if steady(steps, workload.steady_tolerance):
            break
    settled = steady(steps, workload.steady_tolerance)
    if not settled:
        progress(f"warm-up did not settle in {len(steps)} round(s): step times {[round(s * 1e3, 2) for s in steps]} ms")
    return {"rounds": len(steps), "step_s": steps, "steady": settled}


def measure_repeats(rounds: Rounds, workload, progress) -> tuple[list[dict], dict]:
    """Repeats as the policy says (pipeline.config.RepeatPolicy), each one round of
    workload.num_requests. A first repeat that is an outlier (pipeline.stats.first_is_outlier)
    is discarded and run once more: its records stay, marked `discarded`."""
    policy = workload.repeat_policy
    kept: list[list[dict]] = []
    discarded: list[int] = []
    started = time.perf_counter()
    widths: dict[str, float | None] = {}
    stop = "fixed"
    all_records: list[dict] = []
    while True:
        repeat = len(kept) + len(discarded)
        records = rounds.run(workload.num_requests, f"r{repeat}")
        for record in records:
            record.update(repeat=repeat, discarded=False)
        all_records.extend(records)
        kept.append(records)
        total = f"/{policy.max}" if not policy.adaptive else f" (of {policy.min}-{policy.max})"
        progress(f"repeat {len(kept)}{total}: {rounds.describe(workload.num_requests)}")
        steps = [step_time(k) for k in kept]
        if not discarded and None not in steps and first_is_outlier(steps, workload.steady_tolerance):
            progress(
                f"first repeat's step time {steps[0] * 1e3:.2f} ms is outside the others' "
                f"({min(steps[1:]) * 1e3:.2f}-{max(steps[1:]) * 1e3:.2f} ms): discarded and run again"
            )
            first = kept.pop(0)
            for record in first:
                record["discarded"] = True
            discarded.append(first[0]["repeat"])
            continue
        if len(kept) < policy.min:
            continue
        if not policy.adaptive:
            break
        intervals = headline_intervals([r for k in kept for r in k])
        widths = {name: relative_half_width(interval) for name, interval in intervals.items()}
        if all(w is not None and w <= policy.target for w in widths.values()):
            stop = "converged"
            break
        if len(kept) >= policy.max:
            stop = "max"
            break
        if policy.budget_s is not None and time.perf_counter() - started >= policy.budget_s:
            stop = "budget"
            break
    summary = {
        "run": len(kept) + len(discarded),
        "kept": len(kept),
        "discarded": discarded,
        "stop": stop,  # fixed | converged | max | budget
        "converged": stop == "converged" if policy.adaptive else None,
        "half_widths": widths,  # relative, of the headline figures when the repeats stopped (adaptive only)
    }
    if policy.adaptive:
        shown = ", ".join(f"{k} {'?' if w is None else f'{w:.1%}'}" for k, w in widths.items())
        progress(f"repeats stopped ({stop}) after {len(kept)}: 95% half-widths {shown}")
    return all_records, summary


def measure_cell(
    engine: Engine, cell: CellConfig, progress=print, probe_before: dict | None = None, search: bool = False
) -> CellDone:
    """Records of the measured requests plus the cell's timing breakdown: the bandwidth probe,
    warm-up until steady, the repeats, the probe again; the host's noise over the cell.
    probe_before: the probe taken just after the previous cell, when nothing ran in between.
    search: this cell also runs the instance's load search (workload.search), after its repeats."""
    workload = cell.workload
    rounds = Rounds(engine, cell)
    if probe_before is None:
        probe_before = cell_probe(engine, progress)
    host_before = host_sample()
    engine.reset_peak_memory()
    prepare_s = engine.prepare(cell.batch_size, workload.input_tokens, workload.output_tokens)  # off the clock
    if prepare_s is not None:
        progress(f"prepared batch size {cell.batch_size} in {prepare_s:.1f}s")
    started = time.perf_counter()
    warmup = warm_up(rounds, workload, progress)
    warmup_s = time.perf_counter() - started
    measure_start = time.perf_counter()
    cache_before = engine.prefix_cache_counters()
    records, repeats = measure_repeats(rounds, workload, progress)
    measure_s = time.perf_counter() - measure_start
    prefix_cache = cache_use(cache_before, engine.prefix_cache_counters())
    found = None
    if search and workload.search_config is not None:
        from pipeline.run.load_search import search_load

        progress(f"load search: {workload.search_config.describe()} against {workload.slo_config.describe()}")
        found = search_load(rounds.probe, workload.search_config, workload.slo_config, progress)
    peak_bytes, peak_kind = engine.peak_memory()  # before the probe's buffers
    host = host_noise(host_before, host_sample())
    probe_after = cell_probe(engine, progress)
    # Times relative to the start of measurement: readable, and comparable across cells.
    for record in records:
        for key in ("t_send", "t_end"):
            if record[key] is not None:
                record[key] -= measure_start
    return CellDone(
        records,
        warmup_s,
        measure_s,
        peak_bytes,
        peak_kind,
        client=rounds.client(),
        prepare_s=prepare_s,
        steady={"warmup": warmup, "repeats": repeats},
        host=host,
        probes=[p for p in (probe_before, probe_after) if p is not None],
        search=found,
        prefix_cache=prefix_cache,
    )


def cache_use(before: dict | None, after: dict | None) -> dict | None:
    """What the engine's prefix cache did over the measured repeats (its counters' increase)."""
    if before is None or after is None:
        return None
    return {key: after[key] - before[key] for key in ("queries", "hits")}


def cell_probe(engine: Engine, progress) -> dict | None:
    """The memory bandwidth on the engine's device, next to the cell (never fatal)."""
    target = engine.probe_target()
    if target is None:
        return None
    try:
        # Smaller and shorter than the load-time probe: it runs twice per cell, and beside a loaded
        # engine memory to spare is scarce. 512 MiB still dwarfs the caches (300 MiB of L3 here):
        # on this host it read 20.4 GB/s against 22.2 GB/s for 1 GiB.
        probe = measure_bandwidth(target[0], engine.threads, copy_bytes=512 << 20, repeats=2)
    except Exception as exc:  # a failed probe costs the cell's measured MBU, not the cell
        progress(f"bandwidth probe failed: {type(exc).__name__}: {exc}")
        return {"error": f"{type(exc).__name__}: {exc}"}
    return probe
