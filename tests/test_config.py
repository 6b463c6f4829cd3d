import dataclasses

import pytest

from pipeline.config import CellConfig, ConfigError, WorkloadConfig
from pipeline.plan.conf import check_overrides, compose_cell, to_override
from tests.conftest import CONF


def test_default_config_composes_into_dataclasses():
    cfg = compose_cell([])
    assert isinstance(cfg, CellConfig)
    assert (cfg.engine.name, cfg.model.name, cfg.precision.name) == ("hf", "tiny-llama", "bf16")
    assert cfg.engine_precision == "bfloat16"


def test_overrides_reach_the_dataclasses():
    cfg = compose_cell(["model=small-llama", "precision=fp32", "batch_size=8", "workload.output_tokens=5"])
    assert cfg.model.architecture["hidden_size"] == 768
    assert cfg.engine_precision == "float32"
    assert cfg.batch_size == 8 and cfg.workload.output_tokens == 5


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["workload.output_token=3"],
            "unknown setting 'workload.output_token': workload has no 'output_token'; "
            "valid there: client_processes, fidelity, input_tokens, instance_starts, name, num_requests, output_tokens",
        ),
        (["engin.device=cpu"], "the top level has no 'engin'"),
        (["workload.output_tokens=1"], "workload.output_tokens must be >= 2"),
        (["workload.repeats=0"], "workload.repeats must be >= 1"),
        (["batch_size=0"], "batch_size must be an integer >= 1"),
        (["model=tiny-llama", "workload.input_tokens=4000"], "exceeds model tiny-llama's max_position_embeddings"),
        (["model=no-such-model"], "cannot compose"),
    ],
)
def test_bad_settings_say_what_is_wrong(overrides, message):
    with pytest.raises(ConfigError) as excinfo:
        check_overrides(overrides)
    assert message in str(excinfo.value)


def test_unknown_section_key_names_the_valid_ones():
    values = dataclasses.asdict(compose_cell([]))
    values["workload"]["warmup"] = 3
    with pytest.raises(ConfigError, match=r"unknown workload setting\(s\) \['warmup'\]; valid: .*'warmup_requests'"):
        CellConfig.from_dict(values)


def test_engine_reports_unsupported_precision_with_what_it_supports():
    engine = compose_cell([]).engine
    assert engine.unsupported_reason("bf16") is None
    assert (
        engine.unsupported_reason("int4")
        == "precision int4 is not supported by engine hf (supported: fp32, bf16, fp16)"
    )


def test_workload_defaults_are_valid():
    assert WorkloadConfig().output_tokens >= 2


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (32, "k=32"),
        (0.5, "k=0.5"),
        (True, "k=true"),
        (None, "k=null"),
        ("hf", "k=hf"),
        ("a/b-c_d.e", "k=a/b-c_d.e"),
        ("cuda:1", "k='cuda:1'"),
        ("it's", "k='it\\'s'"),
    ],
)
def test_to_override_quotes_what_hydra_would_misread(value, expected):
    assert to_override("k", value) == expected


def test_quoted_override_round_trips_through_hydra():
    cfg = compose_cell([to_override("engine.device", "cuda:1")])
    assert cfg.engine.device == "cuda:1"


def test_a_mapping_override_merges_into_the_composed_mapping():
    # a matrix's `overrides: {workload.repeats: {max: 4, target: 0.1}}` keeps the default's min and budget
    cfg = compose_cell([to_override("workload.repeats", {"max": 4, "target": 0.1})])
    policy = cfg.workload.repeat_policy
    assert (policy.min, policy.max, policy.target, policy.budget_s) == (3, 4, 0.1, 20)
    assert compose_cell([to_override("workload.repeats", 5)]).workload.repeat_policy.adaptive is False
    with pytest.raises(ConfigError, match="only plain values and mappings"):
        to_override("workload.repeats", [1, 2])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["engine=openai", "engine.server.base_url=null"], "engine.server: give a launch command or a base_url"),
        (["engine=openai", "engine.server.api=chat", "engine.server.prompt_format=token_ids"], "text prompts only"),
        (["engine=vllm_server", "engine.server.api=stream"], "engine.server.api must be one of"),
        (["engine=hf", "engine.mode=server"], "mode server needs an engine.server section"),
        (["workload.request_rate=0"], "workload.request_rate must be > 0 or null"),
        (["workload.repeats={min:4,max:2}"], r"workload.repeats.max \(2\) must be >= min \(4\)"),
        (["workload.repeats={budget_s:-1}"], "workload.repeats.budget_s must be > 0"),
        (["workload.instance_starts=0"], "workload.instance_starts must be >= 1"),
        (["workload.steady_tolerance=2"], "workload.steady_tolerance must be in"),
    ],
)
def test_bad_server_settings_say_what_is_wrong(overrides, message):
    with pytest.raises(ConfigError, match=message):
        compose_cell(overrides)


def test_server_settings_compose_into_their_own_dataclass():
    cfg = compose_cell(["engine=llama_cpp_server", "precision=int4"])
    assert cfg.engine.server.prompt_format == "text" and "--interrupt_requests" in cfg.engine.server.command
    assert cfg.engine.environment == "llama_cpp" and cfg.engine_precision == "Q4_0"
    assert CellConfig.from_dict(cfg.to_dict()) == cfg  # what the engine process receives is the same config


@pytest.mark.parametrize("override", ["engine.server.body={ignore_eos: true}", "+engine.server.body.ignore_eos=true"])
def test_the_documented_ways_to_set_an_endpoints_request_fields_work(override):
    text = (CONF / "engine/openai.yaml").read_text()
    assert "engine.server.body={ignore_eos: true}" in text and "+engine.server.body." in text
    cell = compose_cell(["engine=openai", override])
    assert cell.engine.server.body == {"ignore_eos": True}
    assert compose_cell(["engine=openai"]).engine.server.body == {}


def test_an_slo_says_what_is_wrong_with_it():
    from pipeline.config import SloConfig, WorkloadConfig

    assert WorkloadConfig(slo={"tpot_s": 0.05}).slo_config == SloConfig(tpot_s=0.05, percentile=90)
    assert WorkloadConfig(slo=None).slo_config is None
    with pytest.raises(ConfigError, match=r"unknown workload.slo setting\(s\) \['tpot'\]; valid: \['e2e_s', "):
        WorkloadConfig(slo={"tpot": 0.05})
    with pytest.raises(ConfigError, match=r"workload.slo.percentile must be in \(0, 100\), got 100"):
        WorkloadConfig(slo={"tpot_s": 0.05, "percentile": 100})
    with pytest.raises(ConfigError, match="workload.slo.ttft_s must be seconds > 0, got -1"):
        WorkloadConfig(slo={"ttft_s": -1})
    with pytest.raises(ConfigError, match="workload.slo names no target; give any of ttft_s, tpot_s, e2e_s"):
        WorkloadConfig(slo={"percentile": 90})


def test_prefix_cache_flags_take_on_and_off_only():
    from pipeline.config import ServerSettings

    assert ServerSettings(command=["x"], prefix_cache_flags={"off": ["--no-cache"]}).prefix_cache_flags["off"]
    # YAML's unquoted on/off keys arrive as booleans
    assert ServerSettings(command=["x"], prefix_cache_flags={False: ["-a"], True: []}).prefix_cache_flags == {
        "off": ["-a"],
        "on": [],
    }
    with pytest.raises(ConfigError, match=r"prefix_cache_flags takes on and off, got \['of'\]"):
        ServerSettings(command=["x"], prefix_cache_flags={"of": []})
