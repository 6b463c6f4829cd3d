"""What the Snakefile needs, kept out of it: --config -> plan -> the jobs still to run.

A job is one engine instance with the batch sizes that still need measuring. Finished
cells (status ok or unsupported, measured with the same overrides) are no job's output,
so a re-run never touches them; a failed, timed-out or stale cell is. Its rule's params
carry a token that changes with every attempt, so Snakemake's params trigger re-runs it
even though its previous summary.json exists.
"""

from __future__ import annotations

import dataclasses
import shlex
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.compose import check_overrides, conf_digest, to_override
from pipeline.config import ConfigError, ModelConfig
from pipeline.planner import Cell, EngineSpec, Instance, Plan, PlanError, load_plan, matrix_path
from pipeline.results import FINAL, read_summary, summary_path

RESERVED_KEYS = ("matrix", "overrides", "tracking")


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def split_config(config: dict[str, Any]) -> tuple[str, list[str]]:
    """Snakemake's --config -> (matrix name, Hydra overrides for every cell).

    Snakemake refuses dotted keys (`--config workload.output_tokens=32`), so a setting
    below the top level is given either Hydra-style in `overrides="k=v k=v"` or nested,
    `workload="{output_tokens: 32}"`; every other key is a top-level override.
    """
    matrix = str(config.get("matrix", "default"))
    rest = {k: v for k, v in config.items() if k not in RESERVED_KEYS}
    overrides = [to_override(key, value) for key, value in _flatten(rest).items()]
    extra = config.get("overrides") or []
    overrides += shlex.split(extra) if isinstance(extra, str) else [str(o) for o in extra]
    return matrix, overrides


@dataclass(frozen=True)
class InstanceJob:
    instance: Instance
    batch_sizes: tuple[int, ...]  # the pending ones only
    state: str  # changes whenever a pending cell's previous attempt changes
    outputs: tuple[str, ...]
    model_input: str | None  # the materialized synthetic model this instance loads


@dataclass(frozen=True)
class Schedule:
    plan: Plan
    matrix_file: Path
    results_dir: Path
    models_dir: str
    synthetic_models: tuple[str, ...]
    jobs: tuple[InstanceJob, ...]
    cell_states: dict[Cell, str]
    tracking: bool = True  # log to MLflow (--config tracking=false turns it off)

    def summaries(self) -> list[str]:
        return [str(summary_path(self.results_dir, cell)) for cell in self.plan.cells]

    def describe(self) -> str:
        counts = Counter(state.split(":")[0] for state in self.cell_states.values())
        parts = [
            f"{n} {label}"
            for label, n in (
                ("done", counts["done"]),
                ("new", counts["new"]),
                ("to retry", counts["retry"]),
                ("stale (settings changed)", counts["stale"]),
            )
            if n
        ]
        unsupported = len(self.plan.unsupported)
        text = (
            f"matrix {self.plan.name}: {len(self.plan.cells)} cells in {len(self.plan.instances())} "
            f"engine instances; {', '.join(parts)}; {len(self.jobs)} instance job(s) to run"
        )
        if unsupported:
            text += f"; {unsupported} cell(s) unsupported by their engine (recorded, not run)"
        return text


def cell_state(summary: dict | None, overrides: tuple[str, ...], digest: str) -> str:
    """new, done, stale (its overrides or conf files changed since), or retry:<attempt>."""
    if summary is None:
        return "new"
    if summary.get("status") in FINAL:
        same = summary.get("overrides") == list(overrides) and summary.get("conf_digest") == digest
        return "done" if same else "stale"
    # The attempt's finishing time makes the token unique per attempt.
    return f"retry:{summary.get('status')}@{summary.get('finished_at')}"


def _is_synthetic(model: str, composed: ModelConfig, overrides: tuple[str, ...], conf_dir: Path) -> bool:
    """Whether a cell of this model loads a materialized synthetic model (from its conf file
    and any model.synthetic / model.path override, which applies to every model)."""
    spec = yaml.safe_load((Path(conf_dir) / "model" / f"{model}.yaml").read_text()) or {}
    given = {o.split("=", 1)[0].lstrip("+") for o in overrides}
    synthetic = composed.synthetic if "model.synthetic" in given else spec.get("synthetic", False)
    path = composed.path if "model.path" in given else spec.get("path")
    return bool(synthetic) and not path


def schedule(plan: Plan, results_dir: Path, conf_dir: Path, matrix_file: Path | None = None) -> Schedule:
    """Validate the plan's settings, then find which cells each instance still has to measure."""
    # One composition validates every override (composing costs ~0.1 s: never once per cell).
    models = sorted({cell.model for cell in plan.cells})
    try:
        base = check_overrides([*plan.overrides, f"model={models[0]}"], conf_dir)
    except ConfigError as exc:
        raise PlanError(str(exc)) from None
    synthetic = tuple(m for m in models if _is_synthetic(m, base.model, plan.overrides, conf_dir))
    models_dir = base.models_dir

    digests = {instance: conf_digest(*instance, conf_dir) for instance in {cell.instance for cell in plan.cells}}
    states = {
        cell: cell_state(read_summary(summary_path(results_dir, cell)), plan.overrides, digests[cell.instance])
        for cell in plan.cells
    }
    jobs = []
    for instance in plan.instances():
        pending = tuple(
            bs
            for bs in instance.batch_sizes
            if states[Cell(instance.engine, instance.model, instance.precision, bs)] != "done"
        )
        if not pending:
            continue
        cells = [Cell(instance.engine, instance.model, instance.precision, bs) for bs in pending]
        jobs.append(
            InstanceJob(
                instance=instance,
                batch_sizes=pending,
                state=";".join(f"bs{c.batch_size}={states[c]}" for c in cells),
                outputs=tuple(str(summary_path(results_dir, c)) for c in cells),
                model_input=model_input(models_dir, instance, plan.engines[instance.engine])
                if instance.model in synthetic
                else None,
            )
        )
    matrix_file = matrix_file or Path(conf_dir) / "matrix" / f"{plan.name}.yaml"
    return Schedule(plan, matrix_file, results_dir, models_dir, synthetic, tuple(jobs), states)


def model_input(models_dir: str, instance: Instance, engine: EngineSpec) -> str | None:
    """The file a synthetic model's instance loads, which the workflow materializes first."""
    if not instance.runnable:
        return None
    if engine.model_format == "gguf":
        return f"{models_dir}/{instance.model}/gguf/{engine.precisions[instance.precision]}.gguf"
    if engine.model_format == "hf":
        return f"{models_dir}/{instance.model}/config.json"
    return None  # compiled MLC builds are not made here


def load_schedule(config: dict[str, Any], conf_dir: Path, results_root: str = "results") -> Schedule:
    """--config -> Schedule; a PlanError ends the workflow with its message, before any job runs."""
    matrix, overrides = split_config(config)
    try:
        plan = load_plan(matrix, conf_dir, overrides)
        planned = schedule(plan, Path(results_root) / plan.name, conf_dir, matrix_path(matrix, conf_dir))
        return dataclasses.replace(planned, tracking=_flag(config.get("tracking", True), "tracking"))
    except PlanError as exc:
        sys.exit(f"llm-infer-bench: {exc}")


def _flag(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "false", "yes", "no", "1", "0"):
        return str(value).lower() in ("true", "yes", "1")
    raise PlanError(f"--config {key}= takes true or false, got {value!r}")


def model_overrides(overrides: tuple[str, ...]) -> list[str]:
    """The overrides that shape a materialized model (model.*)."""
    return [o for o in overrides if o.split("=", 1)[0].lstrip("+~").startswith("model.")]


def python_command(workflow) -> str:
    """How jobs start Python with the `pipeline` package importable from any workdir.

    Without conda, the interpreter running Snakemake (a venv need not be activated);
    with --sdm conda, the `python` that the rule's environment puts first on PATH.
    """
    methods = {m.name for m in workflow.deployment_settings.deployment_method}
    python = "python" if "CONDA" in methods else shlex.quote(sys.executable)
    return f"PYTHONPATH={shlex.quote(workflow.basedir)} {python}"
