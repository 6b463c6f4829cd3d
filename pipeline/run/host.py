"""How busy the machine was while a cell ran: CPU time stolen by the hypervisor (serving
other guests), CPU time used by everything else on the machine (all of it minus the engine's
own process tree), and the load average, from /proc/stat.

A shared host's noise is data: a cell measured while another job took half the CPU says so
in its row, instead of leaving an unexplained slow repeat.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import psutil

PROC_STAT = Path("/proc/stat")
# /proc/stat's aggregate cpu line: user nice system idle iowait irq softirq steal (guest time is in user)
FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    """CPU seconds used so far by this process and its live descendants (an engine's server)."""
    me = psutil.Process()
    total = 0.0
    for process in (me, *me.children(recursive=True)):
        try:
            times = process.cpu_times()
        except psutil.Error:  # a child that just ended
            continue
        total += times.user + times.system
    return total


def host_sample(proc_stat: Path = PROC_STAT) -> dict | None:
    """The machine's cumulative CPU times, the engine's own, and the load average now; None
    where /proc/stat is missing."""
    try:
        first = proc_stat.read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    times = dict(zip(FIELDS, map(int, first[1 : 1 + len(FIELDS)]), strict=False))
    return {"times": times, "own_cpu_s": own_cpu_s(), "load_1m": os.getloadavg()[0], "at": time.monotonic()}


def host_noise(before: dict | None, after: dict | None) -> dict | None:
    """Shares of the machine's CPU time between two samples: stolen, and busy with anything
    but the engine (clamped at 0: the two clocks tick apart)."""
    if before is None or after is None:
        return None
    delta = {k: after["times"].get(k, 0) - before["times"].get(k, 0) for k in FIELDS}
    total = sum(delta.values())
    if total <= 0:
        return None
    busy = total - delta["idle"] - delta["iowait"] - delta["steal"]
    own = (after["own_cpu_s"] - before["own_cpu_s"]) * TICKS_PER_S
    return {
        "steal_share": delta["steal"] / total,
        "other_busy_share": max(0.0, busy - own) / total,
        "load_1m": max(before["load_1m"], after["load_1m"]),
        "cpus": os.cpu_count(),
        "seconds": after["at"] - before["at"],
    }
