"""One engine instance (engine x model x precision) measuring every batch size asked of it.

    python -m pipeline.run.supervisor --engine hf --model tiny-llama --precision bf16 --batch-sizes 1,4 \
        --summaries DIR/bs1/summary.json DIR/bs4/summary.json [-- workload.output_tokens=16 ...]

This process is a light supervisor: it composes each cell's config, starts the engine in
a child process (pipeline.run.engine_process), hands it one batch size at a time with the cell's
timeout, and writes each cell's result as soon as it is known. A timeout or a crash ends
that cell (status `timeout`/`error`) and a fresh engine process takes the next one, so
every finished cell is kept. The engine process is killed with its whole process group on
any exit, so nothing is left holding a GPU.

With --gpus N the instance first takes N GPU slots of its own (pipeline.run.gpu_slots; under
SLURM the scheduler's assignment is used) and gives its engine exactly those devices;
without GPUs it takes --threads cores of its own and pins itself and its engine to them
(pipeline.run.cpu_slots).
If the process that started it (Snakemake) dies, even by SIGKILL, it gets SIGTERM
(pipeline.run.lifetime) and stops its engine: an interrupted workflow leaves nothing running.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import signal
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from pipeline.config import CellConfig, ConfigError
from pipeline.engines.base import adapter_class
from pipeline.models.paths import fidelity_reference_path
from pipeline.models.shape import model_architecture
from pipeline.plan.conf import measurement_digest
from pipeline.results.schema import ERROR, OK, TIMEOUT, UNSUPPORTED, Cell, CellResult
from pipeline.results.store import FIDELITY_FILE, write_cell, write_json
from pipeline.run.cpu_slots import pin_cores
from pipeline.run.engine_process import serve
from pipeline.run.fidelity import no_distributions
from pipeline.run.gpu_slots import NoGpuSlots, acquire, scheduler_devices
from pipeline.run.lifetime import die_with_parent
from pipeline.run.protocol import (
    CellDone,
    CellFailed,
    CellUnsupported,
    FidelityDone,
    LoadFailed,
    Ready,
    RunCell,
    RunFidelity,
    Stop,
)
from pipeline.run.provenance import describe_hardware, git_sha


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _log(message: str) -> None:
    print(f"[instance] {message}", file=sys.stderr, flush=True)


@dataclass
class _EngineProcess:
    """The running engine process, its pipe, and what it said when it was ready."""

    process: multiprocessing.Process
    conn: object
    ready: Ready


def _kill_group(process: multiprocessing.Process) -> None:
    if process.pid is None:
        return
    for kill in (os.killpg, os.kill):  # the group first: helpers the engine spawned go too
        with contextlib.suppress(ProcessLookupError, PermissionError):
            kill(process.pid, signal.SIGKILL)
    process.join(timeout=10)


class EngineFailure(RuntimeError):
    def __init__(self, status: str, message: str, traceback: str = ""):
        super().__init__(message)
        self.status = status
        self.traceback = traceback


def _receive(conn, process, timeout_s: float, what: str):
    """The worker's next message, or EngineFailure on timeout or death."""
    if not conn.poll(timeout_s):
        raise EngineFailure(TIMEOUT, f"{what} exceeded its timeout of {timeout_s:g}s; the engine was killed")
    try:
        return conn.recv()
    except (EOFError, ConnectionResetError):
        process.join(timeout=5)
        code = process.exitcode
        hint = " (killed: out of memory?)" if code in (-signal.SIGKILL, 137) else ""
        raise EngineFailure(ERROR, f"the engine process died during {what} (exit code {code}){hint}") from None


class InstanceRunner:
    def __init__(
        self,
        cells: list[Cell],
        out_dirs: dict[int, Path],
        configs: dict[int, CellConfig | str],
        overrides: list[str],
        threads: int | None,
        instance_dir: Path | None = None,
    ):
        self.cells = cells
        self.instance_dir = instance_dir
        self.out_dirs = out_dirs
        self.configs = configs
        self.overrides = overrides
        self.threads = threads
        self.engine: _EngineProcess | None = None
        self._process: multiprocessing.Process | None = None  # tracked from its start, so it is always killed
        self.engine_starts = 0
        self.start_failure: EngineFailure | None = None
        self.cell_reports: list[dict] = []
        self.startup_overhead_s = 0.0
        self.gpu_devices: str | None = None  # CUDA_VISIBLE_DEVICES given to the engine, when GPUs were asked
        self.cpu_affinity: list[int] | None = None  # the cores the engine is pinned to (CPU jobs)
        self.measured: dict[Cell, Measured] = {}  # what each cell's engine starts measured so far
        self.finished: set[Cell] = set()  # cells no further engine start measures
        self.searched = False  # the instance's load search (workload.search) runs once, in the first cell that finishes
        self.measured_ok: dict[Cell, CellResult] = {}  # cells whose latest result is ok: they carry the fidelity pass
        self.start_method: str | None = None  # forkserver | spawn, chosen at the first engine start

    # -- engine process -------------------------------------------------------------
    def _context(self, cfg: CellConfig):
        """How engine processes are started: forked from a forkserver that imported the adapter's
        `preload` modules once, so that the instance's further starts (workload.instance_starts,
        a fresh engine after a crash) skip the imports; else spawned. Each start is still a new
        process that loads its own weights: the process-to-process spread the starts sample is the
        same (hf tiny-llama bf16 at batch 1, six starts forked from one server: 3.3-7.0 ms per token;
        six spawned: 3.8-6.2 ms). Engines whose conf sets device environment variables are spawned:
        those must be set before their library is imported."""
        if self.start_method is None:
            try:
                preload = adapter_class(cfg.engine).preload
            except Exception:  # an adapter that cannot be imported: the engine process says why
                preload = ()
            device_env = any(d.env for d in cfg.engine.devices.values()) or bool(cfg.engine.settings_for(None).env)
            self.start_method = "forkserver" if preload and not device_env else "spawn"
            if self.start_method == "forkserver":
                multiprocessing.get_context("forkserver").set_forkserver_preload(list(preload))
        return multiprocessing.get_context(self.start_method)

    def _start_engine(self, cfg: CellConfig) -> _EngineProcess:
        context = self._context(cfg)
        parent, child = context.Pipe()
        max_bs = max(c.batch_size for c in self.cells)
        search = cfg.workload.search_config
        if search is not None and search.over == "concurrency":
            max_bs = max(max_bs, int(search.max))  # the server's own limit must not cap the search
        process = context.Process(target=serve, args=(child, cfg.to_dict(), max_bs, self.threads))
        started = time.perf_counter()
        process.start()
        self._process = process
        child.close()  # so that the worker's death reads as EOF here
        self.engine_starts += 1
        _log(
            f"starting engine process {process.pid} ({cfg.engine.name}, {cfg.model.name}, {cfg.precision.name}; "
            f"{self.start_method})"
        )
        # a grace period past load_timeout_s: an engine that times out its own start says more about why
        message = _receive(parent, process, cfg.engine.load_timeout_s + 30, "engine start")
        if isinstance(message, LoadFailed):
            _log(f"engine failed to start:\n{message.traceback}")
            raise EngineFailure(ERROR, f"engine failed to start: {message.error}", message.traceback)
        _log(f"engine ready in {time.perf_counter() - started:.1f}s (load {message.load_s:.1f}s)")
        return _EngineProcess(process, parent, message)

    def _stop_engine(self) -> None:
        if self.engine is not None:
            with contextlib.suppress(OSError):
                self.engine.conn.send(Stop())
                self.engine.process.join(timeout=30)
        self.kill_engine()

    def kill_engine(self) -> None:
        if self._process is not None:
            _kill_group(self._process)
        self._process = self.engine = None

    # -- cells ------------------------------------------------------------------------
    def _result(self, cell: Cell, cfg: CellConfig | None, status: str, error: str = "", **measured) -> CellResult:
        """What the job knows of a cell: axes, status, the config, what it measured, provenance."""
        ready = self.engine.ready if self.engine is not None and status != UNSUPPORTED else None
        if ready is not None:
            measured = {
                "load_s": ready.load_s,
                "engine_version": ready.engine_version,
                "engine_args": ready.engine_args,
                "engine_env": ready.engine_env,
                "engine_device": ready.engine_device,
                "hardware": ready.hardware,
                "peaks": ready.peaks,
                "weights": ready.weights,
                **measured,
            }
        architecture = None
        if cfg is not None and not cfg.model.architecture:  # the roofline needs a shape: the model's own
            architecture, _ = model_architecture(cfg.model, cfg.models_dir)
        config = cfg.to_dict() if cfg else None
        return CellResult(
            cell_id=cell.cell_id,
            **cell.axes(),
            status=status,
            error=error,
            config=config,
            digest=measurement_digest(config) if config else "",
            overrides=list(self.overrides),
            engine_precision=cfg.engine_precision if cfg else None,
            architecture=architecture,
            hardware=measured.pop("hardware", None) or describe_hardware(),
            gpu_devices=self.gpu_devices,
            cpu_affinity=self.cpu_affinity,
            git_sha=git_sha(),
            finished_at=_now(),
            **measured,
        )

    def _write(self, cell: Cell, result: CellResult, records: list[dict] = ()) -> None:
        write_cell(self.out_dirs[cell.batch_size], result, list(records))
        keys = ("cell_id", "status", "load_s", "warmup_s", "measure_s", "cell_wall_s", "engine_start")
        self.cell_reports.append({k: getattr(result, k) for k in keys})
        detail = result.error
        tpots = [r["tpot_s"] for r in records if r["success"] and r["tpot_s"] is not None]
        if result.status == OK and tpots:  # progress only: the statistics are collect's
            detail = f"median TPOT {statistics.median(tpots) * 1e3:.2f} ms over {len(records)} requests"
        _log(f"{cell.cell_id}: {result.status} {detail}")

    def run(self, process_started: float) -> None:
        first = next((c for c in self.configs.values() if isinstance(c, CellConfig)), None)
        starts = first.workload.instance_starts if first is not None else 1
        for start in range(starts):
            if start:
                self._stop_engine()  # each start is a fresh engine process (workload.instance_starts)
                _log(f"engine start {start + 1} of {starts} (workload.instance_starts)")
            for cell in self.cells:
                if cell in self.finished:  # failed, unsupported or invalid: no further start measures it
                    continue
                self._run_checked(cell, process_started, start)
        if first is not None and first.workload.fidelity_config.enabled and self.measured_ok:
            self._record_fidelity(first)
        self._stop_engine()

    # -- the fidelity pass, once per instance after its speed cells ------------------------
    def _record_fidelity(self, cfg: CellConfig) -> None:
        """Run the pass, write its record beside the cell directories, and note it in every ok cell."""
        started = time.perf_counter()
        try:
            status, reason, record = self._fidelity_pass(cfg)
        except Exception as exc:  # a bug in the pass costs the pass, never the cells measured before it
            _log(traceback.format_exc())
            self.kill_engine()
            status, reason, record = ERROR, f"internal error: {type(exc).__name__}: {exc}", None
        entry = {"status": status, "reason": reason, "pass_s": time.perf_counter() - started}
        record_path = None
        if record is not None:
            record_path = (self.instance_dir or self.out_dirs[self.cells[0].batch_size]) / FIDELITY_FILE
            write_json(record_path, record)
        _log(f"fidelity: {status} {reason}".rstrip() + f" ({entry['pass_s']:.1f}s)")
        for cell, result in self.measured_ok.items():
            out_dir = self.out_dirs[cell.batch_size]
            noted = {**entry, "file": os.path.relpath(record_path, out_dir)} if record_path else entry
            write_json(out_dir / "summary.json", {**result.to_dict(), "fidelity": noted})

    def _fidelity_pass(self, cfg: CellConfig) -> tuple[str, str, dict | None]:
        if cfg.engine.fidelity is None:  # said without starting an engine
            return UNSUPPORTED, no_distributions(cfg.engine.name), None
        reference = fidelity_reference_path(cfg.model, cfg.models_dir)
        try:
            if self.engine is None:  # the last cell ended its engine: a fresh one for the pass
                self.engine = self._start_engine(cfg)
            self.engine.conn.send(RunFidelity(cfg.to_dict(), str(reference)))
            message = _receive(self.engine.conn, self.engine.process, cfg.workload.timeout_s, "the fidelity pass")
        except EngineFailure as failure:
            self.kill_engine()
            return ERROR, str(failure), None
        if isinstance(message, FidelityDone):
            return OK, "", message.record
        if isinstance(message, CellUnsupported):
            return UNSUPPORTED, message.reason, None
        _log(getattr(message, "traceback", ""))
        return ERROR, getattr(message, "error", f"unexpected reply {type(message).__name__}"), None

    def _run_checked(self, cell: Cell, process_started: float, start: int) -> None:
        cfg = self.configs.get(cell.batch_size)
        if isinstance(cfg, str):  # the cell's config did not validate
            self._finish(cell, self._result(cell, None, ERROR, cfg))
            return
        reason = cfg.engine.unsupported_reason(cfg.precision.name, cell.batch_size)
        if reason:
            self._finish(cell, self._result(cell, cfg, UNSUPPORTED, reason))
            return
        try:
            self._run_cell(cell, cfg, process_started, start)
        except Exception as exc:  # a bug here must still leave every cell a record
            trace = traceback.format_exc()
            _log(trace)
            self.kill_engine()
            error = f"internal error: {type(exc).__name__}: {exc}"
            self._finish(cell, self._result(cell, cfg, ERROR, error, traceback=trace))

    def _finish(self, cell: Cell, result: CellResult) -> None:
        """A cell that is done for good, short of what was asked: the requests earlier starts
        measured are kept with it."""
        self.finished.add(cell)
        earlier = self.measured.get(cell)
        self._write(cell, result, earlier.records if earlier else [])

    def _run_cell(self, cell: Cell, cfg: CellConfig, process_started: float, start: int) -> None:
        cell_started = time.perf_counter()
        try:
            if self.start_failure is not None:
                # a start failure is not about batch size: do not pay a load (or its timeout) per cell
                raise self.start_failure
            if self.engine is None:
                try:
                    self.engine = self._start_engine(cfg)
                except EngineFailure as failure:
                    self.start_failure = failure
                    raise
                if self.engine_starts == 1:
                    # imports, config, process spawn: everything before the first cell minus loading
                    self.startup_overhead_s = time.perf_counter() - process_started - self.engine.ready.load_s
                cell_started = time.perf_counter()
            search = cfg.workload.search_config is not None and not self.searched
            timeout_s = cfg.workload.timeout_s
            if search:  # the search may start a probe just before its budget ends
                timeout_s += cfg.workload.search_config.budget_s + cfg.workload.timeout_s
            self.engine.conn.send(RunCell(cfg.to_dict(), search=search))
            message = _receive(self.engine.conn, self.engine.process, timeout_s, f"cell {cell.cell_id}")
        except EngineFailure as failure:
            self.kill_engine()
            result = self._result(
                cell, cfg, failure.status, str(failure), traceback=failure.traceback, engine_start=self.engine_starts
            )
            self._finish(cell, result)
            return
        if isinstance(message, CellUnsupported):
            self._finish(cell, self._result(cell, cfg, UNSUPPORTED, message.reason, engine_start=self.engine_starts))
            return
        if isinstance(message, CellFailed):
            _log(message.traceback)
            result = self._result(
                cell, cfg, ERROR, message.error, traceback=message.traceback, engine_start=self.engine_starts
            )
            if not message.engine_alive:
                self.kill_engine()  # the engine cannot go on (its server died): the next cell starts a fresh one
            self._finish(cell, result)
            return
        cell_wall_s = time.perf_counter() - cell_started
        prepared = message.prepare_s or 0.0
        overhead_s = cell_wall_s - prepared - message.warmup_s - message.measure_s
        if start == 0:  # the process's own start-up, shared by its cells once
            overhead_s += self.startup_overhead_s / len(self.cells)
        total = self.measured.setdefault(cell, Measured())
        total.add(message, start, cell_wall_s, overhead_s)
        if message.search is not None:
            self.searched = True
            total.search = message.search
        failed = sum(not r["success"] for r in total.records)
        status = OK if failed == 0 else ERROR
        error = "" if status == OK else f"{failed} of {len(total.records)} requests failed"
        result = self._result(
            cell,
            cfg,
            status,
            error,
            compile_s=total.prepare_s,
            warmup_s=total.warmup_s,
            measure_s=total.measure_s,
            cell_wall_s=total.cell_wall_s,
            overhead_s=total.overhead_s,
            peak_mem_bytes=total.peak_mem_bytes,
            peak_mem_kind=message.peak_mem_kind,
            client=total.client,
            starts=total.starts,
            cell_probes=total.probes,
            search=total.search,
            prefix_cache=total.prefix_cache,
            engine_start=self.engine_starts,
        )
        if status != OK:
            self.finished.add(cell)
            self.measured_ok.pop(cell, None)
        else:
            self.measured_ok[cell] = result
        self._write(cell, result, total.records)


@dataclass
class Measured:
    """One cell's measurements over the engine starts so far (workload.instance_starts)."""

    records: list[dict] = field(default_factory=list)
    starts: list[dict] = field(default_factory=list)
    probes: list[dict] = field(default_factory=list)
    prepare_s: float | None = None
    warmup_s: float = 0.0
    measure_s: float = 0.0
    cell_wall_s: float = 0.0
    overhead_s: float = 0.0
    peak_mem_bytes: int | None = None
    client: dict | None = None
    search: dict | None = None  # the instance's load search, when this cell ran it
    prefix_cache: dict | None = None  # the server's prefix-cache counters over the repeats, summed over starts

    def add(self, done: CellDone, start: int, cell_wall_s: float, overhead_s: float) -> None:
        offset = 1 + max((r["repeat"] for r in self.records), default=-1)  # repeats stay unique in the cell
        for record in done.records:
            record.update(start=start, repeat=record["repeat"] + offset)
        self.records += done.records
        self.starts.append({**(done.steady or {}), "host": done.host})
        self.probes += done.probes or []
        if done.prefix_cache is not None:
            earlier = self.prefix_cache or {"queries": 0.0, "hits": 0.0}
            self.prefix_cache = {key: earlier[key] + done.prefix_cache[key] for key in earlier}
        if done.prepare_s is not None:
            self.prepare_s = (self.prepare_s or 0.0) + done.prepare_s
        self.warmup_s += done.warmup_s
        self.measure_s += done.measure_s
        self.cell_wall_s += cell_wall_s
        self.overhead_s += overhead_s
        peaks = [p for p in (self.peak_mem_bytes, done.peak_mem_bytes) if p is not None]
        self.peak_mem_bytes = max(peaks) if peaks else None
        if done.client is not None:
            previous = self.client or done.client
            self.client = {
                **done.client,
                "cpu_share_max": max(previous["cpu_share_max"], done.client["cpu_share_max"]),
                "max_loop_lag_s": max(previous["max_loop_lag_s"], done.client["max_loop_lag_s"]),
                "saturated": previous["saturated"] or done.client["saturated"],
            }


def compose_cells(cells: list[Cell], overrides: list[str], out_dirs: dict[int, Path]) -> dict[int, CellConfig | str]:
    """Each cell's config, or the validation message that stops it."""
    from pipeline.plan.conf import compose_cell, to_override

    configs: dict[int, CellConfig | str] = {}
    for cell in cells:
        axes = [
            f"engine={cell.engine}",
            f"model={cell.model}",
            f"precision={cell.precision}",
            f"batch_size={cell.batch_size}",
            to_override("out_dir", str(out_dirs[cell.batch_size])),
        ]
        try:
            configs[cell.batch_size] = compose_cell([*overrides, *axes])
        except ConfigError as exc:
            configs[cell.batch_size] = f"invalid configuration: {exc}"
    return configs


def _process_start_time() -> float:
    """This process's start on the perf_counter clock (so imports count as overhead)."""
    try:
        import psutil

        return time.perf_counter() - (time.time() - psutil.Process().create_time())
    except ImportError:
        return time.perf_counter()


def main(argv: list[str] | None = None) -> int:
    process_started = _process_start_time()
    die_with_parent(signal.SIGTERM, expected_parent=os.getppid())
    parser = argparse.ArgumentParser(prog="python -m pipeline.run.supervisor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--precision", required=True)
    parser.add_argument("--batch-sizes", required=True, help="comma-separated, e.g. 1,4,16")
    parser.add_argument(
        "--summaries", required=True, nargs="+", type=Path, help="each batch size's summary.json, in the same order"
    )
    parser.add_argument(
        "--attempt-file", type=Path, help="also write the instance's report here (the workflow's record)"
    )
    parser.add_argument("--threads", type=int, default=None, help="engine threads (default: engine.threads)")
    parser.add_argument("--gpus", type=int, default=0, help="GPUs of its own for the engine (default 0: none taken)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every cell (after --)")
    args = parser.parse_args(argv)
    try:
        sizes = [int(s) for s in args.batch_sizes.split(",")]
    except ValueError:
        parser.error(f"--batch-sizes must be comma-separated integers, got {args.batch_sizes!r}")
    if len(sizes) != len(args.summaries) or len(set(sizes)) != len(sizes):
        parser.error("give one --summaries path per batch size, and each batch size once")
    cells = [Cell(args.engine, args.model, args.precision, bs) for bs in sizes]
    out_dirs = {bs: path.parent for bs, path in zip(sizes, args.summaries, strict=True)}
    run_instance(
        cells,
        out_dirs,
        list(args.overrides),
        args.threads,
        process_started,
        instance_dir=args.summaries[0].parent.parent,
        gpus=args.gpus,
        attempt_file=args.attempt_file,
    )
    return 0


def claim_gpus(gpus: int, runner: InstanceRunner, holder: str):
    """GPUs of this instance's own, exported as CUDA_VISIBLE_DEVICES for its engine process.

    Returns the slot lease to hold while the engine runs (None when nothing was taken).
    """
    if gpus <= 0:
        return None
    assigned = scheduler_devices()
    if assigned is not None:
        runner.gpu_devices = assigned
        _log(f"GPUs assigned by SLURM: CUDA_VISIBLE_DEVICES={assigned}")
        return None
    try:
        lease = acquire(gpus, holder=holder, say=_log)
    except NoGpuSlots as exc:
        sys.exit(f"[instance] {exc}")
    runner.gpu_devices = ",".join(lease.devices)
    os.environ["CUDA_VISIBLE_DEVICES"] = runner.gpu_devices  # the spawned engine process inherits it
    _log(f"GPU slot(s) taken: CUDA_VISIBLE_DEVICES={runner.gpu_devices}")
    return lease


def run_instance(
    cells: list[Cell],
    out_dirs: dict[int, Path],
    overrides: list[str],
    threads: int | None,
    process_started: float,
    instance_dir: Path | None = None,
    gpus: int = 0,
    attempt_file: Path | None = None,
) -> InstanceRunner:
    """Measure every cell of one engine instance; write each cell's result, and the instance's
    report to instance_dir/instance.json (and attempt_file, the workflow's record of this attempt)."""
    configs = compose_cells(cells, overrides, out_dirs)
    first = next((c for c in configs.values() if isinstance(c, CellConfig)), None)
    if first is not None and first.engine.threads:
        threads = first.engine.threads
    runner = InstanceRunner(cells, out_dirs, configs, overrides, threads, instance_dir)

    def on_signal(signum, frame):
        _log(f"received signal {signum}: stopping the engine; finished cells are kept")
        runner.kill_engine()
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    holder = "/".join(cells[0].instance) + f" in {os.getcwd()}"
    lease = claim_gpus(gpus, runner, holder)
    cores = None
    if not gpus and threads:  # a CPU benchmark: cores of its own (a GPU job's threads only feed its GPU)
        cores, runner.cpu_affinity = pin_cores(threads, holder, say=_log)
        _log(f"engine pinned to cores {runner.cpu_affinity}")
    try:
        runner.run(process_started)
    finally:
        runner.kill_engine()
        for held in (lease, cores):
            if held is not None:
                held.release()
    cell = cells[0]
    report = {
        "engine": cell.engine,
        "model": cell.model,
        "precision": cell.precision,
        "batch_sizes": [c.batch_size for c in cells],
        "engine_starts": runner.engine_starts,
        "engine_start_method": runner.start_method,
        "startup_overhead_s": runner.startup_overhead_s,
        "gpu_devices": runner.gpu_devices,
        "process_wall_s": time.perf_counter() - process_started,
        "cells": runner.cell_reports,
        "finished_at": _now(),
    }
    for path in (instance_dir and instance_dir / "instance.json", attempt_file):
        if path is not None:
            write_json(path, report)
    return runner


if __name__ == "__main__":
    sys.exit(main())
