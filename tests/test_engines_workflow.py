"""hf, llama.cpp (in-process and its server) and vLLM in one real snakemake run, collected into one cells.csv."""

import pandas as pd
import pytest

from tests.conftest import run_snakemake, write_matrix

pytestmark = [pytest.mark.workflow, pytest.mark.engine]
pytest.importorskip("llama_cpp", reason="installed by `make setup-engines`")
pytest.importorskip("vllm", reason="installed by `make setup-engines`")

MATRIX = """
engine: [hf, llama_cpp, llama_cpp_server, vllm]
model: [tiny-llama]
precision: [fp32, int4]
batch_size: [1, 2]
overrides:
  workload.input_tokens: 16
  workload.output_tokens: 8
  workload.num_requests: 2
  workload.repeats: 2
  workload.warmup_requests: 1
"""


def test_three_engines_one_table(tmp_path, models_dir):
    matrix = write_matrix(tmp_path, "engines", MATRIX)
    # a models dir of its own: the workflow itself writes the GGUF files
    run = run_snakemake(tmp_path, "--cores", "2", "--config", f"matrix={matrix}")
    assert run.returncode == 0, run.stderr[-4000:]
    cells = pd.read_csv(tmp_path / "results/engines/cells.csv").set_index("cell_id")
    assert len(cells) == 16
    expected_ok = {
        "hf/tiny-llama/fp32/bs1",
        "hf/tiny-llama/fp32/bs2",
        "llama_cpp/tiny-llama/fp32/bs1",
        "llama_cpp/tiny-llama/int4/bs1",
        "llama_cpp_server/tiny-llama/fp32/bs1",
        "llama_cpp_server/tiny-llama/fp32/bs2",
        "llama_cpp_server/tiny-llama/int4/bs1",
        "llama_cpp_server/tiny-llama/int4/bs2",
        "vllm/tiny-llama/fp32/bs1",
        "vllm/tiny-llama/fp32/bs2",
    }
    assert set(cells.index[cells.status == "ok"]) == expected_ok
    assert (cells.drop(index=list(expected_ok)).status == "unsupported").all()
    assert "above what engine llama_cpp can run at once (1)" in cells.loc["llama_cpp/tiny-llama/fp32/bs2", "error"]
    assert "precision int4 is not supported by engine vllm" in cells.loc["vllm/tiny-llama/int4/bs1", "error"]
    ok = cells.loc[sorted(expected_ok)]
    assert (ok.output_tokens == 8).all() and (ok.ttft_s_p50 < ok.e2e_s_p50).all()
    # what each engine was really asked for
    assert ok.engine_precision.to_dict() == {
        "hf/tiny-llama/fp32/bs1": "float32",
        "hf/tiny-llama/fp32/bs2": "float32",
        "llama_cpp/tiny-llama/fp32/bs1": "F32",
        "llama_cpp/tiny-llama/int4/bs1": "Q4_0",
        "llama_cpp_server/tiny-llama/fp32/bs1": "F32",
        "llama_cpp_server/tiny-llama/fp32/bs2": "F32",
        "llama_cpp_server/tiny-llama/int4/bs1": "Q4_0",
        "llama_cpp_server/tiny-llama/int4/bs2": "Q4_0",
        "vllm/tiny-llama/fp32/bs1": "float32",
        "vllm/tiny-llama/fp32/bs2": "float32",
    }
    # int4 reads fewer bytes per step than fp32 (Q4_0: 4.5 bits per weight)
    assert (
        ok.loc["llama_cpp/tiny-llama/int4/bs1", "bytes_per_step"]
        < ok.loc["llama_cpp/tiny-llama/fp32/bs1", "bytes_per_step"] / 5
    )
    served = cells.index.str.startswith("llama_cpp_server/")
    assert cells.loc[served, "client_saturated"].eq(False).all() and cells.loc[~served, "client_saturated"].isna().all()
    assert (tmp_path / "models/tiny-llama/gguf/Q4_0.gguf").is_file()
    assert (tmp_path / "reports/engines/index.html").is_file()
