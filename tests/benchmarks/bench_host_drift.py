"""One engine process, many rounds over a minute: does its speed move while the process lives?
(a benchmark, not a test: what it prints is this host's noise, not a property of the code)

    python tests/benchmarks/bench_host_drift.py [--model tiny-llama] [--precision bf16] [--seconds 60]

Loads the hf adapter once (models/<model> must exist: `snakemake --cores 2` builds it), then runs
rounds of one request of 16 tokens at batch 1 back to back, each followed by a short bandwidth probe
(pipeline.run.probes) and a fixed in-cache matmul (the CPU's own speed, no memory traffic).
Printed per window of a few seconds: the median TPOT and its range, the probe's bandwidth and the
matmul's time. If the windows differ as much as fresh engine processes do, the spread that
workload.instance_starts samples is the host's speed over time, not something each process
brings with it (README: Noise).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from pipeline.engines.base import adapter_class  # noqa: E402
from pipeline.plan.conf import compose_cell  # noqa: E402
from pipeline.run.probes import measure_bandwidth  # noqa: E402
from pipeline.run.prompts import make_prompts  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny-llama")
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--window", type=float, default=5.0, help="seconds per printed window")
    args = parser.parse_args()
    cell = compose_cell(
        ["engine=hf", f"model={args.model}", f"precision={args.precision}", "batch_size=1", "out_dir=/tmp/drift"]
    )
    engine = adapter_class(cell.engine)(cell, 1, args.threads)
    engine.select_device()
    engine.load()
    import torch

    square = torch.randn(256, 256)
    prompts = make_prompts(1, 64, engine.vocab_size(), 0, "drift")
    rows = []
    started = time.perf_counter()
    while time.perf_counter() - started < args.seconds:
        (result,) = engine.generate(prompts, 16)
        tpot = (result.chunk_times[-1] - result.chunk_times[0]) / (len(result.chunk_times) - 1)
        bandwidth = measure_bandwidth("cpu", args.threads, copy_bytes=128 << 20, repeats=1)["bandwidth_gbs"]
        matmul_started = time.perf_counter()
        for _ in range(100):
            square @ square
        rows.append((time.perf_counter() - started, tpot, bandwidth, time.perf_counter() - matmul_started))
    print(
        f"hf {args.model} {args.precision}, batch 1, {args.threads} thread(s): {len(rows)} rounds in {args.seconds:g} s"
    )
    windows: dict[int, list[tuple]] = {}
    for row in rows:
        windows.setdefault(int(row[0] // args.window), []).append(row)
    medians = []
    for index, found in sorted(windows.items()):
        if len(found) < 3:  # the run's last moments: too few rounds to say anything
            continue
        tpots = [r[1] * 1e3 for r in found]
        medians.append(statistics.median(tpots))
        print(
            f"  {index * args.window:5.0f} s: TPOT median {medians[-1]:.2f} ms ({min(tpots):.2f}-{max(tpots):.2f}), "
            f"read {statistics.median(r[2] for r in found):.0f} GB/s, "
            f"matmul {statistics.median(r[3] for r in found) * 1e3:.1f} ms"
        )
    print(f"window medians: {min(medians):.2f}-{max(medians):.2f} ms ({max(medians) / min(medians):.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
