"""A CPU benchmark job runs on cores of its own: the engine process is pinned to them.

Snakemake's `threads` says how many cores a job may use, never which: two jobs of two
threads on a four-core machine may both land on cores 0-1, and the scheduler moves an
engine's threads between cores mid-measurement. Here a job takes `threads` core slots
(lock files held with flock, as pipeline.run.gpu_slots does for GPUs, so a crashed job's
cores come back by themselves) from the cores this process may run on, and pins itself to
them; the engine process it spawns inherits the placement, and so does the bandwidth probe
measured beside each cell. Under SLURM the scheduler's cgroup already placed the job: the
cores are only recorded.

    LLM_BENCH_CPU_LOCK_DIR   where the slots live (default: one directory per machine)
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

from pipeline.run.gpu_slots import Lease, acquire

LOCK_DIR_ENV = "LLM_BENCH_CPU_LOCK_DIR"


def lock_dir(environ: Mapping[str, str] = os.environ) -> Path:
    return Path(environ.get(LOCK_DIR_ENV) or Path(tempfile.gettempdir()) / "llm-infer-bench-cpu-slots")


def pin_cores(
    count: int, holder: str = "", say: Callable[[str], None] | None = None, environ: Mapping[str, str] = os.environ
) -> tuple[Lease | None, list[int]]:
    """(the lease to hold while the engine runs, the cores this process is now pinned to)."""
    allowed = sorted(os.sched_getaffinity(0))
    if environ.get("SLURM_JOB_ID"):
        return None, allowed
    count = max(1, min(count, len(allowed)))
    lease = acquire(count, [str(c) for c in allowed], lock_dir(environ), holder, say=say, prefix="cpu")
    cores = sorted(int(c) for c in lease.devices)
    os.sched_setaffinity(0, cores)
    return lease, cores
