"""Does the streaming client agree with a real server about its own requests? (issue 12)

    python tests/benchmarks/bench_client_vs_server.py [--runs 3] [--requests 16] [--concurrency 4]

Starts a real vLLM (CPU) server on the synthetic tiny-llama at fp32, pinned to one core
(the client to the other), and sends token-id prompts of 64 tokens for 32 output tokens,
`concurrency` in flight. Around each run it reads the server's own Prometheus counters
(/metrics: vllm:inter_token_latency_seconds and vllm:time_to_first_token_seconds, sum and
count) and prints, per run:

- the client's mean TPOT over the server's mean inter-token latency for the same requests
  (target: within 2%), and the same for TTFT (the client's includes HTTP and detokenizing);
- failed requests, and requests whose chunks differ from their tokens;
- the same ratio as the parser before issue 12 counted (only events with text), from the
  same bytes;
- with and without `return_token_ids` (the per-chunk token ids vLLM streams on request),
  alternated, so that its cost to the server shows as the server's own ITL ratio.
"""

from __future__ import annotations

import argparse
import random
import re
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from pipeline.engines.client import Load, Target, parse_response, run_load  # noqa: E402
from pipeline.engines.server import free_port  # noqa: E402

PROMPT, TOKENS = 64, 32
SERVER_CORE, CLIENT_CORE = "1", "0"
METRICS = ("vllm:inter_token_latency_seconds", "vllm:time_to_first_token_seconds")


def model_dir() -> Path:
    path = REPO / "models" / "tiny-llama"
    if not (path / "config.json").exists():
        from pipeline.models.synthetic import materialize
        from pipeline.plan.conf import compose_cell

        materialize(compose_cell(["model=tiny-llama"]).model, path)
    return path


def start_vllm(model: Path, concurrency: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [
        *("taskset", "-c", SERVER_CORE, sys.executable, "-m", "vllm.entrypoints.openai.api_server"),
        *("--model", str(model), "--served-model-name", "tiny-llama", "--host", "127.0.0.1", "--port", str(port)),
        *("--dtype", "float32", "--max-num-seqs", str(concurrency), "--max-model-len", str(PROMPT + TOKENS)),
        *("--seed", "0", "--enforce-eager", "--gpu-memory-utilization", "0.3"),
    ]
    log = open(REPO / "results" / "bench_client_vs_server.server.log", "w")  # noqa: SIM115 (lives as long as the server)
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"vLLM's server exited ({process.returncode}); see {log.name}")
        try:
            urllib.request.urlopen(url + "/health", timeout=2).read()
            return process, url
        except OSError:
            time.sleep(0.5)
    process.kill()
    sys.exit("vLLM's server did not become ready within 300 s")


def server_counters(url: str) -> dict[str, float]:
    text = urllib.request.urlopen(url + "/metrics", timeout=30).read().decode()
    counters = {}
    for name in METRICS:
        for part in ("sum", "count"):
            values = re.findall(rf"^{re.escape(name)}_{part}(?:{{[^}}]*}})? ([0-9.eE+-]+)$", text, re.MULTILINE)
            counters[f"{name}_{part}"] = sum(float(v) for v in values)
    return counters


def server_means(before: dict, after: dict) -> tuple[float, float]:
    def mean(name):
        count = after[f"{name}_count"] - before[f"{name}_count"]
        return (after[f"{name}_sum"] - before[f"{name}_sum"]) / count

    return mean(METRICS[0]), mean(METRICS[1])


def text_only(raw) -> list[float]:
    """Arrival times as the parser before issue 12 counted them: events whose text is not empty."""
    import json

    times = []
    for arrived, payload in raw.events:
        for choice in json.loads(payload).get("choices") or ():
            if choice.get("text"):
                times.append(arrived)
    return times


def one_run(url: str, requests: int, concurrency: int, token_ids: bool, seed: int) -> dict:
    rng = random.Random(seed)  # every prompt new: no prefix-cache hits
    target = Target.from_base_url(url + "/v1")
    bodies = [
        {
            "model": "tiny-llama",
            "prompt": [rng.randrange(4, 2048) for _ in range(PROMPT)],
            "max_tokens": TOKENS,
            "min_tokens": TOKENS,
            "ignore_eos": True,
            "temperature": 0.0,
            "stream": True,
            "stream_options": {"include_usage": True},
            **({"return_token_ids": True} if token_ids else {}),
        }
        for _ in range(requests)
    ]
    before = server_counters(url)
    run = run_load(target, [target.request_bytes(b) for b in bodies], Load(concurrency=concurrency, timeout_s=600))
    after = server_counters(url)
    itl_server, ttft_server = server_means(before, after)
    parsed = [parse_response(raw, max_tokens=TOKENS).result for raw in run.responses]
    ok = [r for r in parsed if r.success and r.chunk_times]
    tpot = statistics.fmean((r.chunk_times[-1] - r.chunk_times[0]) / (r.output_tokens - 1) for r in ok)
    ttft = statistics.fmean(r.chunk_times[0] - r.t_send for r in ok)
    old = [text_only(raw) for raw in run.responses]
    old_ok = [(raw, times) for raw, times in zip(run.responses, old, strict=True) if len(times) > 1]
    old_tpot = statistics.fmean((times[-1] - times[0]) / (TOKENS - 1) for _, times in old_ok)
    return {
        "tpot_ratio": tpot / itl_server,
        "ttft_ratio": ttft / ttft_server,
        "server_itl_ms": 1e3 * itl_server,
        "failed": len(parsed) - len(ok),
        "chunks_ne_tokens": sum(len(r.chunk_times) != r.output_tokens for r in ok),
        "counted_by": sorted({r.counted_by for r in ok}),
        "old_tpot_ratio": old_tpot / itl_server,
        "old_failed": len(parsed) - len(old_ok),
        "old_short": sum(len(times) < TOKENS for times in old),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of each mode, alternated")
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    (REPO / "results").mkdir(exist_ok=True)
    process, url = start_vllm(model_dir(), args.concurrency)
    try:
        one_run(url, args.concurrency, args.concurrency, False, seed=999)  # warm-up, not reported
        rows = {False: [], True: []}
        for index in range(args.runs):
            for token_ids in (False, True):
                rows[token_ids].append(
                    one_run(url, args.requests, args.concurrency, token_ids, seed=index * 2 + token_ids)
                )
                row = rows[token_ids][-1]
                print(
                    f"run {index + 1} return_token_ids={str(token_ids).lower():5}: "
                    f"client TPOT / server ITL {row['tpot_ratio']:.4f}, TTFT {row['ttft_ratio']:.3f}; "
                    f"failed {row['failed']}, chunks != tokens {row['chunks_ne_tokens']} "
                    f"(counted by {', '.join(row['counted_by'])}); server ITL {row['server_itl_ms']:.2f} ms | "
                    f"text-only parser: TPOT ratio {row['old_tpot_ratio']:.4f}, {row['old_short']} requests with "
                    f"fewer chunks than tokens, {row['old_failed']} failed",
                    flush=True,
                )
        for token_ids, found in rows.items():
            ratios = [r["tpot_ratio"] for r in found]
            print(
                f"return_token_ids={str(token_ids).lower()}: TPOT ratio median {statistics.median(ratios):.4f} "
                f"(range {min(ratios):.4f}-{max(ratios):.4f}); target within 2% -> "
                f"{'met' if all(abs(r - 1) <= 0.02 for r in ratios) else 'MISSED'}; "
                f"failed {sum(r['failed'] for r in found)}"
            )
        cost = [b["server_itl_ms"] / a["server_itl_ms"] for a, b in zip(rows[False], rows[True], strict=True)]
        print(
            f"return_token_ids costs the server: ITL x{statistics.median(cost):.3f} (per run: "
            f"{', '.join(f'{c:.3f}' for c in cost)})"
        )
    finally:
        process.terminate()
        process.wait(30)


if __name__ == "__main__":
    main()
