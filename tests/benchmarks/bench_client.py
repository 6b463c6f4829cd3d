"""The streaming client's two numbers (issue 4), each next to vLLM's own benchmark client
(`vllm bench serve`, through vllm.benchmarks.serve) on the same stand-in server in the same run.

    python tests/benchmarks/bench_client.py                 # both parts, ~2 minutes
    python tests/benchmarks/bench_client.py --part fidelity --repeat 3
    python tests/benchmarks/bench_client.py --part capacity --streams 256 --tokens 1024

fidelity: a server with a known schedule (TTFT 150 ms, 12 ms per token, 64 tokens); the
  median TTFT and TPOT each client measures, against the schedule and against the server's
  own log of when it sent each first token (which includes its own sub-ms lateness).
capacity: a server that streams one token per SSE event as fast as it can, pinned to one
  core; each client pinned to the other with 256 concurrent streams; chunks per second,
  and how busy the server was (near 100%: the server, not the client, set the pace).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from pipeline.engines.client import Load, Target, parse_response, run_load  # noqa: E402
from pipeline.engines.server import free_port  # noqa: E402

FAKE_SERVER = REPO / "tests" / "fake_openai_server.py"
TTFT, ITL, TOKENS, PROMPT = 0.150, 0.012, 64, 64
CLIENT_CORE, SERVER_CORE = "0", "1"


def start_server(*args: str, core: str | None = None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    prefix = ["taskset", "-c", core] if core else []
    process = subprocess.Popen(
        [*prefix, sys.executable, str(FAKE_SERVER), "--port", str(port), *args], stdout=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            urllib.request.urlopen(url + "/stats", timeout=1).read()
            return process, url
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("the stand-in server did not start")


def server_stats(url: str) -> list[dict]:
    return json.load(urllib.request.urlopen(url + "/stats", timeout=30))


def tokenizer_dir() -> Path:
    """vLLM's client needs a tokenizer for its random prompts: the synthetic tiny-llama's."""
    path = REPO / "models" / "tiny-llama"
    if not (path / "tokenizer.json").exists():
        from pipeline.models.synthetic import materialize
        from pipeline.plan.conf import compose_cell

        materialize(compose_cell(["model=tiny-llama"]).model, path)
    return path


def ours(url: str, concurrency: int, requests: int, tokens: int) -> dict:
    target = Target.from_base_url(url + "/v1")
    body = {
        "model": "fake-model",
        "prompt": list(range(4, 4 + PROMPT)),
        "max_tokens": tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    run = run_load(target, [target.request_bytes(body)] * requests, Load(concurrency=concurrency, timeout_s=600))
    results = [parse_response(raw).result for raw in run.responses]
    failed = [r.error for r in results if not r.success]
    if failed:
        raise RuntimeError(f"{len(failed)} requests failed: {failed[0]}")
    chunks = sum(len(r.chunk_times) for r in results)
    window = max(raw.t_done for raw in run.responses) - min(raw.t_send for raw in run.responses)
    return {
        "ttft_ms": 1e3 * statistics.median(r.chunk_times[0] - r.t_send for r in results),
        "tpot_ms": 1e3 * statistics.median((r.chunk_times[-1] - r.chunk_times[0]) / (tokens - 1) for r in results),
        "chunks_per_s": chunks / window,  # first request sent -> last response ended, as vLLM's client counts
        "client_cpu_share": run.cpu_share,
        "saturated": run.describe()["saturated"],
    }


def vllms(url: str, concurrency: int, requests: int, tokens: int, core: str | None = None) -> dict:
    with tempfile.TemporaryDirectory() as out:
        args = [
            *("--backend", "openai", "--base-url", url, "--endpoint", "/v1/completions"),
            *("--model", "fake-model", "--tokenizer", str(tokenizer_dir())),
            *("--dataset-name", "random", "--random-input-len", str(PROMPT), "--random-output-len", str(tokens)),
            *("--random-range-ratio", "0", "--num-prompts", str(requests), "--max-concurrency", str(concurrency)),
            *("--request-rate", "inf", "--ignore-eos", "--percentile-metrics", "ttft,tpot,itl,e2el"),
            *("--num-warmups", "0", "--disable-tqdm", "--save-result", "--result-dir", out),
            *("--result-filename", "result.json"),
        ]
        code = (
            "import sys\nfrom vllm.utils.argparse_utils import FlexibleArgumentParser\n"
            "from vllm.benchmarks.serve import add_cli_args, main\n"
            "parser = FlexibleArgumentParser(); add_cli_args(parser); main(parser.parse_args(sys.argv[1:]))\n"
        )
        prefix = ["taskset", "-c", core] if core else []
        run = subprocess.run([*prefix, sys.executable, "-c", code, *args], capture_output=True, text=True)
        if run.returncode != 0:
            raise RuntimeError(f"vllm bench serve failed:\n{run.stderr[-2000:]}")
        result = json.loads((Path(out) / "result.json").read_text())
    return {
        "ttft_ms": result["median_ttft_ms"],
        "tpot_ms": result["median_tpot_ms"],
        "chunks_per_s": result["output_throughput"],  # one token per event here
    }


def pinned(client: str, url: str, concurrency: int, requests: int, tokens: int) -> dict:
    """One client run in a process of its own on the client core."""
    if client == "vllm":
        return vllms(url, concurrency, requests, tokens, core=CLIENT_CORE)
    code = (
        f"import json, sys; sys.path.insert(0, {str(REPO)!r})\n"
        "from tests.benchmarks.bench_client import ours\n"
        f"print(json.dumps(ours({url!r}, {concurrency}, {requests}, {tokens})))\n"
    )
    run = subprocess.run(["taskset", "-c", CLIENT_CORE, sys.executable, "-c", code], capture_output=True, text=True)
    if run.returncode:
        raise RuntimeError(run.stderr[-2000:])
    return json.loads(run.stdout.strip().splitlines()[-1])


def fidelity(repeat: int) -> None:
    print(f"== timing fidelity: schedule TTFT {TTFT * 1e3:.0f} ms, TPOT {ITL * 1e3:.0f} ms, {TOKENS} tokens ==")
    print(f"server pinned to core {SERVER_CORE}, clients to core {CLIENT_CORE}")
    print("client   conc  TTFT ms (vs schedule, vs server log)   TPOT ms (vs schedule)")
    server, url = start_server("--ttft", str(TTFT), "--itl", str(ITL), core=SERVER_CORE)
    try:
        for concurrency in (1, 16):
            requests = 16 if concurrency == 1 else 64
            for name in ("ours", "vllm"):
                rows = []
                for _ in range(repeat):
                    before = len(server_stats(url))
                    measured = pinned(name, url, concurrency, requests, TOKENS)
                    log = server_stats(url)[before:]
                    server_ttft = 1e3 * statistics.median(s["sent"][0] - s["arrived"] for s in log)
                    rows.append((measured["ttft_ms"], server_ttft, measured["tpot_ms"]))
                ttft, server_ttft, tpot = (statistics.median(column) for column in zip(*rows, strict=True))
                print(
                    f"{name:7s} {concurrency:4d}  {ttft:8.2f} ({ttft / (TTFT * 1e3) - 1:+6.2%}, "
                    f"{ttft / server_ttft - 1:+6.2%} of {server_ttft:.2f})   "
                    f"{tpot:7.3f} ({tpot / (ITL * 1e3) - 1:+6.2%})   medians of runs: "
                    + ", ".join(f"{r[0]:.2f}/{r[2]:.3f}" for r in rows)
                )
    finally:
        server.kill()


def capacity(streams: int, tokens: int, repeat: int) -> None:
    print(f"== client capacity: {streams} streams x {tokens} tokens, one token per SSE event ==")
    print(f"   server pinned to core {SERVER_CORE}, each client to core {CLIENT_CORE}")
    server, url = start_server("--ttft", "0", "--itl", "0", "--events-per-write", "16", core=SERVER_CORE)
    try:
        results = {"ours": [], "vllm": []}
        for _ in range(repeat):
            for name in results:
                measured = pinned(name, url, streams, streams, tokens)
                results[name].append((measured["chunks_per_s"], measured.get("client_cpu_share")))
        for name, rows in results.items():
            rate = statistics.median(r[0] for r in rows)
            own = [r[1] for r in rows if r[1] is not None]
            own_text = f"; its process busy {statistics.median(own):.0%} of its wall time" if own else ""
            runs = ", ".join(f"{r[0] / 1e3:.0f}k" for r in rows)
            print(f"{name:5s} {rate / 1e3:8.1f}k chunks/s (runs: {runs}{own_text})")
        ratio = statistics.median(r[0] for r in results["ours"]) / statistics.median(r[0] for r in results["vllm"])
        print(f"ours / vllm: {ratio:.2f}x")
    finally:
        server.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["fidelity", "capacity", "both"], default="both")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--streams", type=int, default=256)
    parser.add_argument("--tokens", type=int, default=1024)
    args = parser.parse_args()
    if os.cpu_count() < 2:
        sys.exit("needs two cores: one for the server, one for the client")
    if args.part in ("fidelity", "both"):
        fidelity(args.repeat)
    if args.part in ("capacity", "both"):
        capacity(args.streams, args.tokens, args.repeat)


if __name__ == "__main__":
    main()
