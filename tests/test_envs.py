"""envs/*.yaml cannot be solved here (no conda); check that they parse and agree with CI's pins."""

import tomllib
from pathlib import Path

import yaml

from pipeline.engines.registry import ENGINES
from tests.conftest import CONF, REPO

ORCHESTRATION_ONLY = {"snakemake"}  # runs the workflow; not needed inside a job's environment


def pip_pins(env_file: Path) -> set[str]:
    spec = yaml.safe_load(env_file.read_text())
    assert spec["name"] and "python=3.11" in spec["dependencies"], env_file
    (pip,) = [d["pip"] for d in spec["dependencies"] if isinstance(d, dict)]
    return {line.replace(" ", "") for line in pip}


def test_every_engine_has_an_environment():
    for engine in ENGINES:
        assert (REPO / "envs" / f"{engine}.yaml").is_file(), engine
    for conf in (CONF / "engine").glob("*.yaml"):
        assert (REPO / "envs" / f"{conf.stem}.yaml").is_file(), conf


def test_hf_environment_pins_what_ci_installs():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    ci = {
        d.replace(" ", "") for d in project["dependencies"] if d.split(">")[0].split("=")[0] not in ORCHESTRATION_ONLY
    }
    assert pip_pins(REPO / "envs/hf.yaml") == ci
