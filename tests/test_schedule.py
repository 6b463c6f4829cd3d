"""The Snakefile's helpers: --config splitting, and which cells a (re-)run must measure."""

import json
from pathlib import Path

import pytest

from pipeline.plan.conf import ConfTree, compose_cell, measurement_digest
from pipeline.plan.matrix import load_plan
from pipeline.plan.schedule import cell_state, schedule, split_config
from pipeline.results.schema import Cell, CellResult
from pipeline.results.store import summary_path, write_json
from tests.conftest import CONF


def test_config_matrix_and_overrides():
    # as Snakemake hands them over for
    #   --config matrix=smoke models_dir=m workload="{seed: 3}" overrides="workload.output_tokens=16 engine.device=cpu"
    config = {
        "matrix": "smoke",
        "models_dir": "m",
        "workload": {"seed": "3"},
        "overrides": "workload.output_tokens=16 engine.device=cpu",
    }
    matrix, overrides = split_config(config)
    assert matrix == "smoke"
    assert overrides == ["models_dir=m", "workload.seed=3", "workload.output_tokens=16", "engine.device=cpu"]


def test_an_slo_given_nested_stays_one_mapping():
    # --config workload="{slo: {tpot_s: 0.05}, output_tokens: 16}": a key below workload.slo (null) cannot be set
    _, overrides = split_config({"workload": {"slo": {"tpot_s": 0.05}, "output_tokens": 16}})
    assert overrides == ["workload.slo={tpot_s:0.05}", "workload.output_tokens=16"]


def test_default_matrix_when_none_given():
    assert split_config({}) == ("default", [])


def result(status: str, digest: str = "D", finished_at: str = "") -> CellResult:
    return CellResult(
        "hf/tiny-llama/bf16/bs1", "hf", "tiny-llama", "bf16", 1, status, digest=digest, finished_at=finished_at
    )


@pytest.mark.parametrize(
    ("summary", "state"),
    [
        (None, "new"),
        (result("ok"), "done"),
        (result("unsupported"), "done"),
        (result("ok", digest="edited"), "stale"),
        (result("error", finished_at="T1"), "retry:error@T1"),
        (result("timeout", finished_at="T2"), "retry:timeout@T2"),
    ],
)
def test_cell_state(summary, state):
    assert cell_state(summary, "D") == state


def test_the_digest_follows_what_a_cell_is_measured_with_and_nothing_else(tmp_path):
    import shutil

    conf = shutil.copytree(CONF, tmp_path / "conf")
    before = ConfTree(conf).digest("hf", "tiny-llama", "bf16")
    assert ConfTree(conf).digest("hf", "small-llama", "bf16") != before
    small = conf / "model/small-llama.yaml"
    small.write_text(small.read_text().replace("seed: 0", "seed: 9"))  # a file the cell does not use
    assert ConfTree(conf).digest("hf", "tiny-llama", "bf16") == before
    # a comment, a datasheet number, another workload file: not measurement inputs
    text = (conf / "model/tiny-llama.yaml").read_text()
    (conf / "model/tiny-llama.yaml").write_text("# a comment\n" + text)
    (conf / "hardware/a100-80g.yaml").write_text((conf / "hardware/a100-80g.yaml").read_text().replace("2039", "2000"))
    (conf / "workload/long.yaml").write_text("input_tokens: 512\n")
    assert ConfTree(conf).digest("hf", "tiny-llama", "bf16") == before
    # a value the engine is measured with is
    (conf / "model/tiny-llama.yaml").write_text(text.replace("seed: 0", "seed: 1"))
    assert ConfTree(conf).digest("hf", "tiny-llama", "bf16") != before
    assert ConfTree(conf, ["workload.output_tokens=8"]).digest("hf", "tiny-llama", "bf16") != before


def test_overrides_in_another_order_are_the_same_digest():
    one = ConfTree(CONF, ["workload.output_tokens=8", "engine.threads=1", "model.seed=3"])
    other = ConfTree(CONF, ["model.seed=3", "workload.output_tokens=8", "engine.threads=1"])
    assert one.digest("hf", "tiny-llama", "bf16") == other.digest("hf", "tiny-llama", "bf16")
    assert one.digest("hf", "tiny-llama", "bf16") != ConfTree(CONF).digest("hf", "tiny-llama", "bf16")


def test_the_job_and_the_planner_compute_the_same_digest():
    overrides = ["workload.output_tokens=8", "engine.threads=1"]
    cell = compose_cell([*overrides, "engine=vllm_server", "model=small-llama", "precision=fp32", "batch_size=4"])
    assert measurement_digest(cell.to_dict()) == ConfTree(CONF, overrides).digest("vllm_server", "small-llama", "fp32")


def write_result(results, cell: Cell, status: str, digest: str, finished_at: str = "T") -> None:
    values = CellResult(cell.cell_id, *cell.axes().values(), status, digest=digest, finished_at=finished_at)
    write_json(summary_path(results, cell), values.to_dict())


def test_schedule_keeps_finished_cells_and_reruns_the_rest(tmp_path):
    plan, tree = load_plan("smoke", CONF)
    results = tmp_path / "results" / "smoke"
    bs1, bs2 = (Cell("hf", "tiny-llama", "bf16", bs) for bs in (1, 2))
    digest = tree.digest("hf", "tiny-llama", "bf16")
    write_result(results, bs1, "ok", digest)
    write_result(results, bs2, "error", digest, finished_at="T")
    sched = schedule(plan, tree, results)
    assert sched.cell_states == {bs1: "done", bs2: "retry:error@T"}
    (job,) = sched.jobs
    assert job.batch_sizes == (2,)
    assert job.outputs == (str(results / "hf/tiny-llama/bf16/bs2/summary.json"),)
    assert job.attempt_file.startswith(str(results / "hf/tiny-llama/bf16/attempts/"))
    assert job.model_input == "models/tiny-llama/config.json"
    assert "1 done" in sched.describe() and "1 to retry" in sched.describe()

    # the next attempt fails again: a new attempt record, missing, so Snakemake runs the job again
    write_result(results, bs2, "error", digest, finished_at="T+1")
    again = schedule(plan, tree, results).jobs[0]
    assert again.state != job.state and again.attempt_file != job.attempt_file


def test_schedule_has_no_job_when_everything_is_done(tmp_path):
    plan, tree = load_plan("smoke", CONF)
    results = tmp_path / "smoke"
    for bs in (1, 2):
        write_result(results, Cell("hf", "tiny-llama", "bf16", bs), "ok", tree.digest("hf", "tiny-llama", "bf16"))
    assert schedule(plan, tree, results).jobs == ()


def test_a_result_of_another_schema_version_is_measured_again(tmp_path):
    plan, tree = load_plan("smoke", CONF)
    results = tmp_path / "smoke"
    cell = Cell("hf", "tiny-llama", "bf16", 1)
    write_json(summary_path(results, cell), {"status": "ok", "schema_version": 1, "cell_id": cell.cell_id})
    assert schedule(plan, tree, results).cell_states[cell] == "new"


def test_gpu_jobs_run_in_the_gpu_build_environments(tmp_path):
    import dataclasses

    from pipeline.plan.schedule import ENVS_DIR

    (tmp_path / "engines.yaml").write_text(
        "engine: [hf, vllm, llama_cpp_server]\nmodel: [tiny-llama]\nprecision: [bf16]\nbatch_size: [1]\n"
    )
    plan, tree = load_plan(str(tmp_path / "engines.yaml"), CONF)
    sched = schedule(plan, tree, tmp_path / "results")
    on_cpu = {job.instance.engine: sched.environment_file(job) for job in sched.jobs}
    on_gpu = {job.instance.engine: dataclasses.replace(sched, gpus=1).environment_file(job) for job in sched.jobs}
    assert on_cpu == {
        name: str(ENVS_DIR / f"{env}.yaml")
        for name, env in [("hf", "hf"), ("vllm", "vllm"), ("llama_cpp_server", "llama_cpp")]
    }
    # hf's environment serves both (PyPI's torch is a CUDA build); vLLM and llama.cpp have GPU builds
    assert on_gpu == {
        "hf": str(ENVS_DIR / "hf.yaml"),
        "vllm": str(ENVS_DIR / "vllm-gpu.yaml"),
        "llama_cpp_server": str(ENVS_DIR / "llama_cpp-gpu.yaml"),
    }


def test_a_local_run_that_asks_more_gpus_than_the_machine_has_stops_at_planning():
    from pipeline.plan.matrix import PlanError
    from pipeline.plan.schedule import check_local_gpus

    check_local_gpus(1, ["0"], "nvidia-smi")  # enough
    check_local_gpus(0, [], "nvidia-smi")  # a CPU run
    with pytest.raises(PlanError, match=r"asks 2 GPU\(s\).*has 1 GPU slot\(s\) \(0\), found from nvidia-smi.*gpus=1"):
        check_local_gpus(2, ["0"], "nvidia-smi")
    with pytest.raises(PlanError, match=r"asks 1 GPU\(s\).*this machine has no GPU, found from CUDA_VISIBLE_DEVICES"):
        check_local_gpus(1, [], "CUDA_VISIBLE_DEVICES")


def test_a_matrix_says_how_many_gpus_its_instances_need_and_the_command_line_wins(tmp_path):
    from pipeline.plan.matrix import PlanError
    from pipeline.plan.schedule import load_schedule

    plan, _ = load_plan("notebook", CONF)
    assert plan.gpus == 1
    matrix = tmp_path / "m.yaml"
    matrix.write_text("gpus: 1\nengine: [hf]\nmodel: [tiny-llama]\nprecision: [bf16]\nbatch_size: [1]\n")
    assert load_schedule({"matrix": str(matrix)}, CONF, str(tmp_path)).gpus == 1
    assert load_schedule({"matrix": str(matrix), "gpus": "0"}, CONF, str(tmp_path)).gpus == 0
    matrix.write_text("gpus: two\nengine: [hf]\nmodel: [tiny-llama]\nprecision: [bf16]\nbatch_size: [1]\n")
    with pytest.raises(PlanError, match="gpus .GPUs per engine instance. must be a whole number >= 0, got 'two'"):
        load_plan(str(matrix), CONF)


def tiny_matrix(tmp_path, engines: str) -> Path:
    matrix = tmp_path / "m.yaml"
    matrix.write_text(f"engine: [{engines}]\nmodel: [tiny-llama]\nprecision: [bf16]\nbatch_size: [1]\n")
    return matrix


def test_an_slo_is_for_server_engines_and_never_re_measures_a_cell(tmp_path):
    from pipeline.plan.matrix import PlanError

    matrix = tiny_matrix(tmp_path, "hf, vllm_server")
    with pytest.raises(PlanError, match=r"workload.slo \(p90 TPOT <= 50 ms\) is for server engines.*hf run offline"):
        plan, tree = load_plan(str(matrix), CONF, ["workload.slo={tpot_s: 0.05}"])
        schedule(plan, tree, tmp_path / "results")
    matrix = tiny_matrix(tmp_path, "vllm_server")
    plan, tree = load_plan(str(matrix), CONF, ["workload.slo={tpot_s: 0.05, percentile: 99}"])
    assert json.loads(schedule(plan, tree, tmp_path / "results").slo) == {"tpot_s": 0.05, "percentile": 99}
    # judged in collect: the same measurement with or without it
    with_slo = tree.digest("vllm_server", "tiny-llama", "bf16")
    assert with_slo == load_plan(str(matrix), CONF)[1].digest("vllm_server", "tiny-llama", "bf16")


def test_a_load_search_needs_an_slo_measures_against_it_and_budgets_its_time(tmp_path):
    from pipeline.plan.matrix import PlanError

    matrix = tiny_matrix(tmp_path, "vllm_server")
    with pytest.raises(PlanError, match=r"workload.search looks for the most load that meets an SLO.*workload.slo="):
        plan, tree = load_plan(str(matrix), CONF, ["workload.search={over: concurrency, max: 8}"])
        schedule(plan, tree, tmp_path / "results")
    search = "workload.search={over: concurrency, max: 8}"

    def planned(*overrides):
        plan, tree = load_plan(str(matrix), CONF, list(overrides))
        return tree.digest("vllm_server", "tiny-llama", "bf16"), schedule(plan, tree, tmp_path / "results").jobs[0]

    plain_digest, plain_job = planned("workload.slo={tpot_s: 0.05}")
    searched_digest, searched_job = planned("workload.slo={tpot_s: 0.05}", search)
    # the search's probes are judged against the SLO as they run: another SLO is another measurement
    assert searched_digest != plain_digest
    assert searched_digest != planned("workload.slo={tpot_s: 0.05}", "workload.search={max: 16}")[0]
    assert searched_digest != planned("workload.slo={tpot_s: 0.09}", search)[0]
    assert searched_job.runtime_min >= plain_job.runtime_min + (600 + 600) // 60  # budget_s + one probe's timeout


def test_fidelity_needs_the_models_reference_and_its_budget_never_re_measures(tmp_path):
    from pipeline.plan.schedule import reference_overrides

    matrix = tiny_matrix(tmp_path, "hf, llama_cpp, vllm_server")
    plan, tree = load_plan(str(matrix), CONF, ["models_dir=/m", "workload.fidelity.min_top1=0.9"])
    jobs = {job.instance.engine: job for job in schedule(plan, tree, tmp_path / "results").jobs}
    # one reference per model, shared by every instance that can compare with it
    reference = "/m/tiny-llama/fidelity/reference.json"
    assert jobs["hf"].fidelity_reference == jobs["llama_cpp"].fidelity_reference == reference
    assert jobs["vllm_server"].fidelity_reference is None  # its adapter reads no distributions: nothing to wait for
    # the budget judges, in collect; the prompts are measured with
    base = ConfTree(CONF).digest("hf", "tiny-llama", "bf16")
    assert ConfTree(CONF, ["workload.fidelity.min_top1=0.9"]).digest("hf", "tiny-llama", "bf16") == base
    assert ConfTree(CONF, ["workload.fidelity.prompts=4"]).digest("hf", "tiny-llama", "bf16") != base
    overrides = ("models_dir=/m", "model.seed=2", "workload.fidelity.prompts=4", "workload.fidelity.min_top1=0.9",
                 "workload.output_tokens=8", "engine.threads=1")  # fmt: skip
    assert reference_overrides(overrides) == ["models_dir=/m", "model.seed=2", "workload.fidelity.prompts=4"]
    # a reference that failed last time (recorded as its error) is removed at planning: built again
    failed = tmp_path / "m2/tiny-llama/fidelity/reference.json"
    failed.parent.mkdir(parents=True)
    failed.write_text(json.dumps({"model": "tiny-llama", "error": "OSError: offline"}))
    plan, tree = load_plan(str(matrix), CONF, [f"models_dir={tmp_path / 'm2'}"])
    notes = schedule(plan, tree, tmp_path / "results").notes
    assert not failed.exists() and any("failed last time (OSError: offline): building it again" in n for n in notes)
    off = load_plan(str(matrix), CONF, ["workload.fidelity=false"])
    assert all(job.fidelity_reference is None for job in schedule(*off, tmp_path / "results").jobs)
