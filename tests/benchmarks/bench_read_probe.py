"""Which read-only pass measures the most memory bandwidth: one stream (a sum) or two (a dot
product of the buffer's halves, the probe's read pass in pipeline.run.probes)? Not a test.

    python tests/benchmarks/bench_read_probe.py [--threads 1] [--rounds 20]

Each round is one probe as it runs beside every cell (pipeline.run.probes.measure_bandwidth: a
512 MiB buffer, two timed passes of each kernel, sum and dot back to back so that both see the
host's same moment); printed: each read kernel's best pass per round, and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pipeline.run.probes import measure_bandwidth  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    best = {"sum": [], "dot": []}
    for _ in range(args.rounds):  # the probe's own passes, its two read kernels back to back
        found = measure_bandwidth("cpu", args.threads, copy_bytes=512 << 20, repeats=2)["read_kernels_gbs"]
        for name in best:
            best[name].append(found[name])
    for name, values in best.items():
        print(f"{name}: best {max(values):.1f} GB/s, median of rounds {statistics.median(values):.1f}")
    ratios = [d / s for s, d in zip(best["sum"], best["dot"], strict=True)]
    print(
        f"dot / sum per round: median {statistics.median(ratios):.3f} "
        f"(min {min(ratios):.3f}, max {max(ratios):.3f}), {args.threads} thread(s)"
    )


if __name__ == "__main__":
    main()
