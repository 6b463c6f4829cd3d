"""The versioned result schema: what a benchmark job writes and what collect makes of it.

Every file the pipeline exchanges is declared here once:

- `CellResult` (summary.json, one per cell): what the job *measured* and the settings it
  measured with. Nothing derived: statistics, roofline and hardware selection are computed
  by collect (pipeline.analysis), so they can change without re-measuring.
- `REQUEST_COLUMNS` (requests.csv, one row per measured request), written by the job.
- `CELL_COLUMNS` (cells.csv, one row per cell), written by collect; each column has a kind
  that tells tracking what it is (an MLflow param, a metric, or text).

Bump SCHEMA_VERSION when a field changes meaning; a summary of another version is read as
missing, so its cell is measured again.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from pipeline.stats import HEADLINE

SCHEMA_VERSION = 4

OK, UNSUPPORTED, ERROR, TIMEOUT = "ok", "unsupported", "error", "timeout"
STATUSES = (OK, UNSUPPORTED, ERROR, TIMEOUT)
FINAL = (OK, UNSUPPORTED)  # re-running the workflow retries every other status

AXES = ("engine", "model", "precision", "batch_size")


@dataclass(frozen=True, order=True)
class Cell:
    """A cell's coordinates in the matrix: the one key results, plans and runs share."""

    engine: str
    model: str
    precision: str
    batch_size: int

    @property
    def instance(self) -> tuple[str, str, str]:
        return (self.engine, self.model, self.precision)

    @property
    def cell_id(self) -> str:
        return f"{self.engine}/{self.model}/{self.precision}/bs{self.batch_size}"

    def axes(self) -> dict[str, Any]:
        return {"engine": self.engine, "model": self.model, "precision": self.precision, "batch_size": self.batch_size}

    @classmethod
    def from_row(cls, row: dict) -> Cell:
        """From any mapping that carries the axes (a cells.csv row, a summary)."""
        return cls(str(row["engine"]), str(row["model"]), str(row["precision"]), int(row["batch_size"]))


@dataclass
class CellResult:
    """summary.json: one cell as measured. Written last, atomically: if it exists, the cell ended."""

    cell_id: str
    engine: str
    model: str
    precision: str
    batch_size: int
    status: str
    error: str = ""
    traceback: str = ""  # where an engine failed to load or a cell raised
    # what was measured with
    config: dict | None = None  # the composed cell config (pipeline.config.CellConfig.to_dict())
    digest: str = ""  # of the measurement inputs (pipeline.plan.conf.measurement_digest): a change re-measures
    overrides: list[str] = field(default_factory=list)
    engine_precision: str | None = None  # what the engine was asked for (bfloat16, Q4_0, q4f16_1, ...)
    # timings of the job itself (per-request timings are in requests.csv)
    load_s: float | None = None
    compile_s: float | None = None  # the engine's one-off work for this cell's shape (a compile), before warm-up
    warmup_s: float | None = None
    measure_s: float | None = None
    cell_wall_s: float | None = None
    overhead_s: float | None = None
    engine_start: int | None = None  # which start of the engine process served this cell (1 = first)
    peak_mem_bytes: int | None = None
    peak_mem_kind: str | None = None
    client: dict | None = None  # server engines: {processes, cpu_share_max, max_loop_lag_s, saturated}
    # per engine start (workload.instance_starts): {"warmup": {rounds, step_s, steady},
    # "repeats": {run, kept, discarded, stop, ...}, "host": {steal_share, other_busy_share, load_1m, ...}}
    starts: list = field(default_factory=list)
    cell_probes: list = field(default_factory=list)  # memory bandwidth just before and after the cell (each start)
    cpu_affinity: list | None = None  # the cores the engine process was pinned to (None: not pinned)
    # the instance's load search, in the cell that ran it (pipeline.run.load_search): result, reason, points
    search: dict | None = None
    # the server's own prefix-cache counters over the measured repeats, summed over starts: {queries, hits}
    prefix_cache: dict | None = None
    # the instance's fidelity pass (pipeline.run.fidelity), run after its speed cells: {status, reason,
    # file: its record beside the cell directories, pass_s}; None: not run (workload.fidelity off)
    fidelity: dict | None = None
    # the machine and the artifacts, as found
    peaks: dict = field(default_factory=dict)  # probe results on the engine's device (pipeline.run.probes)
    hardware: dict = field(default_factory=dict)  # detected CPU/GPU (pipeline.run.provenance)
    weights: dict | None = None  # {"total", "read_per_step"} bytes from the engine's own file
    architecture: dict | None = None  # the model's config.json, where the conf gives no architecture
    # provenance
    engine_version: str | None = None
    engine_args: dict = field(default_factory=dict)  # the arguments the engine was really started with
    engine_env: dict = field(default_factory=dict)  # environment variables that change engine behaviour
    engine_device: str | None = None  # cpu | gpu | endpoint: whose engine.devices settings were used
    gpu_devices: str | None = None
    git_sha: str = ""
    finished_at: str = ""
    schema_version: int = SCHEMA_VERSION

    @property
    def cell(self) -> Cell:
        return Cell(self.engine, self.model, self.precision, self.batch_size)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> CellResult | None:
        """None for another schema version or a malformed file: the cell is then simply re-run."""
        if values.get("schema_version") != SCHEMA_VERSION:
            return None
        names = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in values.items() if k in names})
        except TypeError:
            return None


REQUEST_COLUMNS = (
    "start",  # which engine start measured it (0-based; workload.instance_starts)
    "repeat",  # unique within the cell, across starts
    "discarded",  # a first repeat found to be an outlier and run again (pipeline.stats): not in the statistics
    "wave",
    "request",
    "success",
    "error",
    "input_tokens",
    "output_tokens",
    "output_tokens_retok",
    "chunks",
    "tokens_per_chunk",
    "tokens_counted_by",
    "ttft_s",
    "tpot_s",
    "e2e_s",
    "itl_s",
    "words",
    "t_send",
    "t_end",
)


# ---- cells.csv ------------------------------------------------------------------------------

ID, AXIS, STATE, PARAM, METRIC, INFO = "id", "axis", "state", "param", "metric", "info"


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # id | axis | state (status, error) | param (MLflow param) | metric (number) | info (text)


PERCENTILES = (50, 90, 99)
DISTRIBUTIONS = ("ttft_s", "tpot_s", "e2e_s", "itl_s")


def _metrics(*names: str) -> list[Column]:
    return [Column(n, METRIC) for n in names]


def _distribution(name: str) -> list[Column]:
    return _metrics(f"{name}_mean", *(f"{name}_p{p}" for p in PERCENTILES))


CELL_COLUMNS: tuple[Column, ...] = (
    Column("cell_id", ID),
    *(Column(a, AXIS) for a in AXES),
    Column("status", STATE),
    Column("error", STATE),
    # per-cell statistics (pipeline.analysis.metrics)
    *_metrics("requests", "requests_ok", "requests_failed"),
    *(c for name in DISTRIBUTIONS for c in _distribution(name)),
    *_metrics("output_tokens", "output_tokens_total", "output_tokens_retok", "tokens_per_chunk"),
    *_metrics("output_tok_s", "req_s"),
    # against workload.slo, where there is one (pipeline.analysis.metrics: slo_figures)
    Column("slo", PARAM),  # the targets, as text ("p90 TPOT <= 50 ms")
    *_metrics("slo_attainment", "goodput_req_s", "goodput_tok_s"),
    Column("slo_met", INFO),
    # the most load that met the SLO, searched once per instance (pipeline.run.load_search; every
    # cell of the instance carries it; the probes are in search.csv)
    *_metrics("slo_max_concurrency", "slo_max_rate", "slo_search_missed_at", "slo_search_probes"),
    Column("slo_search_missed_why", INFO),  # how the smallest load that missed missed (a target, or errors)
    Column("slo_search_reason", INFO),  # why there is no answer, or why it is not exact; empty: found to one step
    Column("slo_search_cell", INFO),  # the cell whose engine instance ran the search
    # workload.prefix_cache, and the server's own counters over the measured repeats (vLLM: prompt tokens)
    Column("prefix_cache", PARAM),
    *_metrics("prefix_cache_queries", "prefix_cache_hits", "prefix_cache_hit_rate"),
    Column("prefix_cache_flag", INFO),  # hits while the cache should be off: the figures may be flattered
    # the instance's precision fidelity against the model's hf fp32 reference (pipeline.analysis.fidelity;
    # every cell of the instance carries it): ok | failed (an fp32 instance that disagrees) | unsupported | error | off
    Column("fidelity_status", INFO),
    Column("fidelity_reason", INFO),
    Column("fidelity_source", INFO),  # logits (whole distributions) | top_logprobs (the engine's own top-k)
    Column("fidelity_estimator", INFO),
    *_metrics("fidelity_positions", "fidelity_kl_mean", "fidelity_kl_mean_low", "fidelity_kl_mean_high"),
    *_metrics("fidelity_kl_p99", "fidelity_top1", "fidelity_top1_low", "fidelity_top1_high"),
    *_metrics("fidelity_top5_overlap", "fidelity_ref_logprob_delta", "fidelity_reported_share", "fidelity_s"),
    Column("fidelity_budget_top1", PARAM),  # workload.fidelity.min_top1: the verdict's budget
    # 95% intervals of the headline figures (pipeline.stats: two-level bootstrap)
    *_metrics(*(f"{name}_{end}" for name in HEADLINE for end in ("low", "high"))),
    Column("output_tok_s_repeats", INFO),  # JSON list, one throughput per repeat
    Column("tpot_s_p50_repeats", INFO),  # JSON list, one TPOT p50 per repeat
    *_metrics("output_tok_s_spread", "tpot_s_p50_spread", "ms_per_10_words"),
    # a trend of TPOT over the repeats in time order (pipeline.stats.trend): Sen's change over the cell, relative,
    # and Mann-Kendall's p; empty with fewer than 5 repeats
    *_metrics("tpot_s_p50_trend", "tpot_s_p50_trend_p"),
    # how the measurement settled (pipeline.run.measure)
    *_metrics("instance_starts", "warmup_rounds", "repeats_run", "repeats_kept", "repeats_discarded"),
    Column("warmup_steady", INFO),
    Column("repeats_stop", INFO),  # fixed | converged | max | budget (per start, joined)
    *_metrics("host_steal_share", "host_other_busy_share", "host_load_1m"),
    Column("cpu_affinity", INFO),
    # the roofline (pipeline.analysis.roofline)
    Column("hardware_entry", PARAM),
    *_metrics("params", "weight_bytes"),
    Column("weight_bytes_source", INFO),
    *_metrics("kv_bytes_per_token", "mean_context", "bytes_per_step", "flops_per_token"),
    *_metrics("peak_bandwidth_gbs", "peak_bandwidth_measured_gbs", "peak_bandwidth_measured_low_gbs"),
    Column("peak_bandwidth_probe", INFO),  # cell: probed just before and after it; load: the engine's (cached) probe
    *_metrics("tpot_floor_s", "tpot_floor_measured_s"),
    *_metrics("achieved_bandwidth_gbs", "mbu", "mbu_measured", "mbu_measured_low", "mbu_measured_high"),
    *_metrics("prefill_mfu", "prefill_mfu_measured"),
    *_metrics("peak_tflops", "peak_tflops_measured", "ridge_batch_size"),
    Column("fits_in_cache", INFO),  # bytes per step <= the CPU's last-level cache: the memory roofline may not bound it
    Column("roofline_flag", INFO),
    # what bounds the cell (pipeline.analysis.diagnosis)
    Column("bound", INFO),
    Column("bound_evidence", INFO),
    *_metrics("overhead_per_step_s", "decode_mfu", "batch_scaling", "fixed_step_s", "effective_bandwidth_gbs"),
    Column("roofline_missing", INFO),  # why the roofline columns are empty, when they are
    # the job
    Column("engine_version", PARAM),
    Column("engine_precision", PARAM),
    Column("engine_device", PARAM),  # cpu | gpu | endpoint: which of the engine's device settings were used
    Column("engine_args", INFO),  # JSON: what the engine was really started with
    Column("engine_env", INFO),  # JSON: the environment variables that change its behaviour
    *_metrics("load_s", "compile_s", "warmup_s", "measure_s", "cell_wall_s", "overhead_s", "engine_start", "peak_mem_bytes"),
    Column("peak_mem_kind", INFO),
    Column("hardware", PARAM),
    Column("cpu", INFO),
    Column("gpu", INFO),
    Column("git_sha", PARAM),
    Column("finished_at", INFO),
    Column("input_tokens", PARAM),
    Column("output_tokens_target", PARAM),
    Column("num_requests", PARAM),
    Column("repeats", PARAM),
    Column("request_rate", PARAM),
    Column("client_cpu_share", METRIC),
    Column("client_saturated", INFO),
    Column("overrides", PARAM),
    Column("schema_version", INFO),
)

CELL_COLUMN_NAMES = tuple(c.name for c in CELL_COLUMNS)
LEAD_COLUMNS = tuple(c.name for c in CELL_COLUMNS if c.kind in (ID, AXIS, STATE))


def columns_of(*kinds: str) -> tuple[str, ...]:
    return tuple(c.name for c in CELL_COLUMNS if c.kind in kinds)
