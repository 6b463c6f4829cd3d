"""What the Snakefile needs, kept out of it: --config -> plan -> the jobs still to run.

A job is one engine instance with the batch sizes that still need measuring. Finished
cells (status ok or unsupported, measured with the same measurement digest) are no job's
output, so a re-run never touches them; a failed, timed-out or stale cell is. Such a cell's
summary.json exists already, so each job also outputs an attempt record named by a token
that changes with every attempt: it is missing until the job has run, whatever rerun
triggers a profile sets, so failed cells are always retried.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shlex
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import ConfigError, FidelityConfig
from pipeline.models.paths import fidelity_reference_path
from pipeline.models.shape import model_weight_bytes
from pipeline.plan.conf import ConfTree, check_overrides, to_override
from pipeline.plan.matrix import EngineSpec, Instance, Plan, PlanError, load_plan
from pipeline.results.schema import FINAL, Cell, CellResult
from pipeline.results.store import read_result, summary_path
from pipeline.run.fidelity import failed_reference

# Workflow settings, not Hydra overrides: gpus and cpus are what each engine instance job asks.
RESERVED_KEYS = ("matrix", "overrides", "tracking", "gpus", "cpus")
# A job's memory: the Python/engine runtime plus twice the weights (loading copies them once).
BASE_MEM_MB = 3072
# A job's cores when none are given and no --cores bounds them (a cluster executor).
CLUSTER_CPUS = 4
# Per job, beyond its cells' own limits: Snakemake's start in the job, probes, writing results.
RUNTIME_MARGIN_S = 300
GPU_MODEL_ENV = "LLM_BENCH_SLURM_GPU_MODEL"
ENVS_DIR = Path(__file__).resolve().parents[2] / "envs"


# Settings whose value is a whole mapping, null by default: set as one (workload.slo={tpot_s: 0.05}),
# since a dotted key below a null cannot be overridden.
WHOLE_MAPPINGS = ("workload.slo", "workload.search")


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict) and f"{prefix}{key}" not in WHOLE_MAPPINGS:
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
    outputs: tuple[str, ...]  # the pending cells' summary.json files
    attempt_file: str  # this attempt's record (named by the state): missing until the job ran
    model_input: str | None  # the materialized synthetic model this instance loads
    fidelity_reference: str | None = None  # the model's hf fp32 reference its fidelity pass compares with
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
    hardware: str = "auto"  # the datasheet entry collect judges the cells against (conf/hardware/)
    slo: str = "null"  # workload.slo as JSON, for collect
    reference_settings: str = "{}"  # what fixes the fidelity references, as JSON: a change rebuilds them
    fidelity_budget: str = "null"  # workload.fidelity as JSON, for collect (its budget judges the figures)
    notes: tuple[str, ...] = ()  # what planning could only guess (printed with the plan)
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

    def preparation_threads(self, workflow) -> int:
        """Cores for a job that prepares a model (a synthetic model's build and brief training, a
        fidelity reference): half an instance's, so that two run side by side, each with its own
        torch threads (the two synthetic builds side by side on 2 cores, outside Snakemake, which
        also exports OMP_NUM_THREADS: 48 s with one thread each, 336 s with torch's two each)."""
        return max(1, self.threads(workflow) // 2)

    def environment_file(self, job: InstanceJob, envs_dir: Path = ENVS_DIR) -> str:
        """envs/<environment>.yaml, or envs/<environment>-gpu.yaml for jobs that ask GPUs where the
        engine's GPU build is another environment (vLLM, llama.cpp)."""
        if self.gpus and (envs_dir / f"{job.environment}-gpu.yaml").is_file():
            return str(envs_dir / f"{job.environment}-gpu.yaml")
        return str(envs_dir / f"{job.environment}.yaml")

    def analysis_code(self) -> list[str]:
        """The code collect runs on the results: editing it re-runs collect, never an engine."""
        package = Path(__file__).resolve().parents[1]
        files = [
            *(package / "analysis").glob("*.py"),
            package / "models" / "shape.py",
            package / "results" / "schema.py",
            package / "stats.py",
        ]
        return sorted(str(path) for path in files)

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
        return "\n".join([text, *(f"  note: {note}" for note in self.notes)])


def cell_state(result: CellResult | None, digest: str) -> str:
    """new, done, stale (what it was measured with changed since), or retry:<attempt>."""
    if result is None:
        return "new"
    if result.status in FINAL:
        return "done" if result.digest == digest else "stale"
    # The attempt's finishing time makes the token unique per attempt.
    return f"retry:{result.status}@{result.finished_at}"


def schedule(plan: Plan, tree: ConfTree, results_dir: Path, matrix_file: Path | None = None) -> Schedule:
    """Validate the plan's settings, then find which cells each instance still has to measure."""
    # One composition validates every override (composing costs ~0.1 s: never once per cell).
    models = sorted({cell.model for cell in plan.cells})
    try:
        base = check_overrides([*plan.overrides, f"model={models[0]}"], tree.conf_dir)
        model_configs = {name: tree.model(name) for name in models}
        digests = {instance: tree.digest(*instance) for instance in {cell.instance for cell in plan.cells}}
    except ConfigError as exc:
        raise PlanError(str(exc)) from None
    synthetic = tuple(m for m in models if model_configs[m].synthetic and not model_configs[m].path)
    models_dir = base.models_dir
    check_slo_engines(base.workload.slo_config, {name: tree.engine(name).mode for name in plan.engines})

    states = {
        cell: cell_state(read_result(summary_path(results_dir, cell)), digests[cell.instance]) for cell in plan.cells
    }
    jobs, notes = [], []
    compares = base.workload.fidelity_config.enabled  # each instance's fidelity pass needs its model's reference
    if compares:
        notes += retry_failed_references([fidelity_reference_path(model_configs[m], models_dir) for m in models])
    for instance in plan.instances():
        pending = tuple(
            bs
            for bs in instance.batch_sizes
            if states[Cell(instance.engine, instance.model, instance.precision, bs)] != "done"
        )
        if not pending:
            continue
        cells = [Cell(instance.engine, instance.model, instance.precision, bs) for bs in pending]
        state = ";".join(f"bs{c.batch_size}={states[c]}" for c in cells)
        engine = tree.engine(instance.engine)
        # worst case: every cell of every engine start times out and the next one starts a fresh engine
        per_start = len(pending) * (engine.load_timeout_s + base.workload.timeout_s)
        runtime_s = base.workload.instance_starts * per_start + RUNTIME_MARGIN_S
        if base.workload.search_config is not None:  # once per instance, its last probe may overrun the budget
            runtime_s += base.workload.search_config.budget_s + base.workload.timeout_s
        weights, guessed = model_weight_bytes(
            model_configs[instance.model], tree.precision(instance.precision), models_dir
        )
        if guessed:
            notes.append(f"{instance.key}: {guessed}")
        jobs.append(
            InstanceJob(
                instance=instance,
                batch_sizes=pending,
                state=state,
                outputs=tuple(str(summary_path(results_dir, c)) for c in cells),
                attempt_file=f"{results_dir}/{instance.key}/attempts/{hashlib.sha256(state.encode()).hexdigest()[:12]}.json",
                model_input=model_input(models_dir, instance, plan.engines[instance.engine])
                if instance.model in synthetic
                else None,
                fidelity_reference=str(fidelity_reference_path(model_configs[instance.model], models_dir))
                if compares and instance.runnable and plan.engines[instance.engine].fidelity
                else None,
                environment=plan.engines[instance.engine].environment or instance.engine,
                mem_mb=BASE_MEM_MB + math.ceil(2 * weights / 2**20),
                runtime_min=math.ceil(runtime_s / 60),
            )
        )
    matrix_file = matrix_file or tree.conf_dir / "matrix" / f"{plan.name}.yaml"
    return Schedule(
        plan,
        matrix_file,
        results_dir,
        models_dir,
        synthetic,
        tuple(jobs),
        states,
        hardware=base.hardware.name,
        slo=json.dumps(base.workload.slo),
        reference_settings=json.dumps(
            base.workload.fidelity_config.reference_settings(base.workload.seed), sort_keys=True
        ),
        fidelity_budget=json.dumps(dataclasses.asdict(base.workload.fidelity_config), sort_keys=True),
        notes=tuple(notes),
    )


def retry_failed_references(paths: list[Path]) -> list[str]:
    """A reference that could not be built is recorded as its error (the speed cells do not wait on
    it); planning removes such a record, so that the workflow builds the reference again."""
    notes = []
    for path in paths:
        error = failed_reference(path)
        if error:
            path.unlink()
            notes.append(f"the fidelity reference {path} failed last time ({error}): building it again")
    return notes


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
        plan, tree = load_plan(matrix, conf_dir, overrides)
        planned = schedule(plan, tree, Path(results_root) / plan.name, tree.matrix_file(matrix))
        return dataclasses.replace(
            planned,
            tracking=_flag(config.get("tracking", True), "tracking"),
            gpus=_count(config["gpus"], "gpus") if "gpus" in config else plan.gpus,
            cpus=_count(config.get("cpus", 0), "cpus") or None,
            gpu_model=os.environ.get(GPU_MODEL_ENV, ""),
        )
    except PlanError as exc:
        sys.exit(f"llm-infer-bench: {exc}")


def check_slo_engines(slo, modes: dict[str, str]) -> None:
    """An SLO judges requests arriving at a server one by one; an offline engine takes its batch
    at once, so its TTFT is the whole batch's prefill and goodput would mean nothing."""
    offline = sorted(name for name, mode in modes.items() if mode == "offline")
    if slo is not None and offline:
        raise PlanError(
            f"workload.slo ({slo.describe()}) is for server engines, whose requests arrive one by one; "
            f"{', '.join(offline)} run offline: use their *_server engine, or drop workload.slo"
        )


def check_local_gpus(gpus: int, slots: list[str], source: str) -> None:
    """On one machine, an instance that asks more GPUs than there are slots would wait forever
    (or fail in its job): say so before anything runs. A cluster gives GPUs per job instead."""
    if gpus <= len(slots):
        return
    have = f"{len(slots)} GPU slot(s) ({', '.join(slots)})" if slots else "no GPU"
    raise PlanError(
        f"each engine instance asks {gpus} GPU(s) (--config gpus=N or the matrix's gpus:) but this machine has "
        f"{have}, found from {source}. Ask fewer (--config gpus={len(slots)}), run on a cluster "
        "(--profile profiles/slurm), or set LLM_BENCH_GPU_SLOTS if the GPUs are there but hidden"
    )


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


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def model_overrides(overrides: tuple[str, ...]) -> list[str]:
    """The overrides that shape a materialized model (model.*)."""
    return [o for o in overrides if _key(o).startswith("model.")]


def reference_overrides(overrides: tuple[str, ...]) -> list[str]:
    """The overrides that shape a model's fidelity reference: the model (and where it is), its
    prompts, their seed."""
    judged = tuple(f"workload.fidelity.{key}" for key in FidelityConfig.ANALYSIS_ONLY)
    return [
        o
        for o in overrides
        if _key(o).startswith(("model.", "models_dir", "workload.fidelity", "workload.seed")) and _key(o) not in judged
    ]
