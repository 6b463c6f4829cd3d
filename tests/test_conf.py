"""The one conf loader: planning's sections equal Hydra's composition, and engines are named in
one place (their conf file)."""

import shutil

import pytest

from pipeline.config import ConfigError
from pipeline.engines.base import Engine, adapter_class
from pipeline.plan.conf import GROUPS, ConfTree, compose_dict
from tests.conftest import CONF, REPO

OVERRIDES = [
    [],
    ["workload.output_tokens=8", "engine.threads=2", "model.seed=4"],
    ["model.architecture.hidden_size=512", "+engine.options.extra=1", "precision.kv_bytes=1"],
    ["workload.request_rate=2.5", "engine.load_timeout_s=30"],
]


@pytest.mark.parametrize("overrides", OVERRIDES)
@pytest.mark.parametrize("group", ["engine", "model", "precision", "workload", "hardware"])
def test_every_section_equals_hydras_composition(group, overrides):
    tree = ConfTree(CONF, overrides)
    for option in tree.options(group):
        composed = compose_dict([*overrides, f"{group}={option}"])
        assert tree.section(group, option) == composed[group], (group, option)


def test_a_group_choice_among_the_overrides_is_the_cells_default():
    tree = ConfTree(CONF, ["hardware=a100-80g"])
    assert tree.requested_hardware().name == "a100-80g"
    assert tree.requested_hardware().memory_bandwidth_gbs == 2039


def test_an_unknown_key_is_refused_as_hydra_refuses_it():
    with pytest.raises(ConfigError, match="engine hf: cannot apply the overrides"):
        ConfTree(CONF, ["engine.no_such_key=1"]).section("engine", "hf")


def test_every_engine_conf_names_an_adapter_that_resolves():
    tree = ConfTree(CONF)
    for name in tree.options("engine"):
        engine = tree.engine(name)
        adapter = adapter_class(engine)
        assert issubclass(adapter, Engine), name
        assert (REPO / "envs" / f"{engine.environment}.yaml").is_file(), name
        assert engine.name == name


def test_a_copy_of_an_engine_file_under_a_new_name_is_that_engine(tmp_path):
    conf = shutil.copytree(CONF, tmp_path / "conf")
    shutil.copy(conf / "engine/hf.yaml", conf / "engine/my_hf.yaml")
    engine = ConfTree(conf).engine("my_hf")
    assert engine.name == "my_hf" and adapter_class(engine).__name__ == "HFEngine"
    assert compose_dict(["engine=my_hf"], conf)["engine"]["name"] == "my_hf"


def test_an_adapter_that_does_not_exist_says_which_conf_names_it(tmp_path):
    conf = shutil.copytree(CONF, tmp_path / "conf")
    text = (conf / "engine/hf.yaml").read_text().replace("pipeline.engines.hf:HFEngine", "pipeline.engines.hf:Nope")
    (conf / "engine/broken.yaml").write_text(text)
    with pytest.raises(Exception, match=r"engine broken: its adapter pipeline.engines.hf:Nope \(conf/engine/broken"):
        adapter_class(ConfTree(conf).engine("broken"))


def test_groups_are_the_conf_folders():
    assert set(GROUPS) <= {p.name for p in CONF.iterdir() if p.is_dir()}
