"""The real snakemake CLI on a small matrix: cells -> CSVs, re-runs, and planning errors."""

import json

import pandas as pd
import pytest

from tests.conftest import run_snakemake, write_matrix

pytestmark = pytest.mark.workflow

MATRIX = """
engine: [hf]
model: [tiny-llama]
precision: [fp32, bf16, int4]
batch_size: [1, 3]
overrides:
  workload.input_tokens: 12
  workload.output_tokens: 6
  workload.num_requests: 4
  workload.repeats: {min: 2, max: 3, target: 0.01}   # adaptive; 1% is rarely reached here
  workload.warmup_requests: 1
"""


def summary(results, cell_id):
    return json.loads((results / cell_id / "summary.json").read_text())


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, models_dir):
    workdir = tmp_path_factory.mktemp("workflow")
    matrix = write_matrix(workdir, "wf", MATRIX)
    run = run_snakemake(workdir, "--cores", "2", "--config", f"matrix={matrix}", f"models_dir={models_dir}")
    return workdir, matrix, run


def test_every_cell_becomes_a_row(first_run):
    workdir, _, run = first_run
    assert run.returncode == 0, run.stderr
    cells = pd.read_csv(workdir / "results/wf/cells.csv")
    assert len(cells) == 6
    assert cells.set_index("cell_id")["status"].to_dict() == {
        "hf/tiny-llama/bf16/bs1": "ok",
        "hf/tiny-llama/bf16/bs3": "ok",
        "hf/tiny-llama/fp32/bs1": "ok",
        "hf/tiny-llama/fp32/bs3": "ok",
        "hf/tiny-llama/int4/bs1": "unsupported",
        "hf/tiny-llama/int4/bs3": "unsupported",
    }
    ok = cells[cells.status == "ok"]
    assert (ok.output_tokens == 6).all() and (ok.output_tokens_target == 6).all()
    assert (ok.ttft_s_p50 < ok.e2e_s_p50).all() and (ok.tpot_s_p50 > 0).all()
    assert (ok.output_tok_s > 0).all() and (ok.load_s > 0).all() and (ok.peak_mem_bytes > 0).all()
    assert set(ok.engine_precision) == {"float32", "bfloat16"}
    # roofline: measured on this machine, and physically possible
    assert (ok.peak_bandwidth_measured_gbs > 0).all() and (ok.bytes_per_step > 0).all()
    assert ((ok.mbu_measured > 0) & (ok.mbu_measured <= 1)).all() and (ok.roofline_flag.isna()).all()
    assert (cells.hardware_entry == "cpu").all()
    # adaptive repeats: how many ran and why they stopped, per cell; intervals around the figures
    assert ok.repeats_kept.isin([2, 3]).all() and (ok.repeats_run == ok.repeats_kept + ok.repeats_discarded).all()
    assert set(ok.repeats_stop) <= {"converged", "max"}
    assert ((ok.repeats_stop == "max") == (ok.repeats_kept == 3)).all()
    for name in ("tpot_s_p50", "ttft_s_p50", "output_tok_s"):
        assert ((ok[f"{name}_low"] <= ok[name]) & (ok[name] <= ok[f"{name}_high"])).all()
    assert (ok.warmup_rounds >= 2).all() and (ok.peak_bandwidth_probe == "cell").all()
    assert (ok.cpu_affinity.astype(str).str.split(",").map(len) == 2).all()  # --cores 2: two cores of its own
    assert (ok.host_steal_share >= 0).all()
    unsupported = cells[cells.status == "unsupported"]
    assert unsupported.error.str.contains("precision int4 is not supported by engine hf").all()
    assert "6 cells (4 ok, 2 unsupported)" in run.stderr
    # the report and the MLflow runs (the default store: mlflow.db in the working directory)
    assert (workdir / "reports/wf/index.html").is_file() and (workdir / "mlflow.db").is_file()
    assert json.loads((workdir / "results/wf/tracking.done").read_text())["logged"] == 6


def test_the_probe_after_one_batch_size_is_the_probe_before_the_next(first_run):
    workdir, _, _ = first_run
    results = workdir / "results/wf"
    first, second = (summary(results, f"hf/tiny-llama/fp32/bs{b}")["cell_probes"] for b in (1, 3))
    assert len(first) == len(second) == 2 and "after_previous_cell" not in first[0]
    assert second[0] == {**first[1], "after_previous_cell": True}  # measured once, between the two
    assert second[1]["measured_at"] >= second[0]["measured_at"] and "after_previous_cell" not in second[1]


def test_requests_csv_has_one_row_per_measured_request(first_run):
    workdir, _, _ = first_run
    requests = pd.read_csv(workdir / "results/wf/requests.csv")
    per_cell = requests.groupby("cell_id").size().to_dict()
    run = pd.read_csv(workdir / "results/wf/cells.csv").set_index("cell_id").repeats_run.dropna()
    # 4 requests per repeat; at batch 3 that is 2 waves of 3 = 6 per repeat (discarded repeats too)
    assert per_cell == {cell: int(repeats) * (6 if cell.endswith("bs3") else 4) for cell, repeats in run.items()}
    assert requests.groupby("cell_id").repeat.nunique().to_dict() == run.astype(int).to_dict()
    assert (requests.output_tokens == 6).all() and (requests.input_tokens == 12).all()
    assert (requests.ttft_s < requests.e2e_s).all() and requests.success.all()
    assert (requests.chunks == 6).all()


def test_one_engine_start_per_instance_not_per_cell(first_run):
    workdir, _, _ = first_run
    for precision in ("fp32", "bf16"):
        instance = json.loads((workdir / f"results/wf/hf/tiny-llama/{precision}/instance.json").read_text())
        assert instance["engine_starts"] == 1 and instance["batch_sizes"] == [1, 3]


def test_the_job_keeps_snakemakes_thread_count_for_mkl_away_from_the_engine(first_run):
    # Snakemake exports MKL_NUM_THREADS={threads} to every job; with it vLLM's CPU server took
    # 205 ms a step instead of 4 ms (pipeline/rules/measure.smk). The engine's recorded environment says.
    workdir, _, _ = first_run
    env = json.loads((workdir / "results/wf/hf/tiny-llama/fp32/bs1/summary.json").read_text())["engine_env"]
    assert env["OMP_NUM_THREADS"] == "2" and "MKL_NUM_THREADS" not in env


def test_every_cell_carries_its_instances_fidelity(first_run):
    workdir, _, run = first_run
    assert run.returncode == 0, run.stderr
    cells = pd.read_csv(workdir / "results/wf/cells.csv").set_index("cell_id")
    fp32, bf16 = cells.loc["hf/tiny-llama/fp32/bs1"], cells.loc["hf/tiny-llama/bf16/bs1"]
    assert fp32.fidelity_status == "ok" and fp32.fidelity_top1 >= 0.995 and fp32.fidelity_kl_mean < 1e-9
    assert bf16.fidelity_status == "ok" and bf16.fidelity_kl_mean_low > fp32.fidelity_kl_mean_high
    assert cells.loc["hf/tiny-llama/bf16/bs3"].fidelity_kl_mean == bf16.fidelity_kl_mean  # one pass per instance
    assert (workdir / "results/wf/hf/tiny-llama/bf16/fidelity.json").is_file()
    assert pd.isna(cells.loc["hf/tiny-llama/int4/bs1"].fidelity_status)  # unsupported by hf: no pass


def test_rerun_keeps_finished_cells_and_retries_failed_ones(first_run, models_dir):
    workdir, matrix, _ = first_run
    results = workdir / "results/wf"
    reference = models_dir / "tiny-llama/fidelity/reference.json"
    reference_built = reference.stat().st_mtime_ns
    before = {c: summary(results, c)["finished_at"] for c in ("hf/tiny-llama/fp32/bs1", "hf/tiny-llama/bf16/bs3")}
    args = ("--cores", "2", "--config", f"matrix={matrix}", f"models_dir={models_dir}")

    again = run_snakemake(workdir, *args)
    assert again.returncode == 0 and "Nothing to be done" in again.stderr + again.stdout

    # as if bs3 of bf16 had crashed last time
    failed = summary(results, "hf/tiny-llama/bf16/bs3")
    failed.update(status="error", error="the engine process died", metrics={}, finished_at="earlier")
    (results / "hf/tiny-llama/bf16/bs3/summary.json").write_text(json.dumps(failed))
    retry = run_snakemake(workdir, *args)
    assert retry.returncode == 0, retry.stderr
    assert "1 to retry" in retry.stderr
    assert summary(results, "hf/tiny-llama/bf16/bs3")["status"] == "ok"
    assert summary(results, "hf/tiny-llama/bf16/bs3")["finished_at"] != before["hf/tiny-llama/bf16/bs3"]
    assert summary(results, "hf/tiny-llama/fp32/bs1")["finished_at"] == before["hf/tiny-llama/fp32/bs1"]
    assert summary(results, "hf/tiny-llama/bf16/bs1")["engine_start"] == 1
    cells = pd.read_csv(results / "cells.csv")
    assert (cells.status != "error").all()
    # the retried instance ran its fidelity pass again, against the model's reference as it was
    assert reference.stat().st_mtime_ns == reference_built
    assert summary(results, "hf/tiny-llama/bf16/bs3")["fidelity"]["status"] == "ok"

    # a profile whose rerun triggers lack `params` still retries (the attempt record is missing)
    failed = summary(results, "hf/tiny-llama/bf16/bs3")
    failed.update(status="timeout", error="exceeded its timeout", finished_at="later")
    (results / "hf/tiny-llama/bf16/bs3/summary.json").write_text(json.dumps(failed))
    mtime_only = run_snakemake(workdir, *args, "--rerun-triggers", "mtime")
    assert mtime_only.returncode == 0, mtime_only.stderr
    assert summary(results, "hf/tiny-llama/bf16/bs3")["status"] == "ok"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (["matrix=nope"], "unknown matrix 'nope'; valid matrix names: compiled-cpu, default"),
        (
            ["matrix=smoke", "overrides=workload.output_token=3"],
            "unknown setting 'workload.output_token': workload has no 'output_token'",
        ),
        (["matrix=smoke", "workload={output_tokens: 0}"], "workload.output_tokens must be >= 2"),
        (["matrix=smoke", "workload={slo: {tpot_s: 0.05}}"], "workload.slo (p90 TPOT <= 50 ms) is for server engines"),
        (["matrix=smoke", "workload={slo: {tpot: 0.05}}"], "unknown workload.slo setting(s) ['tpot']"),
        # this machine (and CI's) has no GPU
        (["matrix=notebook"], "asks 1 GPU(s) (--config gpus=N or the matrix's gpus:) but this machine has no GPU"),
        (["matrix=smoke", "gpus=2"], "Ask fewer (--config gpus=0), run on a cluster"),
        (["matrix=smoke", "hardware=h200"], "hardware=h200 is a GPU's datasheet but this machine has no GPU"),
    ],
)
def test_planning_errors_stop_before_any_job(tmp_path, config, message):
    run = run_snakemake(tmp_path, "--cores", "1", "--config", *config)
    assert run.returncode != 0
    assert message in run.stderr
    assert not (tmp_path / "results").exists()


def test_typo_in_a_matrix_file_names_the_valid_values(tmp_path):
    matrix = write_matrix(tmp_path, "typo", MATRIX.replace("tiny-llama", "tiny-lama"))
    run = run_snakemake(tmp_path, "-n", "--config", f"matrix={matrix}")
    assert run.returncode != 0
    assert "unknown model 'tiny-lama' (did you mean 'tiny-llama'?)" in run.stderr
