"""Which read-only pass measures the most memory bandwidth: one stream (a sum) or two (a dot
product of the buffer's halves, the probe's read pass in pipeline.run.probes)? Not a test.

    python tests/benchmarks/bench_read_probe.py [--threads 1] [--rounds 20]

Each round takes the better of two passes of each kernel over a 512 MiB buffer (the size of the
probe beside every cell), sum and dot back to back so that both see the host's same moment.
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    size = 512 << 20
    buffer = torch.ones(size // 4)
    half = buffer.numel() // 2
    first, second = buffer[:half], buffer[half:]
    kernels = {"sum": lambda: buffer.sum(), "dot": lambda: torch.dot(first, second)}

    def gbs(kernel) -> float:
        started = time.perf_counter()
        kernel()
        return size / (time.perf_counter() - started) / 1e9

    for kernel in kernels.values():
        kernel()  # first touch
    best = {name: [] for name in kernels}
    for _ in range(args.rounds):
        for name, kernel in kernels.items():
            best[name].append(max(gbs(kernel) for _ in range(2)))
    for name, values in best.items():
        print(f"{name}: best {max(values):.1f} GB/s, median of rounds {statistics.median(values):.1f}")
    ratios = [d / s for s, d in zip(best["sum"], best["dot"], strict=True)]
    print(
        f"dot / sum per round: median {statistics.median(ratios):.3f} "
        f"(min {min(ratios):.3f}, max {max(ratios):.3f}), {args.threads} thread(s)"
    )


if __name__ == "__main__":
    main()
