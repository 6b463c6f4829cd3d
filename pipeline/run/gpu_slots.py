"""Each running engine instance gets GPUs of its own on one machine.

Snakemake's `--resources gpu=N` bounds how many GPU jobs run at once but never says which
GPU each job may use (snakemake issue #281): without help, every job sees every GPU and
they all load onto device 0. Here a job takes *slots*: one lock file per device in a
directory every workflow on the machine shares, held with an exclusive `fcntl.flock` for
as long as the job's process lives. The kernel drops a flock when its process ends in any
way (exit, exception, SIGKILL, the OOM killer), so a crashed job's GPU comes back by
itself: there is no state to clean up and nothing goes stale. The job then exports
CUDA_VISIBLE_DEVICES for its engine process.

Which devices are slots: LLM_BENCH_GPU_SLOTS ("0,1,3" device ids, or a count "4" for
0..3: a single number there is always a count, so "2" means devices 0 and 1, never device 2
alone; write "2," for that); unset, the CUDA_VISIBLE_DEVICES Snakemake was started with, read
as CUDA reads it (always device ids, "3" is device 3; indices, GPU- UUIDs or MIG- ids; the list
ends at the first invalid entry such as "-1", a repeated entry hides every device), else
`nvidia-smi -L`.
Under SLURM the scheduler already gave the job its GPUs (and set CUDA_VISIBLE_DEVICES):
no slots are taken there.

    python -m pipeline.run.gpu_slots      # which slots are held, and by whom
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

SLOTS_ENV = "LLM_BENCH_GPU_SLOTS"
LOCK_DIR_ENV = "LLM_BENCH_GPU_LOCK_DIR"


class NoGpuSlots(RuntimeError):
    """More GPUs are asked per job than this machine has slots."""


def lock_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """Shared by every workflow on the machine (the default is per machine, not per workdir)."""
    return Path(environ.get(LOCK_DIR_ENV) or Path(tempfile.gettempdir()) / "llm-infer-bench-gpu-slots")


def _slot_setting(value: str) -> list[str]:
    """LLM_BENCH_GPU_SLOTS: device ids, or one number as a count (documented above)."""
    value = value.strip()
    if value.isdigit():
        return [str(i) for i in range(int(value))]
    return [d.strip() for d in value.split(",") if d.strip()]


def _valid_cuda_id(entry: str) -> bool:
    return entry.isdigit() or entry.startswith(("GPU-", "MIG-"))


def cuda_visible_ids(value: str) -> list[str]:
    """The device ids CUDA_VISIBLE_DEVICES names, in order, as CUDA reads them (never a count)."""
    ids: list[str] = []
    for entry in (e.strip() for e in value.split(",")):
        if not _valid_cuda_id(entry):
            break  # CUDA ignores the rest of the list from the first invalid entry ("-1", "")
        if entry in ids:
            return []  # a repeated device makes CUDA (and torch) see none at all
        ids.append(entry)
    return ids


def configured_slots(environ: Mapping[str, str] = os.environ) -> list[str]:
    """The device ids jobs on this machine share, in order."""
    if environ.get(SLOTS_ENV, "").strip():
        return _slot_setting(environ[SLOTS_ENV])
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return cuda_visible_ids(visible)
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        listing = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(line for line in listing.splitlines() if line.startswith("GPU "))]


def scheduler_devices(environ: Mapping[str, str] = os.environ) -> str | None:
    """The GPUs a SLURM job was given (SLURM sets CUDA_VISIBLE_DEVICES itself), else None."""
    if not environ.get("SLURM_JOB_ID"):
        return None
    if environ.get("SLURM_JOB_GPUS") or environ.get("SLURM_STEP_GPUS"):
        return environ.get("CUDA_VISIBLE_DEVICES", "")
    return None


@dataclass
class Lease:
    """The slots one process holds; they are freed by release() or by the process's end."""

    devices: list[str]
    _fds: list[int] = field(default_factory=list, repr=False)

    def release(self) -> None:
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)  # closing the only descriptor drops the flock
        self._fds.clear()

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _open_slot(directory: Path, device: str, prefix: str) -> int:
    return os.open(directory / f"{prefix}-{device}.lock", os.O_RDWR | os.O_CREAT, 0o666)


def _try_lock(directory: Path, device: str, prefix: str = "gpu") -> int | None:
    fd = _open_slot(directory, device, prefix)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _prepare(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(PermissionError):  # shared by every user's workflows on the machine
        directory.chmod(0o1777)


def try_acquire(count: int, slots: list[str], directory: Path, holder: str = "", prefix: str = "gpu") -> Lease | None:
    """`count` free slots at once, or None (then nothing is held). prefix names the lock files
    (gpu-0.lock; pipeline.run.cpu_slots takes cores the same way, cpu-0.lock)."""
    _prepare(directory)
    taken: list[tuple[str, int]] = []
    for device in slots:
        fd = _try_lock(directory, device, prefix)
        if fd is None:
            continue
        taken.append((device, fd))
        if len(taken) == count:
            break
    lease = Lease([d for d, _ in taken], [fd for _, fd in taken])
    if len(taken) < count:
        lease.release()
        return None
    for fd in lease._fds:  # who holds it, for `python -m pipeline.run.gpu_slots` (diagnostics only)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {holder}\n".encode(), 0)
    return lease


def acquire(
    count: int,
    slots: list[str] | None = None,
    directory: Path | None = None,
    holder: str = "",
    poll_s: float = 0.2,
    say: Callable[[str], None] | None = None,
    say_every_s: float = 60.0,
    prefix: str = "gpu",
) -> Lease:
    """Wait for `count` free slots and hold them. Waiting happens only when more GPU jobs run
    than there are slots (no `--resources gpu=N`, or other workflows on the same machine)."""
    slots = configured_slots() if slots is None else slots
    directory = lock_dir() if directory is None else directory
    if count > len(slots):
        raise NoGpuSlots(
            f"{count} GPU(s) asked per job but this machine has {len(slots)} GPU slot(s) "
            f"({', '.join(slots) or 'none found'}); set {SLOTS_ENV} (device ids or a count)"
        )
    waited_since = time.monotonic()
    said = waited_since
    while True:
        lease = try_acquire(count, slots, directory, holder, prefix)
        if lease is not None:
            return lease
        if say is not None and time.monotonic() - said >= say_every_s:
            said = time.monotonic()
            say(f"waiting {said - waited_since:.0f}s for {count} free {prefix} slot(s) of {len(slots)} in {directory}")
        time.sleep(poll_s)


def holders(slots: list[str], directory: Path) -> dict[str, str | None]:
    """Each slot's holder ("pid what"), or None when it is free."""
    held: dict[str, str | None] = {}
    if not directory.is_dir():
        return dict.fromkeys(slots)
    for device in slots:
        fd = _try_lock(directory, device)
        if fd is not None:
            os.close(fd)
            held[device] = None
        else:
            held[device] = (directory / f"gpu-{device}.lock").read_text().strip() or "?"
    return held


def main() -> int:
    slots, directory = configured_slots(), lock_dir()
    if not slots:
        print(f"no GPU slots on this machine (set {SLOTS_ENV})")
        return 0
    for device, holder in holders(slots, directory).items():
        print(f"GPU {device}: {'free' if holder is None else 'held by pid ' + holder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
