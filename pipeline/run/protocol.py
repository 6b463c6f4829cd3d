"""The messages between the supervisor (pipeline.run.supervisor) and its engine process
(pipeline.run.engine_process), sent over a multiprocessing pipe.

supervisor -> engine: RunCell per cell, RunFidelity once after them (workload.fidelity), then Stop.
engine -> supervisor: Ready or LoadFailed once; then CellDone, CellUnsupported or CellFailed per RunCell;
FidelityDone, CellUnsupported or CellFailed for RunFidelity.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RunCell:
    config: dict  # CellConfig.to_dict()
    search: bool = False  # also run the instance's load search (workload.search) in this cell


@dataclass(frozen=True)
class RunFidelity:
    config: dict  # CellConfig.to_dict() of one of the instance's cells
    reference: str  # the model's fidelity reference (pipeline.run.fidelity)


@dataclass(frozen=True)
class Stop:
    pass


@dataclass(frozen=True)
class Ready:
    load_s: float
    engine_version: str
    engine_args: dict  # what the engine was really started with
    engine_env: dict  # environment variables that change its behaviour
    engine_device: str  # cpu | gpu | endpoint: which engine.devices settings were used
    hardware: dict  # the machine, as detected in the engine's process
    peaks: dict  # measured on the engine's device (empty, or {"error": ...}, when not)
    weights: dict | None  # exact weight bytes from the engine's file, where it says


@dataclass(frozen=True)
class LoadFailed:
    error: str
    traceback: str


@dataclass(frozen=True)
class CellDone:
    records: list[dict]
    warmup_s: float
    measure_s: float
    peak_mem_bytes: int | None
    peak_mem_kind: str
    client: dict | None = None  # server engines: could the client keep up?
    prepare_s: float | None = None  # what the engine did once for this shape before warm-up (a compile)
    steady: dict | None = None  # {"warmup": rounds until steady, "repeats": how many and why they stopped}
    host: dict | None = None  # the machine's steal time and load over the cell (pipeline.run.host)
    probes: list | None = None  # memory bandwidth measured just before and after the cell
    search: dict | None = None  # the load search's result and probes (pipeline.run.load_search)
    prefix_cache: dict | None = None  # the server's prefix-cache counters over the repeats: {queries, hits}


@dataclass(frozen=True)
class FidelityDone:
    record: dict  # pipeline.run.fidelity.fidelity_pass: the engine's values for the reference's tokens


@dataclass(frozen=True)
class CellUnsupported:
    reason: str  # the engine cannot run this cell's shape; it serves the others


@dataclass(frozen=True)
class CellFailed:
    error: str
    traceback: str
    engine_alive: bool  # False: the engine cannot serve another cell (its server died)


EngineMessage = Ready | LoadFailed | CellDone | FidelityDone | CellUnsupported | CellFailed
SupervisorMessage = RunCell | RunFidelity | Stop
__all__ = [
    "CellDone",
    "CellFailed",
    "CellUnsupported",
    "EngineMessage",
    "FidelityDone",
    "LoadFailed",
    "Ready",
    "RunCell",
    "RunFidelity",
    "Stop",
    "SupervisorMessage",
]
