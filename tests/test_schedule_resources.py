"""What each engine instance job asks of a machine or a cluster, and the stale-lock guard."""

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from pipeline.config import ModelConfig
from pipeline.models.shape import model_weight_bytes
from pipeline.plan import schedule as schedule_module
from pipeline.plan import snakemake_hooks
from pipeline.plan.conf import CONF_DIR, ConfTree
from pipeline.plan.schedule import BASE_MEM_MB, load_schedule, split_config
from pipeline.plan.snakemake_hooks import clear_stale_lock


def test_gpus_and_cpus_are_workflow_settings_not_overrides():
    assert split_config({"matrix": "smoke", "gpus": 1, "cpus": 8, "tracking": False}) == ("smoke", [])
    schedule = load_schedule({"matrix": "smoke", "gpus": 2, "cpus": 8}, CONF_DIR, results_root="/nonexistent")
    assert (schedule.gpus, schedule.cpus) == (2, 8)
    assert load_schedule({"matrix": "smoke"}, CONF_DIR, results_root="/nonexistent").gpus == 0


@pytest.mark.parametrize("value", ["-1", "two", "1.5"])
def test_a_bad_gpu_count_stops_planning_with_its_name(value):
    with pytest.raises(SystemExit, match=f"--config gpus= takes a whole number >= 0, got '{value}'"):
        load_schedule({"matrix": "smoke", "gpus": value}, CONF_DIR, results_root="/nonexistent")


def test_runtime_comes_from_the_workload_and_the_engine_load_limits():
    (job,) = load_schedule({"matrix": "smoke"}, CONF_DIR, results_root="/nonexistent").jobs
    assert job.batch_sizes == (1, 2)
    assert job.runtime_min == (2 * (600 + 600) + 300) // 60  # 45
    config = {"matrix": "smoke", "overrides": "workload.timeout_s=60 engine.load_timeout_s=120"}
    (short,) = load_schedule(config, CONF_DIR, results_root="/nonexistent").jobs
    assert short.runtime_min == (2 * (120 + 60) + 300) // 60  # 11


def memory_mb(model: str, precision: str, overrides=()) -> int:
    matrix = f"engine: hf\nmodel: {model}\nprecision: {precision}\nbatch_size: 1\n"
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"mem-{os.getpid()}-{model}-{precision}.yaml"
    path.write_text(matrix)
    config = {"matrix": str(path), "overrides": " ".join(overrides)}
    (job,) = load_schedule(config, CONF_DIR, results_root="/nonexistent").jobs
    return job.mem_mb


def test_memory_grows_with_the_weights_at_the_instance_precision():
    tiny = memory_mb("tiny-llama", "bf16")
    fp32 = memory_mb("mistral-7b", "fp32")
    bf16 = memory_mb("mistral-7b", "bf16")
    int4 = memory_mb("mistral-7b", "int4")
    assert BASE_MEM_MB < tiny < BASE_MEM_MB + 20
    # Mistral-7B: 7.24e9 params, twice the weights on top of the runtime's share
    assert fp32 - BASE_MEM_MB == pytest.approx(2 * 7.24e9 * 4 / 2**20, rel=0.01)
    assert fp32 - BASE_MEM_MB == pytest.approx(2 * (bf16 - BASE_MEM_MB), rel=0.01)
    assert int4 < bf16 < fp32


def test_architecture_overrides_reach_the_memory_a_job_asks():
    small = memory_mb("tiny-llama", "fp32")
    wide = memory_mb(
        "tiny-llama", "fp32", ["model.architecture.hidden_size=1024", "model.architecture.intermediate_size=4096"]
    )
    assert wide - BASE_MEM_MB > 10 * (small - BASE_MEM_MB)


def test_a_model_without_an_architecture_takes_it_from_its_config_json(tmp_path):
    (tmp_path / "config.json").write_text(
        '{"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,'
        ' "intermediate_size": 14336, "vocab_size": 32000}'
    )
    model = ModelConfig(name="local", path=str(tmp_path))
    weights, note = model_weight_bytes(model, ConfTree(CONF_DIR).precision("bf16"), "models")
    assert note == "" and weights == pytest.approx(2 * 7.24e9, rel=0.01)  # Mistral-7B's shape


def test_a_model_with_no_shape_anywhere_is_planned_with_a_note_not_a_silent_guess(tmp_path):
    model = ModelConfig(name="hub-only", hub_id="nobody/never-downloaded")
    weights, note = model_weight_bytes(model, ConfTree(CONF_DIR).precision("bf16"), "models")
    assert weights == 0 and "weights unknown" in note and "not in the local cache" in note


def test_threads_take_every_core_locally_and_a_fixed_share_on_a_cluster():
    schedule = load_schedule({"matrix": "smoke"}, CONF_DIR, results_root="/nonexistent")
    assert schedule.threads(SimpleNamespace(nodes=None, cores=16)) == 16
    assert schedule.threads(SimpleNamespace(nodes=100, cores=1)) == schedule_module.CLUSTER_CPUS
    pinned = load_schedule({"matrix": "smoke", "cpus": 3}, CONF_DIR, results_root="/nonexistent")
    assert pinned.threads(SimpleNamespace(nodes=None, cores=16)) == 3
    # a model's build or fidelity reference takes half, so that two run side by side
    assert schedule.preparation_threads(SimpleNamespace(nodes=None, cores=2)) == 1
    assert schedule.preparation_threads(SimpleNamespace(nodes=None, cores=1)) == 1
    assert pinned.preparation_threads(SimpleNamespace(nodes=None, cores=16)) == 1


def _locks(workdir: Path) -> list[str]:
    return sorted(p.name for p in (workdir / ".snakemake/locks").glob("*.lock"))


def test_a_lock_left_by_a_dead_run_is_removed_but_a_live_runs_lock_is_not(tmp_path):
    locks = tmp_path / ".snakemake/locks"
    locks.mkdir(parents=True)
    for name in ("0.input.lock", "0.output.lock"):
        (locks / name).write_text("results/x\n")
    main = SimpleNamespace(is_main_process=True)
    try:
        message = clear_stale_lock(main, tmp_path)  # no run alive here: the locks are stale
        assert "removed 2 stale Snakemake lock file(s) left by an interrupted run" in message
        assert _locks(tmp_path) == []
        (locks / "0.input.lock").write_text("results/x\n")  # now this run's own lock
        # a second Snakemake in the same directory while this one lives leaves it alone
        assert clear_stale_lock(main, tmp_path) is None
        assert _locks(tmp_path) == ["0.input.lock"]
        # and a job's own Snakemake (on a cluster node) never looks
        assert clear_stale_lock(SimpleNamespace(is_main_process=False), tmp_path) is None
    finally:
        while snakemake_hooks._RUN_GUARD:
            os.close(snakemake_hooks._RUN_GUARD.pop())
