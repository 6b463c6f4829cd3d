"""What the Snakefile needs, kept out of it: --config -> plan -> the jobs still to run.

A job is one engine instance with the batch sizes that still need measuring. Finished
cells (status ok or unsupported, measured with the same overrides) are no job's output,
so a re-run never touches them; a failed, timed-out or stale cell is. Its rule's params
carry a token that changes with every attempt, so Snakemake's params trigger re-runs it
even though its previous summary.json exists.
"""

from __future__ import annotations

import dataclasses
import fcntl
import functools
import math
import os
import shlex
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.compose import check_overrides, conf_digest, to_override
from pipeline.config import CellConfig, ConfigError, ModelConfig, PrecisionConfig
from pipeline.planner import Cell, EngineSpec, Instance, Plan, PlanError, load_plan, matrix_path
from pipeline.results import FINAL, read_summary, summary_path
from pipeline.roofline import ModelShape, weight_bytes

# Workflow settings, not Hydra overrides: gpus and cpus are what each engine instance job asks.
RESERVED_KEYS = ("matrix", "overrides", "tracking", "gpus", "cpus")
# A job's memory: the Python/engine runtime plus twice the weights (loading copies them once).
BASE_MEM_MB = 3072
# A job's cores when none are given and no --cores bounds them (a cluster executor).
CLUSTER_CPUS = 4
# Per job, beyond its cells' own limits: Snakemake's start in the job, probes, writing results.
RUNTIME_MARGIN_S = 300
GPU_MODEL_ENV = "LLM_BENCH_SLURM_GPU_MODEL"


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
    environment: str = ""  # envs/<environment>.yaml (server engines run in their engine's)
    mem_mb: int = BASE_MEM_MB  # host memory the job asks (resources: mem_mb)
    runtime_min: int = 60  # the job's wall-time limit (resources: runtime), from the workload's timeouts


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
    gpus: int = 0  # GPUs each engine instance job asks (--config gpus=N)
    cpus: int | None = None  # cores each engine instance job asks (--config cpus=N); None: see threads()
    gpu_model: str = ""  # SLURM --gpus=MODEL:N (LLM_BENCH_SLURM_GPU_MODEL); only for jobs that ask GPUs

    def threads(self, workflow) -> int:
        """Cores per engine instance job: --config cpus=N; else, with --cores, all of them (a CPU
        benchmark then never shares cores); on a cluster executor (no --cores) CLUSTER_CPUS."""
        if self.cpus:
            return self.cpus
        if workflow.nodes is None:
            return workflow.cores or 1
        return CLUSTER_CPUS

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
                environment=plan.engines[instance.engine].environment or instance.engine,
            )
        )
    matrix_file = matrix_file or Path(conf_dir) / "matrix" / f"{plan.name}.yaml"
    jobs = [_with_resources(job, base, plan.overrides, conf_dir) for job in jobs]
    return Schedule(plan, matrix_file, results_dir, models_dir, synthetic, tuple(jobs), states)


def _raw_conf(conf_dir: Path, group: str, name: str) -> dict:
    path = Path(conf_dir) / group / f"{name}.yaml"
    stat = path.stat()
    return _parsed_yaml(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4096)
def _parsed_yaml(path: Path, mtime_ns: int, size: int) -> dict:  # keyed on mtime/size: an edit is seen
    return yaml.safe_load(path.read_text()) or {}


def _with_resources(job: InstanceJob, base: CellConfig, overrides: tuple[str, ...], conf_dir: Path) -> InstanceJob:
    """What the job asks of the machine or cluster, read from the conf files (never composed per
    job: planning a thousand cells must stay fast)."""
    given = {o.split("=", 1)[0].lstrip("+") for o in overrides}
    engine = _raw_conf(conf_dir, "engine", job.instance.engine)
    load_s = base.engine.load_timeout_s if "engine.load_timeout_s" in given else engine.get("load_timeout_s", 600)
    # worst case: every cell times out and the next one starts a fresh engine
    runtime_s = len(job.batch_sizes) * (float(load_s) + base.workload.timeout_s) + RUNTIME_MARGIN_S
    return dataclasses.replace(job, mem_mb=memory_mb(job.instance, conf_dir), runtime_min=math.ceil(runtime_s / 60))


def memory_mb(instance: Instance, conf_dir: Path) -> int:
    """Host memory for one engine instance: the runtime plus twice its weights at its precision."""
    try:
        architecture = _raw_conf(conf_dir, "model", instance.model).get("architecture")
        precision = PrecisionConfig(**_raw_conf(conf_dir, "precision", instance.precision))
        weights = weight_bytes(ModelShape.from_architecture(architecture), precision) if architecture else 0
    except (KeyError, TypeError, ValueError, ConfigError):
        weights = 0  # an unusual model entry: the runtime's share only
    return BASE_MEM_MB + math.ceil(2 * weights / 2**20)


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
        return dataclasses.replace(
            planned,
            tracking=_flag(config.get("tracking", True), "tracking"),
            gpus=_count(config.get("gpus", 0), "gpus"),
            cpus=_count(config.get("cpus", 0), "cpus") or None,
            gpu_model=os.environ.get(GPU_MODEL_ENV, ""),
        )
    except PlanError as exc:
        sys.exit(f"llm-infer-bench: {exc}")


def _flag(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "false", "yes", "no", "1", "0"):
        return str(value).lower() in ("true", "yes", "1")
    raise PlanError(f"--config {key}= takes true or false, got {value!r}")


def _count(value: Any, key: str) -> int:
    try:
        number = int(str(value))
    except ValueError:
        number = -1
    if number < 0:
        raise PlanError(f"--config {key}= takes a whole number >= 0, got {value!r}")
    return number


def model_overrides(overrides: tuple[str, ...]) -> list[str]:
    """The overrides that shape a materialized model (model.*)."""
    return [o for o in overrides if o.split("=", 1)[0].lstrip("+~").startswith("model.")]


def python_command(workflow, replace_shell: bool = False) -> str:
    """How jobs start Python with the `pipeline` package importable from any workdir.

    Without conda, the interpreter running Snakemake (a venv need not be activated);
    with --sdm conda, the `python` that the rule's environment puts first on PATH.
    replace_shell: `exec` it, so that Python is the job's process itself, not a child of
    its shell (what pipeline.lifetime needs to see Snakemake die).
    """
    methods = {m.name for m in workflow.deployment_settings.deployment_method}
    python = "python" if "CONDA" in methods else shlex.quote(sys.executable)
    return f"PYTHONPATH={shlex.quote(workflow.basedir)} {'exec ' if replace_shell else ''}{python}"


# ---- interrupted runs ---------------------------------------------------------------------

_RUN_GUARD: list[int] = []  # the open guard file: held (flocked) for this Snakemake's lifetime


def clear_stale_lock(workflow, workdir: Path = Path(".")) -> str | None:
    """A Snakemake killed by SIGKILL leaves its working-directory lock behind, and the next
    run would stop with "Directory cannot be locked". Every main Snakemake process of this
    workflow holds a flock on .snakemake/llm-infer-bench.run while it lives (the kernel drops
    it however the process ends). Whoever gets that flock knows that no run of ours is alive
    here, so any lock left in .snakemake/locks is stale: it is removed, and said so.

    Returns the message, or None when there was nothing to do. Jobs' own Snakemake processes
    (a cluster job, a subprocess) never touch it.
    """
    if not workflow.is_main_process:
        return None
    state = workdir / ".snakemake"
    state.mkdir(exist_ok=True)
    fd = os.open(state / "llm-infer-bench.run", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # another run of this workflow is alive here (or no flock on this filesystem)
        os.close(fd)
        return None
    _RUN_GUARD.append(fd)
    locks = sorted((state / "locks").glob("*.lock")) if (state / "locks").is_dir() else []
    for lock in locks:
        lock.unlink(missing_ok=True)
    if locks:
        return (
            f"llm-infer-bench: removed {len(locks)} stale Snakemake lock file(s) left by an interrupted run "
            "(no run of this workflow is alive in this directory); its finished cells are kept"
        )
    return None
