"""Peak resident memory of this process, resettable per cell (Linux /proc)."""

from __future__ import annotations

import contextlib
import resource
from pathlib import Path


def reset_peak_rss() -> None:
    # Writing 5 to clear_refs resets VmHWM (Linux >= 4.0), so each cell gets its own peak.
    with contextlib.suppress(OSError):  # then the peak is the process's lifetime peak
        Path("/proc/self/clear_refs").write_text("5")


def peak_rss_bytes() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    except (OSError, ValueError):
        return None
