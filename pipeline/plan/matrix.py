"""Matrix file -> cells and engine instances, with errors that list the valid names.

`plan_matrix` is pure: it takes the matrix as a dict and a Catalog of what conf/ offers,
so it is cheap enough for a 1000-cell dry run and easy to test.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.config import PRECISIONS, ConfigError, unsupported_reason
from pipeline.plan.conf import GROUPS, ConfTree, to_override
from pipeline.results.schema import AXES, Cell

MATRIX_KEYS = (*AXES, "exclude", "overrides", "gpus")


class PlanError(ValueError):
    """The matrix cannot be planned; the message says what is wrong and what is valid."""


@dataclass(frozen=True)
class EngineSpec:
    """What planning needs of an engine's config, read without composing it."""

    precisions: dict[str, str] = field(default_factory=dict)  # canonical -> what the engine is asked for
    max_batch_size: int | None = None
    model_format: str = "hf"
    environment: str = ""  # envs/<environment>.yaml: where its jobs run
    fidelity: str | None = None  # how it reads next-token distributions (None: its fidelity is unsupported)


@dataclass(frozen=True)
class Catalog:
    """What conf/ offers: the option names of each group, and each engine's abilities."""

    options: dict[str, tuple[str, ...]]
    engines: dict[str, EngineSpec]

    @classmethod
    def from_tree(cls, tree: ConfTree, engines: list[str] | None = None) -> Catalog:
        """The options of every group, and the abilities of `engines` (default: all), as composed."""
        options = {group: tree.options(group) for group in GROUPS}
        wanted = [e for e in (engines if engines is not None else options["engine"]) if e in options["engine"]]
        specs = {}
        for name in wanted:
            engine = tree.engine(name)
            specs[name] = EngineSpec(
                precisions=dict(engine.precisions),
                max_batch_size=engine.max_batch_size,
                model_format=engine.model_format,
                environment=engine.environment or name,
                fidelity=engine.fidelity,
            )
        return cls(options=options, engines=specs)


@dataclass(frozen=True)
class Instance:
    """One engine instance (engine x model x precision): one process measures all its batch sizes."""

    engine: str
    model: str
    precision: str
    batch_sizes: tuple[int, ...]
    runnable: bool = True  # False when every cell is unsupported: no engine, no model needed

    @property
    def key(self) -> str:
        return f"{self.engine}/{self.model}/{self.precision}"

    @property
    def rule_name(self) -> str:
        return "measure_" + re.sub(r"\W", "_", self.key)


@dataclass(frozen=True)
class Plan:
    name: str
    cells: tuple[Cell, ...]
    overrides: tuple[str, ...] = ()
    unsupported: dict[Cell, str] = field(default_factory=dict)  # known at planning time, with the reason
    engines: dict[str, EngineSpec] = field(default_factory=dict)  # the plan's engines' abilities
    gpus: int = 0  # GPUs each engine instance needs (the matrix's `gpus:`; --config gpus=N overrides)

    def instances(self) -> list[Instance]:
        grouped: dict[tuple[str, str, str], list[Cell]] = {}
        for cell in self.cells:
            grouped.setdefault(cell.instance, []).append(cell)
        return [
            Instance(
                *key,
                batch_sizes=tuple(sorted(c.batch_size for c in cells)),
                runnable=any(c not in self.unsupported for c in cells),
            )
            for key, cells in grouped.items()
        ]


def _as_list(axis: str, value: Any) -> list:
    values = value if isinstance(value, list) else [value]
    if not values:
        raise PlanError(f"matrix axis {axis!r} is empty; give at least one value")
    return values


def _check_names(axis: str, values: list, valid: tuple[str, ...]) -> None:
    for value in values:
        if not isinstance(value, str) or value not in valid:
            hint = f" (did you mean {_closest(str(value), valid)!r}?)" if _closest(str(value), valid) else ""
            raise PlanError(f"unknown {axis} {value!r}{hint}; valid {axis} names: {', '.join(valid)}")


def _closest(word: str, names: tuple[str, ...]) -> str | None:
    import difflib

    matches = difflib.get_close_matches(word, names, n=1)
    return matches[0] if matches else None


def _batch_sizes(values: list) -> list[int]:
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise PlanError(f"batch_size values must be integers >= 1, got {value!r}")
    return values


def _matches(cell: Cell, rule: dict[str, Any]) -> bool:
    axes = cell.axes()
    return all(axes[key] in (want if isinstance(want, list) else [want]) for key, want in rule.items())


def _overrides(spec: Any) -> list[str]:
    if spec is None:
        return []
    if isinstance(spec, dict):
        return [to_override(str(key), value) for key, value in spec.items()]
    if isinstance(spec, list) and all(isinstance(s, str) and "=" in s for s in spec):
        return list(spec)
    raise PlanError("matrix overrides must be a mapping {key: value} or a list of 'key=value' strings")


def _check_override_keys(overrides: list[str]) -> None:
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key in AXES:
            raise PlanError(f"{key!r} is a matrix axis: list it under `{key}:` in the matrix, not as an override")


def plan_matrix(name: str, spec: dict[str, Any], catalog: Catalog, extra_overrides: list[str] = ()) -> Plan:
    """Expand a matrix spec into cells; raise PlanError on anything a user could have mistyped."""
    if not isinstance(spec, dict):
        raise PlanError(f"matrix {name}: expected a mapping with keys {', '.join(MATRIX_KEYS)}")
    unknown = sorted(set(spec) - set(MATRIX_KEYS))
    if unknown:
        raise PlanError(f"matrix {name}: unknown key(s) {unknown}; valid keys: {', '.join(MATRIX_KEYS)}")
    missing = [axis for axis in AXES if axis not in spec]
    if missing:
        raise PlanError(f"matrix {name}: missing axis/axes {missing}; a matrix lists all of {', '.join(AXES)}")

    axes = {axis: _as_list(axis, spec[axis]) for axis in AXES}
    for axis in ("engine", "model", "precision"):
        _check_names(axis, axes[axis], catalog.options[axis])
    _batch_sizes(axes["batch_size"])
    for axis, values in axes.items():
        if len(set(values)) != len(values):
            raise PlanError(f"matrix {name}: axis {axis} lists a value twice: {values}")

    exclude = spec.get("exclude") or []
    if not isinstance(exclude, list) or not all(isinstance(rule, dict) and rule for rule in exclude):
        raise PlanError(
            f"matrix {name}: exclude must be a list of non-empty mappings like {{engine: hf, batch_size: 16}}"
        )
    for rule in exclude:
        for key, want in rule.items():
            if key not in AXES:
                raise PlanError(
                    f"matrix {name}: exclude rule {rule} uses {key!r}; exclude keys are the axes: {', '.join(AXES)}"
                )
            for value in want if isinstance(want, list) else [want]:
                if value not in axes[key]:
                    raise PlanError(
                        f"matrix {name}: exclude rule {rule} names {key}={value!r}, which is not in the matrix "
                        f"({key}: {axes[key]}); a typo here would silently exclude nothing"
                    )

    cells = tuple(
        cell
        for cell in itertools.starmap(Cell, itertools.product(*(axes[a] for a in AXES)))
        if not any(_matches(cell, rule) for rule in exclude)
    )
    if not cells:
        raise PlanError(f"matrix {name}: every cell is excluded; nothing to run")

    unsupported = {}
    for cell in cells:
        engine = catalog.engines[cell.engine]
        reason = unsupported_reason(
            cell.engine, engine.precisions, engine.max_batch_size, cell.precision, cell.batch_size
        )
        if reason:
            unsupported[cell] = reason
    overrides = _overrides(spec.get("overrides")) + list(extra_overrides)
    _check_override_keys(overrides)
    engines = {name: catalog.engines[name] for name in axes["engine"]}
    gpus = spec.get("gpus", 0)
    if not isinstance(gpus, int) or isinstance(gpus, bool) or gpus < 0:
        raise PlanError(f"matrix {name}: gpus (GPUs per engine instance) must be a whole number >= 0, got {gpus!r}")
    return Plan(name=name, cells=cells, overrides=tuple(overrides), unsupported=unsupported, engines=engines, gpus=gpus)


def load_plan(matrix: str, conf_dir: Path, extra_overrides: list[str] = ()) -> tuple[Plan, ConfTree]:
    """A matrix (by name or path) planned against conf/, and the conf tree with its overrides
    (the matrix's own, then the command line's) applied."""
    try:
        path = ConfTree(conf_dir).matrix_file(matrix)
    except ConfigError as exc:
        raise PlanError(str(exc)) from None
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise PlanError(f"matrix file {path} is not valid YAML: {exc}") from exc
    overrides = (_overrides(spec.get("overrides")) if isinstance(spec, dict) else []) + list(extra_overrides)
    tree = ConfTree(conf_dir, overrides)
    engines = spec.get("engine") if isinstance(spec, dict) else None
    engines = [e for e in (engines if isinstance(engines, list) else [engines]) if isinstance(e, str)]
    try:
        catalog = Catalog.from_tree(tree, engines)
    except ConfigError as exc:
        raise PlanError(str(exc)) from None
    return plan_matrix(path.stem, spec, catalog, list(extra_overrides)), tree


__all__ = ["AXES", "PRECISIONS", "Catalog", "Cell", "Instance", "Plan", "PlanError", "load_plan", "plan_matrix"]
