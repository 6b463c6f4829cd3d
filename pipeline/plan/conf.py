"""The one conf loader: conf/ -> plain dicts and CellConfig, with errors that name the valid keys.

Two ways in, one set of files:

- `compose_cell(overrides)`: Hydra's compose API, for the job that measures a cell (and the
  one-cell command line). Callers get dataclasses, never Hydra objects.
- `ConfTree(conf_dir, overrides)`: for planning. Each group file is read once, and the plan's
  overrides are applied to every group option's section, so resource planning and the
  rerun digest see what the cells will see, without composing a whole config per instance
  (planning a thousand cells must stay fast). tests/test_conf.py checks that its sections
  equal Hydra's composition.

Nothing else in the package opens conf files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from functools import cached_property
from pathlib import Path
from typing import Any

from pipeline.config import (
    CellConfig,
    ConfigError,
    EngineConfig,
    FidelityConfig,
    HardwareConfig,
    ModelConfig,
    PrecisionConfig,
    WorkloadConfig,
    build_section,
)

CONF_DIR = Path(os.environ.get("LLM_BENCH_CONF", Path(__file__).resolve().parents[2] / "conf"))
GROUPS = ("engine", "model", "precision", "workload", "hardware")
# Groups whose options take their name from the file: a copy of conf/engine/hf.yaml saved as
# my_hf.yaml is the engine `my_hf` (precision names are canonical and stay as written).
NAMED_BY_FILE = ("engine", "model", "workload", "hardware")
# The sections a cell's measurement depends on: their composed values make the rerun digest.
MEASUREMENT_SECTIONS = {
    "engine": EngineConfig,
    "model": ModelConfig,
    "precision": PrecisionConfig,
    "workload": WorkloadConfig,
}


def name_sections(values: dict[str, Any], choices: dict[str, str]) -> dict[str, Any]:
    for group in NAMED_BY_FILE:
        if isinstance(values.get(group), dict) and group in choices:
            values[group]["name"] = choices[group]
    return values


def compose_dict(overrides: list[str], conf_dir: Path = CONF_DIR) -> dict[str, Any]:
    """The composed config as plain containers; Hydra's own errors become ConfigError."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf, open_dict
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=str(Path(conf_dir).resolve()), version_base="1.3"):
            cfg = compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
        choices = {group: str(option) for group, option in cfg.hydra.runtime.choices.items()}
        with open_dict(cfg):
            del cfg["hydra"]
        values = OmegaConf.to_container(cfg, resolve=True)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(f"cannot compose the config with overrides {list(overrides)}: {exc}") from exc
    return name_sections(values, choices)


def compose_cell(overrides: list[str], conf_dir: Path = CONF_DIR) -> CellConfig:
    return CellConfig.from_dict(compose_dict(overrides, conf_dir))


def measurement_digest(sections: dict[str, Any]) -> str:
    """A fingerprint of what a cell is measured with: its composed engine, model, precision and
    workload sections, normalized through their dataclasses (defaults filled in, key order and
    override order irrelevant). Hardware datasheets, the SLO (unless a load search uses it), the
    fidelity budget, comments and analysis code are not in it: changing them re-runs collect and
    the report, never an engine."""
    canonical = {
        name: dataclasses.asdict(build_section(cls, name, sections[name])) for name, cls in MEASUREMENT_SECTIONS.items()
    }
    workload = canonical["workload"]
    if workload["search"] is None:  # a search measures against the SLO; otherwise collect judges it
        workload.pop("slo")
    fidelity = dataclasses.asdict(FidelityConfig.parse(workload["fidelity"]))
    workload["fidelity"] = {k: v for k, v in fidelity.items() if k not in FidelityConfig.ANALYSIS_ONLY}
    return hashlib.sha256(json.dumps(canonical, sort_keys=True, default=str).encode()).hexdigest()[:16]


def to_override(key: str, value: Any) -> str:
    """A `key=value` Hydra override for a plain value or a mapping of them (as YAML or --config
    gives it); a mapping merges into the composed one (`workload.repeats: {max: 4}`)."""
    return f"{key}={_override_value(key, value)}"


def _override_value(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        # Quote anything Hydra's override grammar would otherwise interpret.
        plain = value.replace("_", "").replace("-", "").replace(".", "").replace("/", "")
        return value if plain.isalnum() else "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, dict) and all(isinstance(k, str) and k.isidentifier() for k in value):
        return "{" + ",".join(f"{k}:{_override_value(f'{key}.{k}', v)}" for k, v in value.items()) + "}"
    raise ConfigError(f"override {key}: only plain values and mappings of them are supported, got {value!r}")


def check_overrides(overrides: list[str], conf_dir: Path = CONF_DIR) -> CellConfig:
    """Compose the default cell with these overrides; a mistyped key names the valid ones."""
    try:
        return compose_cell(overrides, conf_dir)
    except ConfigError:
        base = compose_dict([], conf_dir)
        for override in overrides:
            key = override.split("=", 1)[0]
            if key.startswith(("+", "~")) or "@" in key:
                continue
            node: Any = base
            for depth, part in enumerate(key.split(".")):
                if not isinstance(node, dict):
                    break
                if part not in node:
                    where = ".".join(key.split(".")[:depth]) or "the top level"
                    valid = ", ".join(sorted(node))
                    raise ConfigError(
                        f"unknown setting {key!r}: {where} has no {part!r}; valid there: {valid}"
                    ) from None
                node = node[part]
        raise


class ConfTree:
    """conf/ with a plan's overrides applied: each group option's section, each file read once."""

    def __init__(self, conf_dir: Path = CONF_DIR, overrides: tuple[str, ...] | list[str] = ()):
        self.conf_dir = Path(conf_dir)
        self.overrides = tuple(overrides)
        self._sections: dict[tuple[str, str], dict[str, Any]] = {}

    @cached_property
    def _parsed(self) -> list:
        from hydra.core.override_parser.overrides_parser import OverridesParser
        from hydra.errors import HydraException

        try:
            return OverridesParser.create().parse_overrides(list(self.overrides))
        except HydraException as exc:
            raise ConfigError(f"cannot parse the overrides {list(self.overrides)}: {exc}") from exc

    def _load(self, path: Path) -> dict[str, Any]:
        from omegaconf import OmegaConf

        node = OmegaConf.load(path)  # Hydra's own YAML loader: the same types as a composition
        return OmegaConf.to_container(node) or {}

    @cached_property
    def _root(self) -> dict[str, Any]:
        return self._load(self.conf_dir / "config.yaml")

    def options(self, group: str) -> tuple[str, ...]:
        return tuple(sorted(p.stem for p in (self.conf_dir / group).glob("*.yaml")))

    def default(self, group: str) -> str:
        """The option a cell gets for this group: an override `group=option`, else config.yaml's."""
        for override in self._parsed:
            if override.key_or_group == group and not override.is_delete():
                return str(override.value())
        for entry in self._root.get("defaults", []):
            if isinstance(entry, dict) and group in entry:
                return str(entry[group])
        raise ConfigError(f"conf/config.yaml names no default {group}")

    def section(self, group: str, option: str | None = None) -> dict[str, Any]:
        """The composed `group` section for `option` (default: the cell's), overrides applied."""
        option = option or self.default(group)
        key = (group, option)
        if key not in self._sections:
            path = self.conf_dir / group / f"{option}.yaml"
            if not path.is_file():
                valid = ", ".join(self.options(group))
                raise ConfigError(f"unknown {group} {option!r}; valid {group} names: {valid}")
            self._sections[key] = self._apply(group, self._load(path), option)
        return self._sections[key]

    def _apply(self, group: str, values: dict[str, Any], option: str) -> dict[str, Any]:
        """The overrides below `group.` applied to its file, as Hydra applies them."""
        from omegaconf import OmegaConf, open_dict
        from omegaconf.errors import OmegaConfBaseException

        node = OmegaConf.create(values)
        OmegaConf.set_struct(node, True)
        prefix = group + "."
        try:
            for override in self._parsed:
                if not override.key_or_group.startswith(prefix):
                    continue
                key = override.key_or_group[len(prefix) :]
                if override.is_delete():
                    with open_dict(node):
                        parent, _, leaf = key.rpartition(".")
                        del (OmegaConf.select(node, parent) if parent else node)[leaf]
                elif override.is_add() or override.is_force_add():
                    with open_dict(node):
                        OmegaConf.update(node, key, override.value(), merge=True, force_add=True)
                else:
                    OmegaConf.update(node, key, override.value(), merge=True)
        except (OmegaConfBaseException, KeyError) as exc:
            raise ConfigError(f"{group} {option}: cannot apply the overrides {list(self.overrides)}: {exc}") from exc
        resolved = OmegaConf.to_container(node, resolve=True)
        if group in NAMED_BY_FILE:
            resolved["name"] = option
        return resolved

    def engine(self, option: str) -> EngineConfig:
        return build_section(EngineConfig, "engine", self.section("engine", option))

    def model(self, option: str) -> ModelConfig:
        return build_section(ModelConfig, "model", self.section("model", option))

    def precision(self, option: str) -> PrecisionConfig:
        return build_section(PrecisionConfig, "precision", self.section("precision", option))

    def workload(self) -> WorkloadConfig:
        return build_section(WorkloadConfig, "workload", self.section("workload"))

    def hardware(self, option: str) -> HardwareConfig:
        return build_section(HardwareConfig, "hardware", self.section("hardware", option))

    def hardware_entries(self) -> list[HardwareConfig]:
        """Every datasheet entry (conf/hardware/ but `auto`), as the plan's overrides leave it."""
        entries = [
            build_section(HardwareConfig, "hardware", self.section("hardware", o)) for o in self.options("hardware")
        ]
        return [entry for entry in entries if entry.kind != "auto"]

    def requested_hardware(self) -> HardwareConfig:
        return build_section(HardwareConfig, "hardware", self.section("hardware"))

    def digest(self, engine: str, model: str, precision: str) -> str:
        """The rerun digest of an instance's cells (equal to measurement_digest of their configs)."""
        return measurement_digest(
            {
                "engine": self.section("engine", engine),
                "model": self.section("model", model),
                "precision": self.section("precision", precision),
                "workload": self.section("workload"),
            }
        )

    def matrix_file(self, matrix: str) -> Path:
        """A matrix given by name (conf/matrix/NAME.yaml) or as a path to a yaml file."""
        if matrix.endswith((".yaml", ".yml")) or "/" in matrix:
            path = Path(matrix)
            if not path.is_file():
                raise ConfigError(f"matrix file {matrix} does not exist")
            return path
        path = self.conf_dir / "matrix" / f"{matrix}.yaml"
        if not path.is_file():
            raise ConfigError(
                f"unknown matrix {matrix!r}; valid matrix names: {', '.join(self.options('matrix'))} "
                "(or a path to a .yaml file)"
            )
        return path
