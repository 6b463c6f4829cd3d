"""The engine process: load one engine instance, then measure cells on request.

It talks to its supervisor (pipeline.run.supervisor) over a pipe with the messages of
pipeline.run.protocol, so that a hang, a crash or an out-of-memory kill in the engine costs
one cell, never the supervisor or other cells.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import traceback

from pipeline.config import CellConfig
from pipeline.run.lifetime import die_with_parent
from pipeline.run.protocol import CellFailed, CellUnsupported, FidelityDone, LoadFailed, Ready, RunCell, RunFidelity
from pipeline.run.provenance import describe_hardware, engine_environment


def serve(conn, cell_values: dict, max_batch_size: int, threads: int | None) -> None:
    # Own process group: the supervisor can kill the engine and any helper processes it
    # spawned (vLLM, servers) with one signal.
    os.setpgrp()
    die_with_parent(signal.SIGKILL)  # a supervisor killed outright takes its engine (and server) along
    from pipeline.engines.base import CannotRun, adapter_class
    from pipeline.run.fidelity import fidelity_pass
    from pipeline.run.measure import measure_cell

    def progress(message: str) -> None:
        print(f"[engine pid {os.getpid()}] {message}", file=sys.stderr, flush=True)

    cfg = CellConfig.from_dict(cell_values)
    try:
        started = time.perf_counter()
        engine = adapter_class(cfg.engine)(cfg, max_batch_size, threads)
        engine.select_device()
        engine.load()
        load_s = time.perf_counter() - started
    except Exception as exc:  # any failure to start is reported, not raised
        conn.send(LoadFailed(f"{type(exc).__name__}: {exc}", traceback.format_exc()))
        return
    progress(
        f"{cfg.engine.name} {engine.version()} loaded {cfg.model.name} "
        f"({cfg.precision.name} -> {cfg.engine_precision}) on the {engine.device_kind or 'endpoint'} in {load_s:.1f}s"
    )
    hardware = describe_hardware()
    conn.send(
        Ready(
            load_s=load_s,
            engine_version=engine.version(),
            engine_args=engine.engine_args(),
            engine_device=engine.device_kind or "endpoint",
            engine_env=engine_environment(),
            hardware=hardware,
            peaks=_peaks(engine, hardware, threads, progress),
            weights=engine.weight_bytes(),
        )
    )

    last_probe: tuple[dict, float] | None = None
    while True:
        message = conn.recv()
        if not isinstance(message, RunCell | RunFidelity):  # Stop
            break
        cell = CellConfig.from_dict(message.config)
        try:
            if isinstance(message, RunFidelity):  # after the speed cells: nothing is timed any more
                conn.send(FidelityDone(fidelity_pass(engine, cell, message.reference)))
                continue
            probe_before, last_probe = _recent(last_probe), None
            done = measure_cell(engine, cell, progress, probe_before=probe_before, search=message.search)
            last_probe = (done.probes[-1], time.monotonic()) if done.probes else None
            conn.send(done)
        except CannotRun as exc:
            conn.send(CellUnsupported(str(exc)))
        except Exception as exc:  # an OOM at one batch size must not end the others
            alive = engine.alive()  # False: its server died; the supervisor starts a fresh engine
            conn.send(CellFailed(f"{type(exc).__name__}: {exc}", traceback.format_exc(), alive))
            if not alive:
                break
    engine.close()


# The probe after one cell is the probe before the next when only the supervisor's message came
# in between (batch sizes of one start are measured back to back): one probe less per cell.
PROBE_REUSE_S = 5.0


def _recent(last_probe: tuple[dict, float] | None) -> dict | None:
    if last_probe is None or "error" in last_probe[0] or time.monotonic() - last_probe[1] > PROBE_REUSE_S:
        return None
    return {**last_probe[0], "after_previous_cell": True}


def _peaks(engine, hardware: dict, threads: int | None, progress) -> dict:
    """The machine's measured peaks on the engine's device (cached per machine); never fatal."""
    target = engine.probe_target()
    if target is None:
        return {}
    device, dtype = target
    try:
        from pipeline.run.probes import cached_peaks

        peaks = cached_peaks(device, hardware.get("gpu") or hardware["cpu"], dtype, threads)
    except Exception as exc:  # a failed probe costs the MBU column, not the cell
        return {"error": f"{type(exc).__name__}: {exc}"}
    progress(
        f"peaks on {device} ({'cached' if peaks['cached'] else 'measured'}): "
        f"{peaks['bandwidth_gbs']:.1f} GB/s, {peaks['matmul_tflops']:.3f} TFLOP/s {dtype}"
    )
    return peaks
