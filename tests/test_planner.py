import pytest

from pipeline.plan.matrix import Catalog, Cell, EngineSpec, PlanError, load_plan, plan_matrix
from tests.conftest import CONF

CATALOG = Catalog(
    options={
        "engine": ("hf", "vllm"),
        "model": ("small-llama", "tiny-llama"),
        "precision": ("bf16", "fp32", "int4", "int8"),
        "workload": ("default",),
        "hardware": ("auto",),
    },
    engines={
        "hf": EngineSpec(precisions={"fp32": "float32", "bf16": "bfloat16"}),
        "vllm": EngineSpec(precisions={"bf16": "bfloat16"}, max_batch_size=4),
    },
)


def spec(**changes):
    base = {
        "engine": ["hf"],
        "model": ["tiny-llama", "small-llama"],
        "precision": ["fp32", "bf16"],
        "batch_size": [1, 4, 16],
    }
    base.update(changes)
    return base


def test_cross_product_with_exclusions():
    plan = plan_matrix("m", spec(exclude=[{"engine": "hf", "precision": "fp32", "batch_size": 16}]), CATALOG)
    assert len(plan.cells) == 2 * 2 * 3 - 2
    assert Cell("hf", "tiny-llama", "fp32", 16) not in plan.cells
    assert Cell("hf", "tiny-llama", "bf16", 16) in plan.cells


def test_exclude_values_may_be_lists():
    plan = plan_matrix("m", spec(exclude=[{"batch_size": [4, 16]}]), CATALOG)
    assert {c.batch_size for c in plan.cells} == {1}


def test_instances_group_batch_sizes_of_one_engine_model_precision():
    plan = plan_matrix("m", spec(batch_size=[16, 1, 4]), CATALOG)
    instances = plan.instances()
    assert len(instances) == 4
    assert all(i.batch_sizes == (1, 4, 16) for i in instances)


def test_scalar_axis_is_accepted():
    plan = plan_matrix("m", spec(engine="hf", batch_size=2), CATALOG)
    assert {c.batch_size for c in plan.cells} == {2}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"engine": ["hff"]}, "unknown engine 'hff' (did you mean 'hf'?); valid engine names: hf, vllm"),
        ({"model": ["huge-llama"]}, "valid model names: small-llama, tiny-llama"),
        ({"precision": ["fp8"]}, "valid precision names: bf16, fp32, int4, int8"),
        ({"batch_size": [0]}, "batch_size values must be integers >= 1"),
        ({"batch_size": ["4"]}, "batch_size values must be integers >= 1"),
        ({"batch_size": []}, "axis 'batch_size' is empty"),
        ({"batch_size": [1, 1]}, "lists a value twice"),
        ({"batchsize": [1]}, "unknown key(s) ['batchsize']; valid keys: engine, model, precision, batch_size"),
        ({"exclude": [{"engine": "vlm"}]}, "which is not in the matrix"),
        ({"exclude": [{"size": 1}]}, "exclude keys are the axes"),
        ({"exclude": [{"batch_size": [1, 4, 16]}]}, "every cell is excluded"),
        ({"overrides": {"engine": "vllm"}}, "'engine' is a matrix axis"),
        ({"overrides": 3}, "matrix overrides must be a mapping"),
    ],
)
def test_mistakes_fail_with_a_message_naming_the_valid_choices(changes, message):
    with pytest.raises(PlanError) as excinfo:
        plan_matrix("m", spec(**changes), CATALOG)
    assert message in str(excinfo.value)


def test_missing_axis_is_named():
    bad = spec()
    del bad["precision"]
    with pytest.raises(PlanError, match=r"missing axis/axes \['precision'\]"):
        plan_matrix("m", bad, CATALOG)


def test_unsupported_precision_is_known_at_planning_time():
    plan = plan_matrix("m", spec(engine=["hf", "vllm"], precision=["fp32"]), CATALOG)
    assert "supported: bf16" in plan.unsupported[Cell("vllm", "tiny-llama", "fp32", 1)]
    assert Cell("hf", "tiny-llama", "fp32", 1) not in plan.unsupported
    assert [i.runnable for i in plan.instances() if i.engine == "vllm"] == [False, False]


def test_batch_sizes_above_an_engines_limit_are_unsupported_per_cell():
    plan = plan_matrix("m", spec(engine=["vllm"], precision=["bf16"]), CATALOG)
    assert Cell("vllm", "tiny-llama", "bf16", 4) not in plan.unsupported
    assert plan.unsupported[Cell("vllm", "tiny-llama", "bf16", 16)] == (
        "batch size 16 is above what engine vllm can run at once (4)"
    )
    assert all(i.runnable for i in plan.instances())


def test_overrides_from_matrix_then_command_line():
    plan = plan_matrix(
        "m",
        spec(overrides={"workload.output_tokens": 64, "engine.device": "cuda:1"}),
        CATALOG,
        extra_overrides=["workload.output_tokens=8"],
    )
    assert plan.overrides == ("workload.output_tokens=64", "engine.device='cuda:1'", "workload.output_tokens=8")


def test_shipped_matrices_plan(tmp_path):
    for path in (CONF / "matrix").glob("*.yaml"):
        plan, _ = load_plan(path.stem, CONF)
        assert plan.cells, path


def test_unknown_matrix_lists_the_shipped_ones():
    with pytest.raises(PlanError, match="unknown matrix 'nope'; valid matrix names: .*default"):
        load_plan("nope", CONF)


def test_matrix_given_as_a_path(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("engine: hf\nmodel: tiny-llama\nprecision: bf16\nbatch_size: [1, 2]\n")
    plan, _ = load_plan(str(path), CONF)
    assert plan.name == "mine" and len(plan.cells) == 2


def test_overrides_reach_what_planning_reads_of_an_engine(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("engine: hf\nmodel: tiny-llama\nprecision: bf16\nbatch_size: [1, 2]\n")
    plan, _ = load_plan(str(path), CONF, ["engine.max_batch_size=1"])
    assert list(plan.unsupported) == [Cell("hf", "tiny-llama", "bf16", 2)]
    assert "above what engine hf can run at once (1)" in plan.unsupported[Cell("hf", "tiny-llama", "bf16", 2)]


def test_invalid_yaml_is_reported(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("engine: [hf\n")
    with pytest.raises(PlanError, match="not valid YAML"):
        load_plan(str(path), CONF)
