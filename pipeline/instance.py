"""One engine instance (engine x model x precision) measuring every batch size asked of it.

    python -m pipeline.instance --engine hf --model tiny-llama --precision bf16 --batch-sizes 1,4 \
        --summaries DIR/bs1/summary.json DIR/bs4/summary.json [-- workload.output_tokens=16 ...]

This process is a light supervisor: it composes each cell's config, starts the engine in
a child process (pipeline.worker), hands it one batch size at a time with the cell's
timeout, and writes each cell's result as soon as it is known. A timeout or a crash ends
that cell (status `timeout`/`error`) and a fresh engine process takes the next one, so
every finished cell is kept. The engine process is killed with its whole process group on
any exit, so nothing is left holding a GPU.

With --gpus N the instance first takes N GPU slots of its own (pipeline.gpu_slots; under
SLURM the scheduler's assignment is used) and gives its engine exactly those devices.
If the process that started it (Snakemake) dies, even by SIGKILL, it gets SIGTERM
(pipeline.lifetime) and stops its engine: an interrupted workflow leaves nothing running.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pipeline.compose import CONF_DIR, conf_digest
from pipeline.config import CellConfig, ConfigError
from pipeline.environment import describe_hardware, git_sha
from pipeline.gpu_slots import NoGpuSlots, acquire, scheduler_devices
from pipeline.lifetime import die_with_parent
from pipeline.metrics import summarize
from pipeline.planner import Cell
from pipeline.results import ERROR, OK, TIMEOUT, UNSUPPORTED, write_cell, write_json
from pipeline.roofline import cell_roofline, hardware_catalog, select_hardware
from pipeline.worker import serve


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _log(message: str) -> None:
    print(f"[instance] {message}", file=sys.stderr, flush=True)


@dataclass
class _EngineProcess:
    """The running worker: its process, its pipe, and what its start cost."""

    process: multiprocessing.Process
    conn: object
    load_s: float
    engine_version: str
    hardware: dict
    peaks: dict
    weights: dict | None


def _kill_group(process: multiprocessing.Process) -> None:
    if process.pid is None:
        return
    for kill in (os.killpg, os.kill):  # the group first: helpers the engine spawned go too
        with contextlib.suppress(ProcessLookupError, PermissionError):
            kill(process.pid, signal.SIGKILL)
    process.join(timeout=10)


class EngineFailure(RuntimeError):
    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status = status


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
    ):
        self.cells = cells
        self.out_dirs = out_dirs
        self.configs = configs
        self.overrides = overrides
        self.threads = threads
        self.engine: _EngineProcess | None = None
        self._process: multiprocessing.Process | None = None  # tracked from its start, so it is always killed
        self.engine_starts = 0
        self.start_failure: EngineFailure | None = None
        self.cell_reports: list[dict] = []
        self.catalog = hardware_catalog(CONF_DIR)
        self.startup_overhead_s = 0.0
        self.gpu_devices: str | None = None  # CUDA_VISIBLE_DEVICES given to the engine, when GPUs were asked

    # -- engine process -------------------------------------------------------------
    def _start_engine(self, cfg: CellConfig) -> _EngineProcess:
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        max_bs = max(c.batch_size for c in self.cells)
        process = context.Process(target=serve, args=(child, cfg.to_dict(), max_bs, self.threads))
        started = time.perf_counter()
        process.start()
        self._process = process
        child.close()  # so that the worker's death reads as EOF here
        self.engine_starts += 1
        _log(f"starting engine process {process.pid} ({cfg.engine.name}, {cfg.model.name}, {cfg.precision.name})")
        # a grace period past load_timeout_s: an engine that times out its own start says more about why
        message = _receive(parent, process, cfg.engine.load_timeout_s + 30, "engine start")
        if message[0] != "ready":
            raise EngineFailure(ERROR, f"engine failed to start: {message[1]}")
        info = message[1]
        _log(f"engine ready in {time.perf_counter() - started:.1f}s (load {info['load_s']:.1f}s)")
        return _EngineProcess(
            process, parent, info["load_s"], info["engine_version"], info["hardware"], info["peaks"], info["weights"]
        )

    def _stop_engine(self) -> None:
        if self.engine is not None:
            with contextlib.suppress(OSError):
                self.engine.conn.send(("stop",))
                self.engine.process.join(timeout=30)
        self.kill_engine()

    def kill_engine(self) -> None:
        if self._process is not None:
            _kill_group(self._process)
        self._process = self.engine = None

    # -- cells ------------------------------------------------------------------------
    def _summary(
        self,
        cell: Cell,
        cfg: CellConfig | None,
        status: str,
        error: str = "",
        metrics: dict | None = None,
        hardware: dict | None = None,
        peaks: dict | None = None,
        weights: dict | None = None,
        **extra,
    ) -> dict:
        metrics, hardware, peaks = metrics or {}, hardware or describe_hardware(), peaks or {}
        roofline = {}
        if cfg is not None:  # the floor is known even for a cell that failed
            entry = select_hardware(cfg.hardware, hardware, self.catalog)
            roofline = cell_roofline(
                cfg, entry, peaks, metrics.get("tpot_s_p50"), metrics.get("ttft_s_p50"), weights=weights
            )
        return {
            "cell_id": cell.cell_id,
            **cell.axes(),
            "status": status,
            "error": error,
            "metrics": metrics,
            "roofline": roofline,
            "peaks": peaks,
            "hardware": hardware,
            "engine_precision": cfg.engine_precision if cfg else None,
            "overrides": self.overrides,
            "conf_digest": conf_digest(cell.engine, cell.model, cell.precision),
            "git_sha": git_sha(),
            "gpu_devices": self.gpu_devices,
            "finished_at": _now(),
            **extra,
            "config": cfg.to_dict() if cfg else None,
        }

    def _write(self, cell: Cell, summary: dict, records: list[dict] = ()) -> None:
        write_cell(self.out_dirs[cell.batch_size], summary, list(records))
        self.cell_reports.append(
            {
                k: summary.get(k)
                for k in ("cell_id", "status", "load_s", "warmup_s", "measure_s", "cell_wall_s", "engine_start")
            }
        )
        detail = summary["error"]
        if summary["status"] == OK:
            metrics, mbu = summary["metrics"], summary["roofline"].get("mbu_measured")
            detail = f"TPOT p50 {metrics['tpot_s_p50'] * 1e3:.2f} ms, {metrics['output_tok_s']:.1f} tok/s"
            detail += f", MBU {mbu:.0%} of the measured peak" if mbu is not None else ""
        _log(f"{cell.cell_id}: {summary['status']} {detail}")

    def run(self, process_started: float) -> None:
        for cell in self.cells:
            cfg = self.configs.get(cell.batch_size)
            if isinstance(cfg, str):  # the cell's config did not validate
                self._write(cell, self._summary(cell, None, ERROR, cfg))
                continue
            reason = cfg.engine.unsupported_reason(cfg.precision.name, cell.batch_size)
            if reason:
                self._write(cell, self._summary(cell, cfg, UNSUPPORTED, reason))
                continue
            try:
                self._run_cell(cell, cfg, process_started)
            except Exception as exc:  # a bug here must still leave every cell a record
                _log(traceback.format_exc())
                self.kill_engine()
                self._write(cell, self._summary(cell, cfg, ERROR, f"internal error: {type(exc).__name__}: {exc}"))
        self._stop_engine()

    def _run_cell(self, cell: Cell, cfg: CellConfig, process_started: float) -> None:
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
                    self.startup_overhead_s = time.perf_counter() - process_started - self.engine.load_s
                cell_started = time.perf_counter()
            self.engine.conn.send(("run", cfg.to_dict()))
            message = _receive(self.engine.conn, self.engine.process, cfg.workload.timeout_s, f"cell {cell.cell_id}")
        except EngineFailure as failure:
            self.kill_engine()
            self._write(
                cell,
                self._summary(
                    cell,
                    cfg,
                    failure.status,
                    str(failure),
                    engine_start=self.engine_starts,
                ),
            )
            return
        engine = self.engine
        common = dict(
            engine_version=engine.engine_version,
            hardware=engine.hardware,
            peaks=engine.peaks,
            weights=engine.weights,
            load_s=engine.load_s,
            engine_start=self.engine_starts,
        )
        if message[0] == "failed":
            _log(message[2])
            if not message[3]:
                self.kill_engine()  # the engine cannot go on (its server died): the next cell starts a fresh one
            self._write(cell, self._summary(cell, cfg, ERROR, message[1], **common))
            return
        result = message[1]
        cell_wall_s = time.perf_counter() - cell_started
        overhead_s = cell_wall_s - result["warmup_s"] - result["measure_s"] + self.startup_overhead_s / len(self.cells)
        metrics = summarize(result["records"])
        status = OK if metrics["requests_failed"] == 0 else ERROR
        error = "" if status == OK else f"{metrics['requests_failed']} of {metrics['requests']} requests failed"
        self._write(
            cell,
            self._summary(
                cell,
                cfg,
                status,
                error,
                metrics=metrics,
                warmup_s=result["warmup_s"],
                measure_s=result["measure_s"],
                cell_wall_s=cell_wall_s,
                overhead_s=overhead_s,
                peak_mem_bytes=result["peak_mem_bytes"],
                peak_mem_kind=result["peak_mem_kind"],
                client=result.get("client"),  # server engines: was the client itself the bottleneck?
                **common,
            ),
            result["records"],
        )


def compose_cells(cells: list[Cell], overrides: list[str], out_dirs: dict[int, Path]) -> dict[int, CellConfig | str]:
    """Each cell's config, or the validation message that stops it."""
    from pipeline.compose import compose_cell, to_override

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
    parser = argparse.ArgumentParser(prog="python -m pipeline.instance", description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--precision", required=True)
    parser.add_argument("--batch-sizes", required=True, help="comma-separated, e.g. 1,4,16")
    parser.add_argument(
        "--summaries", required=True, nargs="+", type=Path, help="each batch size's summary.json, in the same order"
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
) -> InstanceRunner:
    """Measure every cell of one engine instance; write each cell's result and instance.json."""
    configs = compose_cells(cells, overrides, out_dirs)
    first = next((c for c in configs.values() if isinstance(c, CellConfig)), None)
    if first is not None and first.engine.threads:
        threads = first.engine.threads
    runner = InstanceRunner(cells, out_dirs, configs, overrides, threads)

    def on_signal(signum, frame):
        _log(f"received signal {signum}: stopping the engine; finished cells are kept")
        runner.kill_engine()
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    lease = claim_gpus(gpus, runner, holder="/".join(cells[0].instance) + f" in {os.getcwd()}")
    try:
        runner.run(process_started)
    finally:
        runner.kill_engine()
        if lease is not None:
            lease.release()
    if instance_dir is not None:
        cell = cells[0]
        write_json(
            instance_dir / "instance.json",
            {
                "engine": cell.engine,
                "model": cell.model,
                "precision": cell.precision,
                "batch_sizes": [c.batch_size for c in cells],
                "engine_starts": runner.engine_starts,
                "startup_overhead_s": runner.startup_overhead_s,
                "gpu_devices": runner.gpu_devices,
                "process_wall_s": time.perf_counter() - process_started,
                "cells": runner.cell_reports,
                "finished_at": _now(),
            },
        )
    return runner


if __name__ == "__main__":
    sys.exit(main())
