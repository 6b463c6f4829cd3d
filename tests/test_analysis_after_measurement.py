"""Analysis lives in collect, measurement in the jobs: the real snakemake CLI on copies of conf/.

- editing a datasheet re-runs collect and the report, never an engine, and the cells' MBU moves;
- a model given only as a local HF directory runs, its roofline from its own config.json;
- a model whose shape is known nowhere still leaves every cell a result, the roofline empty with
  the reason;
- a copy of an engine file under a new name is an engine of that name.
"""

import json
import shutil

import pandas as pd
import pytest

from tests.conftest import CONF, run_snakemake, write_matrix

pytestmark = pytest.mark.workflow

WORKLOAD = """
overrides:
  workload.input_tokens: 8
  workload.output_tokens: 4
  workload.num_requests: 2
  workload.repeats: 1
  workload.warmup_requests: 1
  engine.threads: 1
"""


def snakemake(workdir, conf, *config):
    env = {"LLM_BENCH_CONF": str(conf), "HF_HUB_OFFLINE": "1"}  # offline: a hub model fails at once
    return run_snakemake(workdir, "--cores", "2", "--config", "tracking=false", *config, env=env)


@pytest.fixture()
def conf(tmp_path, models_dir):
    """conf/ with an engine copied under a new name and a model known only by its directory."""
    conf = shutil.copytree(CONF, tmp_path / "conf")
    shutil.copy(conf / "engine/hf.yaml", conf / "engine/my_hf.yaml")
    (conf / "model/local-tiny.yaml").write_text(f"path: {models_dir / 'tiny-llama'}\n")  # no architecture
    (conf / "model/hub-only.yaml").write_text("hub_id: nobody/never-downloaded\n")
    # a datasheet for this machine's CPU (a GPU's entry is refused on a machine without that GPU)
    (conf / "hardware/lab-cpu.yaml").write_text("kind: cpu\nmemory_bandwidth_gbs: 2039\npeak_tflops: {bf16: 1}\n")
    return conf


def test_a_datasheet_edit_reruns_collect_and_never_an_engine(tmp_path, conf):
    workdir = tmp_path / "work"
    workdir.mkdir()
    matrix = write_matrix(
        workdir, "sheet", "engine: [my_hf]\nmodel: [local-tiny]\nprecision: [bf16]\nbatch_size: [1]\n" + WORKLOAD
    )
    first = snakemake(workdir, conf, f"matrix={matrix}", "hardware=lab-cpu")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "rule measure_my_hf_local_tiny_bf16" in first.stderr
    cells = pd.read_csv(workdir / "results/sheet/cells.csv")
    (row,) = cells.to_dict("records")
    assert row["status"] == "ok" and row["engine"] == "my_hf" and row["hardware_entry"] == "lab-cpu"
    # the roofline came from the model directory's own config.json (no architecture in its conf)
    summary = json.loads((workdir / "results/sheet/my_hf/local-tiny/bf16/bs1/summary.json").read_text())
    assert summary["architecture"]["hidden_size"] == 256 and summary["config"]["model"]["architecture"] == {}
    assert row["params"] > 0 and row["peak_bandwidth_gbs"] == 2039 and row["mbu"] > 0

    sheet = conf / "hardware/lab-cpu.yaml"
    sheet.write_text(sheet.read_text().replace("memory_bandwidth_gbs: 2039", "memory_bandwidth_gbs: 4078"))
    second = snakemake(workdir, conf, f"matrix={matrix}", "hardware=lab-cpu")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "rule measure_" not in second.stderr and "rule collect" in second.stderr
    (after,) = pd.read_csv(workdir / "results/sheet/cells.csv").to_dict("records")
    assert after["finished_at"] == row["finished_at"]  # the same measurement...
    assert after["peak_bandwidth_gbs"] == 4078 and after["mbu"] == pytest.approx(row["mbu"] / 2)  # ...judged anew


def test_a_model_with_no_shape_anywhere_still_gives_every_cell_a_result(tmp_path, conf):
    workdir = tmp_path / "work"
    workdir.mkdir()
    matrix = write_matrix(
        workdir, "noshape", "engine: [hf]\nmodel: [hub-only]\nprecision: [bf16, int4]\nbatch_size: [1]\n" + WORKLOAD
    )
    run = snakemake(workdir, conf, f"matrix={matrix}")
    assert run.returncode == 0, run.stderr[-3000:]  # a failed cell is data: the report is made
    assert "weights unknown" in run.stderr  # planning says it can only guess the job's memory
    cells = pd.read_csv(workdir / "results/noshape/cells.csv").set_index("cell_id")
    assert dict(cells.status) == {"hf/hub-only/bf16/bs1": "error", "hf/hub-only/int4/bs1": "unsupported"}
    assert "engine failed to start" in cells.loc["hf/hub-only/bf16/bs1", "error"]
    assert cells.params.isna().all() and cells.mbu_measured.isna().all()
    assert cells.roofline_missing.str.contains("no model architecture").all()
    summary = json.loads((workdir / "results/noshape/hf/hub-only/bf16/bs1/summary.json").read_text())
    assert "Traceback" in summary["traceback"]  # the load failure's traceback is kept
