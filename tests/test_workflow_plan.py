"""The Snakefile's helpers: --config splitting, and which cells a (re-)run must measure."""

import pytest

from pipeline.compose import conf_digest
from pipeline.planner import Cell, load_plan
from pipeline.results import write_json
from pipeline.workflow import cell_state, schedule, split_config
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


def test_default_matrix_when_none_given():
    assert split_config({}) == ("default", [])


@pytest.mark.parametrize(
    ("summary", "state"),
    [
        (None, "new"),
        ({"status": "ok", "overrides": ["a=1"], "conf_digest": "D"}, "done"),
        ({"status": "unsupported", "overrides": ["a=1"], "conf_digest": "D"}, "done"),
        ({"status": "ok", "overrides": ["a=2"], "conf_digest": "D"}, "stale"),
        ({"status": "ok", "overrides": ["a=1"], "conf_digest": "edited"}, "stale"),
        ({"status": "error", "overrides": ["a=1"], "finished_at": "T1"}, "retry:error@T1"),
        ({"status": "timeout", "overrides": ["a=1"], "finished_at": "T2"}, "retry:timeout@T2"),
    ],
)
def test_cell_state(summary, state):
    assert cell_state(summary, ("a=1",), "D") == state


def test_conf_digest_follows_the_files_a_cell_uses(tmp_path):
    import shutil

    from pipeline.compose import conf_digest

    conf = shutil.copytree(CONF, tmp_path / "conf")
    before = conf_digest("hf", "tiny-llama", "bf16", conf)
    assert conf_digest("hf", "small-llama", "bf16", conf) != before
    (conf / "model/small-llama.yaml").write_text("edited: true\n")  # a file the cell does not use
    assert conf_digest("hf", "tiny-llama", "bf16", conf) == before
    (conf / "model/tiny-llama.yaml").write_text("edited: true\n")
    assert conf_digest("hf", "tiny-llama", "bf16", conf) != before


def test_schedule_keeps_finished_cells_and_reruns_the_rest(tmp_path):
    plan = load_plan("smoke", CONF)
    results = tmp_path / "results" / "smoke"
    bs1, bs2 = (Cell("hf", "tiny-llama", "bf16", bs) for bs in (1, 2))
    digest = conf_digest("hf", "tiny-llama", "bf16", CONF)
    write_json(
        results / "hf/tiny-llama/bf16/bs1/summary.json",
        {"status": "ok", "overrides": list(plan.overrides), "conf_digest": digest},
    )
    write_json(
        results / "hf/tiny-llama/bf16/bs2/summary.json",
        {"status": "error", "overrides": list(plan.overrides), "finished_at": "T"},
    )
    sched = schedule(plan, results, CONF)
    assert sched.cell_states == {bs1: "done", bs2: "retry:error@T"}
    (job,) = sched.jobs
    assert job.batch_sizes == (2,)
    assert job.outputs == (str(results / "hf/tiny-llama/bf16/bs2/summary.json"),)
    assert job.model_input == "models/tiny-llama/config.json"
    assert "1 done" in sched.describe() and "1 to retry" in sched.describe()

    # the next attempt fails again: a new token, so Snakemake's params trigger re-runs it
    write_json(
        results / "hf/tiny-llama/bf16/bs2/summary.json",
        {"status": "error", "overrides": list(plan.overrides), "finished_at": "T+1"},
    )
    assert schedule(plan, results, CONF).jobs[0].state != job.state


def test_schedule_has_no_job_when_everything_is_done(tmp_path):
    plan = load_plan("smoke", CONF)
    results = tmp_path / "smoke"
    done = {"status": "ok", "overrides": list(plan.overrides), "conf_digest": conf_digest("hf", "tiny-llama", "bf16")}
    for bs in (1, 2):
        write_json(results / f"hf/tiny-llama/bf16/bs{bs}/summary.json", done)
    assert schedule(plan, results, CONF).jobs == ()
