"""A process that must not outlive its parent (Linux: prctl PR_SET_PDEATHSIG).

When Snakemake is killed outright (SIGKILL, a lost terminal, an OOM kill) nobody stops
the jobs it started: they would go on measuring and writing results beside the next run,
holding a GPU. A job's process that calls die_with_parent() gets a signal the moment its
parent dies instead: the supervisor (pipeline.run.supervisor) gets SIGTERM, stops its engine and
exits; an engine process or server gets SIGKILL (its supervisor would kill it anyway).

The signal is tied to the parent *thread*: Snakemake starts each job from a thread that
waits for it, which is what this needs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGKILL, expected_parent: int | None = None) -> bool:
    """Ask the kernel to send `sig` to this process when its parent dies; True when set.

    If the parent already died before the request (`expected_parent` is gone: the process
    was re-parented), the signal is sent at once, as the kernel would have.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            return False
    except OSError:
        return False
    if expected_parent is not None and os.getppid() != expected_parent:
        os.kill(os.getpid(), sig)
    return True
