"""Short measured peaks of the machine a cell runs on: large memory traffic and a large matmul.

Run in the engine's process, on its device, with its thread count and CPU placement. The
full probe (bandwidth and matmul) runs right after the engine loads, cached per machine
(host, device, threads, dtype) so a sweep pays it once; the bandwidth alone is measured
again before and after every cell (pipeline.run.measure), since a shared host's bandwidth
drifts between cells and MBU must be judged against the bandwidth of its own moment.

Bandwidth is probed twice: a copy (bytes read + written) and a read-only pass. Decode
mostly reads, and on CPUs reads run faster than copies, so the peak is the better of the
two; against a copy alone a good engine would show an MBU above 1.0. The read passes are a
sum (one stream) and a dot product of the buffer's halves (two streams, as a matrix-vector
product reads rows); the best pass counts. Neither kernel leads reliably on the 2-core
development machine (tests/benchmarks/bench_read_probe.py: dot/sum per round a median 1.008 and
1.001 with one thread, 0.923 with two; 1.036 and 1.044 in a standalone loop of the same kernels),
so the probe takes both: more passes and two access patterns can only raise its peak, and
llama.cpp's F32 decode had once read 0.2% faster than the sum's best.
The best repeat is the peak (MBU above 1.0 against it means an accounting bug); the spread is
kept because shared machines drift (on the 2-core development machines, two threads flip
between ~35 and ~60 GB/s).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

from pipeline.results.store import write_json

CACHE_FILE = Path(os.environ.get("LLM_BENCH_CACHE", Path.home() / ".cache" / "llm-infer-bench")) / "probes.json"
PROBE_VERSION = 2  # bump when the method changes, so that old cache entries are ignored


def _timed(fn, repeats: int, sync) -> list[float]:
    fn()  # first touch: page faults and kernel selection are not bandwidth
    sync()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - started)
    return times


def measure_bandwidth(device: str, threads: int | None, copy_bytes: int | None = None, repeats: int = 3) -> dict:
    """Memory bandwidth on `device` with `threads` (torch's), from a copy and read-only passes
    (a sum; a dot product of its halves) over a buffer far larger than any cache; the best is the
    figure."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    gpu = device.startswith("cuda")
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    copy_bytes = copy_bytes or (2 << 30 if gpu else 1 << 30)
    src = torch.ones(copy_bytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    copy = [2 * copy_bytes / t / 1e9 for t in _timed(lambda: dst.copy_(src), repeats, sync)]
    first, second = src.chunk(2)
    reads = {
        name: [copy_bytes / t / 1e9 for t in _timed(kernel, repeats, sync)]
        for name, kernel in (("sum", src.sum), ("dot", lambda: torch.dot(first, second)))
    }
    read = reads["sum"] + reads["dot"]
    bandwidths = copy if max(copy) >= max(read) else read
    return {
        "bandwidth_gbs": max(bandwidths),
        "bandwidth_gbs_median": statistics.median(bandwidths),
        "bandwidth_spread": (max(bandwidths) - min(bandwidths)) / statistics.median(bandwidths),
        "bandwidth_from": "copy" if bandwidths is copy else "read",
        "copy_gbs": max(copy),
        "read_gbs": max(read),
        "read_kernels_gbs": {name: max(passes) for name, passes in reads.items()},
        "copy_bytes": copy_bytes,
        "threads": threads or torch.get_num_threads(),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def measure_peaks(
    device: str,
    dtype: str,
    threads: int | None,
    copy_bytes: int | None = None,
    matmul_n: int | None = None,
    repeats: int = 5,
) -> dict:
    import torch

    bandwidth = measure_bandwidth(device, threads, copy_bytes, repeats)
    gpu = device.startswith("cuda")
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    torch_dtype = getattr(torch, dtype)
    n = matmul_n or (8192 if gpu else 1024)
    a = torch.randn(n, n, device=device).to(torch_dtype)
    b = torch.randn(n, n, device=device).to(torch_dtype)
    matmul_times = _timed(lambda: a @ b, repeats, sync)
    tflops = [2 * n**3 / t / 1e12 for t in matmul_times]
    return {
        **bandwidth,
        "matmul_tflops": max(tflops),
        "matmul_tflops_median": statistics.median(tflops),
        "matmul_n": n,
        "dtype": dtype,
        "device": device,
        "repeats": repeats,
    }


def cached_peaks(
    device: str, device_name: str, dtype: str, threads: int | None, cache_file: Path = CACHE_FILE, **probe_options
) -> dict:
    """The machine's peaks from the cache, measuring them on a miss."""
    key = f"v{PROBE_VERSION}|{platform.node()}|{device_name}|{device}|{dtype}|threads={threads}"
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    if key in cache:
        return {**cache[key], "cached": True}
    peaks = measure_peaks(device, dtype, threads, **probe_options)
    cache[key] = peaks
    write_json(cache_file, cache)  # concurrent writers may drop each other's entry: it is only re-measured
    return {**peaks, "cached": False}
