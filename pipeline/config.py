"""Typed, validated cell configuration.

Hydra composes a cell's config; everything below this module receives these plain
dataclasses, never Hydra objects, so the core can be used and tested without Hydra.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

PRECISIONS = ("fp32", "bf16", "fp16", "int8", "int4")
ENGINE_MODES = ("offline", "server")
MODEL_FORMATS = ("hf", "gguf", "mlc")


class ConfigError(ValueError):
    """A configuration value is invalid; the message says which and what is allowed."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def build_section(cls, section: str, values: dict[str, Any]):
    """cls(**values), but an unknown key names the valid ones instead of a TypeError."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    _require(
        not unknown,
        f"unknown {section} setting(s) {unknown}; valid: {sorted(names)}",
    )
    return cls(**values)


SERVER_APIS = ("completions", "chat")
PROMPT_FORMATS = ("token_ids", "text")


DEVICE_KINDS = ("cpu", "gpu")
FIDELITY_SOURCES = ("logits", "top_logprobs", None)


@dataclass(frozen=True)
class DeviceSettings:
    """An engine's defaults for one kind of device (engine.devices.cpu / engine.devices.gpu):
    tuned for a 2-core CPU, a setting would mis-measure a GPU (vLLM in eager mode), or the reverse.
    The user's engine.options, engine.server.env and engine.server.extra_args go on top."""

    options: dict[str, Any] = field(default_factory=dict)  # adapter keyword arguments (in-process engines)
    env: dict[str, str] = field(default_factory=dict)  # set for the engine process (and its server) unless set already
    extra_args: list[str] = field(default_factory=list)  # server flags, before the user's extra_args (the last wins)


@dataclass(frozen=True)
class ServerSettings:
    """How a server-mode engine is started and spoken to (engine.server in conf/engine/*_server.yaml).

    `command` is the launch command, one argument per item, with {placeholders} filled in by
    pipeline.engines.server (see conf/engine/vllm_server.yaml); empty means nothing is started
    and `base_url` is measured as it is.
    """

    command: list[str] = field(default_factory=list)
    extra_args: list[str] = field(default_factory=list)  # appended to command: the easy place for a user's flags
    env: dict[str, str] = field(default_factory=dict)  # added to the server's environment
    base_url: str | None = None  # an endpoint someone else runs (no command)
    served_model: str | None = None  # the model name the server answers to (default: model.name)
    api_key_env: str | None = None  # the environment variable holding the endpoint's API key
    api: str = "completions"  # /v1/completions or /v1/chat/completions
    prompt_format: str = "token_ids"  # token_ids: exact by construction; text: checked against usage
    ready_path: str = "/v1/models"  # polled until it answers 200
    body: dict[str, Any] | None = None  # extra request fields; "{output_tokens}" is filled in
    # the server's flags for workload.prefix_cache false (off, the default) and true (on); a server
    # whose conf has no `on` cannot be asked to study its cache
    prefix_cache_flags: dict[str, list[str]] = field(default_factory=dict)
    # where the server counts prefix-cache use, in Prometheus text: {path, queries, hits} (metric
    # names; vLLM counts tokens); read before and after each cell's repeats
    cache_counters: dict[str, str] | None = None
    stop_timeout_s: float = 15.0  # SIGTERM, then SIGKILL after this long

    def __post_init__(self):
        if self.body is None:  # null in a conf file, so that a whole mapping can be set from the command line
            object.__setattr__(self, "body", {})
        _require(isinstance(self.body, dict), f"engine.server.body must be a mapping, got {self.body!r}")
        # YAML reads an unquoted on/off key as true/false
        flags = {("on" if k is True else "off" if k is False else k): v for k, v in self.prefix_cache_flags.items()}
        bad = sorted(map(str, set(flags) - {"on", "off"}))
        _require(not bad, f"engine.server.prefix_cache_flags takes on and off, got {bad}")
        object.__setattr__(self, "prefix_cache_flags", flags)
        _require(bool(self.command) or bool(self.base_url), "engine.server: give a launch command or a base_url")
        _require(self.api in SERVER_APIS, f"engine.server.api must be one of {SERVER_APIS}, got {self.api!r}")
        _require(
            self.prompt_format in PROMPT_FORMATS,
            f"engine.server.prompt_format must be one of {PROMPT_FORMATS}, got {self.prompt_format!r}",
        )
        _require(
            self.api == "completions" or self.prompt_format == "text",
            "engine.server: the chat API takes text prompts only (prompt_format: text)",
        )
        _require(self.ready_path.startswith("/"), "engine.server.ready_path must start with /")
        counters = self.cache_counters
        _require(
            counters is None or (isinstance(counters, dict) and {"path", "queries", "hits"} <= set(counters)),
            f"engine.server.cache_counters needs path, queries and hits (metric names), got {counters!r}",
        )


@dataclass(frozen=True)
class EngineConfig:
    name: str  # the conf file's name (conf/engine/<name>.yaml)
    adapter: str = ""  # "module:Class" of the adapter that runs it (pipeline/engines/)
    import_name: str | None = None  # the library the adapter needs (checked at load, with a clear message)
    distributions: list[str] = field(default_factory=list)  # names it is installed under; the first found is reported
    mode: str = "offline"
    # canonical precision -> what this engine is asked for (torch dtype, GGUF type, ...)
    precisions: dict[str, str] = field(default_factory=dict)
    device: str = "auto"
    model_format: str = "hf"  # what the engine loads: an HF directory, a GGUF file, an MLC build
    max_batch_size: int | None = None  # above it a cell is `unsupported` (None: no limit)
    threads: int | None = None
    load_timeout_s: float = 600.0
    options: dict[str, Any] = field(default_factory=dict)
    server: ServerSettings | dict | None = None  # mode: server only
    environment: str | None = None  # envs/<environment>.yaml runs its jobs (default: the engine's name)
    devices: dict[str, Any] = field(default_factory=dict)  # cpu/gpu -> DeviceSettings: the defaults by device
    # how the adapter reads next-token distributions for the fidelity pass (pipeline.run.fidelity):
    # logits (every position's whole distribution), top_logprobs (the top-k the engine reports), or
    # null (it reads none: the instance's fidelity is `unsupported`)
    fidelity: str | None = None

    def __post_init__(self):
        _require(bool(self.name), "engine.name must not be empty")
        _require(
            self.fidelity in FIDELITY_SOURCES,
            f"engine {self.name}: engine.fidelity must be logits, top_logprobs or null, got {self.fidelity!r}",
        )
        _require(
            self.adapter.count(":") == 1 and all(self.adapter.split(":")),
            f"engine {self.name}: engine.adapter must name its adapter as module:Class, got {self.adapter!r}",
        )
        _require(self.mode in ENGINE_MODES, f"engine.mode must be one of {ENGINE_MODES}, got {self.mode!r}")
        if self.mode == "server":
            _require(self.server is not None, f"engine {self.name}: mode server needs an engine.server section")
            if isinstance(self.server, dict):  # frozen: set once, while validating
                object.__setattr__(self, "server", build_section(ServerSettings, "engine.server", self.server))
        bad = sorted(set(self.precisions) - set(PRECISIONS))
        _require(
            not bad,
            f"engine {self.name}: unknown precision(s) {bad} in engine.precisions; canonical names: {PRECISIONS}",
        )
        _require(self.threads is None or self.threads >= 1, f"engine.threads must be >= 1 or null, got {self.threads}")
        _require(self.model_format in MODEL_FORMATS, f"engine.model_format must be one of {MODEL_FORMATS}")
        _require(self.load_timeout_s > 0, "engine.load_timeout_s must be > 0")
        bad = sorted(set(self.devices) - set(DEVICE_KINDS))
        _require(not bad, f"engine {self.name}: engine.devices has {bad}; the kinds are {DEVICE_KINDS}")
        devices = {
            kind: value
            if isinstance(value, DeviceSettings)
            else build_section(DeviceSettings, f"engine.devices.{kind}", dict(value or {}))
            for kind, value in self.devices.items()
        }
        object.__setattr__(self, "devices", devices)  # frozen: set once, while validating

    def settings_for(self, kind: str | None) -> DeviceSettings:
        """The defaults for `kind` ("cpu" or "gpu"; None: an endpoint elsewhere, no defaults) with
        the user's settings on top: a user's option or server variable replaces the default, a
        user's server flag comes after it."""
        _require(kind in (*DEVICE_KINDS, None), f"device kind must be one of {DEVICE_KINDS}, got {kind!r}")
        base = (self.devices.get(kind) if kind else None) or DeviceSettings()
        server = self.server if isinstance(self.server, ServerSettings) else None
        return DeviceSettings(
            options={**base.options, **self.options},
            env={**base.env, **(server.env if server else {})},
            extra_args=[*base.extra_args, *(server.extra_args if server else [])],
        )

    def unsupported_reason(self, precision: str, batch_size: int = 1) -> str | None:
        return unsupported_reason(self.name, self.precisions, self.max_batch_size, precision, batch_size)


def unsupported_reason(
    engine: str, precisions: dict | tuple, max_batch_size: int | None, precision: str, batch_size: int
) -> str | None:
    """Why an engine cannot run a cell, or None. Shared by the planner and the engine process."""
    if precision not in precisions:
        return (
            f"precision {precision} is not supported by engine {engine} (supported: {', '.join(precisions) or 'none'})"
        )
    if max_batch_size is not None and batch_size > max_batch_size:
        return f"batch size {batch_size} is above what engine {engine} can run at once ({max_batch_size})"
    return None


@dataclass(frozen=True)
class ModelConfig:
    name: str
    synthetic: bool = False
    hub_id: str | None = None
    path: str | None = None
    seed: int = 0
    architecture: dict[str, Any] = field(default_factory=dict)
    # engine-specific artifacts by what the engine is asked for: {q4f16_1: HF://mlc-ai/...-MLC, Q4_0: x.gguf}
    builds: dict[str, str] = field(default_factory=dict)
    # synthetic models: a brief training run on the local corpus ({steps, batch, length, lr};
    # pipeline.models.synthetic.train_briefly), so that fidelity figures mean something; {}: random weights
    training: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        _require(bool(self.name), "model.name must not be empty")
        _require(
            self.synthetic or bool(self.hub_id) or bool(self.path),
            f"model {self.name}: give a hub_id or a path, or set synthetic: true",
        )
        bad = sorted(set(self.training) - {"steps", "batch", "length", "lr"})
        _require(
            not bad, f"model {self.name}: unknown model.training setting(s) {bad}; valid: steps, batch, length, lr"
        )
        if self.synthetic:
            for key in ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size"):
                _require(key in self.architecture, f"synthetic model {self.name}: architecture.{key} is required")
            heads = self.architecture["num_attention_heads"]
            kv_heads = self.architecture.get("num_key_value_heads", heads)
            _require(
                heads % kv_heads == 0,
                f"model {self.name}: num_attention_heads must be a multiple of num_key_value_heads",
            )
            _require(
                self.architecture["hidden_size"] % heads == 0,
                f"model {self.name}: hidden_size must divide by num_attention_heads",
            )


@dataclass(frozen=True)
class PrecisionConfig:
    name: str
    weight_bits: int
    bits_per_weight: float | None = None  # stored bits per weight with scales (Q4_0: 4.5)
    kv_bytes: int = 2  # KV cache bytes per element

    def __post_init__(self):
        _require(self.kv_bytes in (1, 2, 4), f"precision {self.name}: kv_bytes must be 1, 2 or 4")
        _require(self.name in PRECISIONS, f"unknown precision {self.name!r}; canonical names: {PRECISIONS}")
        _require(self.weight_bits in (4, 8, 16, 32), f"precision {self.name}: weight_bits must be 4, 8, 16 or 32")


@dataclass(frozen=True)
class RepeatPolicy:
    """How many times the measured requests run: `repeats: N` is exactly N; a mapping is adaptive.

    Adaptive: at least `min` repeats, then more until the 95% interval of every headline
    figure (TPOT p50, TTFT p50, output tok/s) is within `target` of its value (relative
    half-width), at most `max` repeats and no new repeat once `budget_s` of measuring has passed.
    """

    min: int = 3
    max: int = 3
    target: float | None = None  # relative half-width of the 95% interval; None: run exactly min repeats
    budget_s: float | None = None  # measuring time per cell after which no repeat is started

    def __post_init__(self):
        _require(self.min >= 1, f"workload.repeats.min must be >= 1, got {self.min}")
        _require(self.max >= self.min, f"workload.repeats.max ({self.max}) must be >= min ({self.min})")
        _require(
            self.target is None or 0 < self.target < 1,
            f"workload.repeats.target is a relative half-width in (0, 1), e.g. 0.05; got {self.target}",
        )
        _require(
            self.budget_s is None or self.budget_s > 0, f"workload.repeats.budget_s must be > 0, got {self.budget_s}"
        )

    @property
    def adaptive(self) -> bool:
        return self.target is not None and self.max > self.min

    @classmethod
    def parse(cls, value) -> RepeatPolicy:
        if isinstance(value, bool) or not isinstance(value, int | dict):
            raise ConfigError(
                f"workload.repeats must be a number or a mapping {{min, max, target, budget_s}}, got {value!r}"
            )
        if isinstance(value, int):
            _require(value >= 1, f"workload.repeats must be >= 1, got {value}")
            return cls(min=value, max=value)
        values = dict(value)
        values.setdefault("max", max(values.get("min", cls.min), cls.max))
        return build_section(cls, "workload.repeats", values)


SLO_TARGETS = ("ttft_s", "tpot_s", "e2e_s")
SLO_NAMES = {"ttft_s": "TTFT", "tpot_s": "TPOT", "e2e_s": "E2E"}


@dataclass(frozen=True)
class SloConfig:
    """Latency targets a request must meet to count as good (workload.slo): any of TTFT, TPOT
    and end-to-end latency in seconds, the SLO holding when that percentile of each is within
    its target. Analysis only: changing it re-runs collect, never an engine."""

    ttft_s: float | None = None
    tpot_s: float | None = None
    e2e_s: float | None = None
    percentile: float = 90.0

    def __post_init__(self):
        _require(bool(self.targets), f"workload.slo names no target; give any of {', '.join(SLO_TARGETS)}")
        for key, value in self.targets.items():
            _require(
                isinstance(value, int | float) and value > 0, f"workload.slo.{key} must be seconds > 0, got {value!r}"
            )
        _require(
            isinstance(self.percentile, int | float) and 0 < self.percentile < 100,
            f"workload.slo.percentile must be in (0, 100), got {self.percentile!r}",
        )

    @property
    def targets(self) -> dict[str, float]:
        return {key: getattr(self, key) for key in SLO_TARGETS if getattr(self, key) is not None}

    @classmethod
    def parse(cls, value) -> SloConfig | None:
        if value is None or value == {}:
            return None
        _require(isinstance(value, dict), f"workload.slo must be a mapping like {{tpot_s: 0.05}}, got {value!r}")
        return build_section(cls, "workload.slo", dict(value))

    def describe(self) -> str:
        shown = ", ".join(f"{SLO_NAMES[k]} <= {v * 1e3:.4g} ms" for k, v in self.targets.items())
        return f"p{self.percentile:g} {shown}"


SEARCH_OVER = ("concurrency", "rate")


@dataclass(frozen=True)
class SearchConfig:
    """The most load that meets workload.slo (workload.search), found inside one engine instance
    by pipeline.run.load_search: over `concurrency` (requests in flight, closed loop) or `rate`
    (Poisson arrivals per second, open loop, at most the cell's batch size in flight), from `min`
    up to `max`, to within `step`."""

    over: str = "concurrency"
    max: float = 64
    min: float | None = None  # None: 1 request in flight, or one step of rate
    step: float | None = None  # None: 1 for concurrency, max / 16 for rate
    requests: int | None = None  # per probe; None: the larger of num_requests and 3 x concurrency (or rate x 3 s)
    max_probes: int = 16
    budget_s: float = 600.0  # no probe starts after this much searching

    def __post_init__(self):
        _require(self.over in SEARCH_OVER, f"workload.search.over must be concurrency or rate, got {self.over!r}")
        for key in ("max", "min", "step"):
            value = getattr(self, key)
            _require(
                value is None or (isinstance(value, int | float) and not isinstance(value, bool) and value > 0),
                f"workload.search.{key} must be a number > 0, got {value!r}",
            )
        if self.over == "concurrency":
            for key in ("max", "min", "step"):
                value = getattr(self, key)
                _require(
                    value is None or float(value).is_integer(),
                    f"workload.search.{key} counts requests in flight: a whole number, got {value!r}",
                )
        _require(self.lowest <= self.max, f"workload.search.min ({self.lowest:g}) must be <= max ({self.max:g})")
        _require(self.requests is None or self.requests >= 1, "workload.search.requests must be >= 1 or null")
        _require(self.max_probes >= 2, f"workload.search.max_probes must be >= 2, got {self.max_probes}")
        _require(self.budget_s > 0, f"workload.search.budget_s must be > 0, got {self.budget_s}")

    @property
    def resolution(self) -> float:
        if self.step is not None:
            return float(self.step)
        return 1.0 if self.over == "concurrency" else self.max / 16

    @property
    def lowest(self) -> float:
        return float(self.min) if self.min is not None else self.resolution

    @classmethod
    def parse(cls, value) -> SearchConfig | None:
        if value is None or value == {}:
            return None
        _require(
            isinstance(value, dict),
            f"workload.search must be a mapping like {{over: concurrency, max: 64}}, got {value!r}",
        )
        return build_section(cls, "workload.search", dict(value))

    def describe(self) -> str:
        unit = " in flight" if self.over == "concurrency" else " req/s"
        return f"{self.over} {self.lowest:g}-{self.max:g}{unit}, step {self.resolution:g}"


@dataclass(frozen=True)
class FidelityConfig:
    """The fidelity pass (workload.fidelity): once per engine instance, after its speed cells,
    teacher-forced next-token distributions on `prompts` fixed prompts of `positions` + 1 tokens,
    compared with the model's hf fp32 reference over the reference's `top_k` tokens.
    `min_top1` (the verdict's fidelity budget) and `fp32_min_top1` (below it an fp32 instance's
    fidelity fails: its export or prompt path is wrong) are analysis only."""

    enabled: bool = True
    prompts: int = 8
    positions: int = 32
    top_k: int = 20
    min_top1: float = 0.99
    fp32_min_top1: float = 0.99

    def __post_init__(self):
        _require(
            isinstance(self.enabled, bool), f"workload.fidelity.enabled must be true or false, got {self.enabled!r}"
        )
        for key in ("prompts", "positions", "top_k"):
            value = getattr(self, key)
            _require(
                isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                f"workload.fidelity.{key} must be a whole number >= 1, got {value!r}",
            )
        _require(self.top_k >= 5, f"workload.fidelity.top_k must be >= 5 (top-5 overlap needs them), got {self.top_k}")
        for key in ("min_top1", "fp32_min_top1"):
            value = getattr(self, key)
            _require(
                isinstance(value, int | float) and 0 <= value <= 1,
                f"workload.fidelity.{key} is a share of positions in [0, 1], got {value!r}",
            )

    @classmethod
    def parse(cls, value) -> FidelityConfig:
        if value is None:
            return cls(enabled=False)
        if isinstance(value, bool):
            return cls(enabled=value)
        _require(
            isinstance(value, dict),
            f"workload.fidelity must be true, false or a mapping like {{prompts: 8}}, got {value!r}",
        )
        return build_section(cls, "workload.fidelity", dict(value))

    # settings that only judge the figures: changing them re-runs collect, never an engine
    ANALYSIS_ONLY = ("min_top1", "fp32_min_top1")

    def reference_settings(self, seed: int) -> dict:
        """What fixes the prompts and the reference's tokens: a reference made with others is stale."""
        return {"prompts": self.prompts, "positions": self.positions, "top_k": self.top_k, "seed": seed}


@dataclass(frozen=True)
class WorkloadConfig:
    name: str = "default"
    input_tokens: int = 64
    output_tokens: int = 32
    num_requests: int = 8
    warmup_requests: int = 2
    repeats: int | dict = 3  # a number, or an adaptive policy (RepeatPolicy)
    # warm-up rounds continue until two in a row agree on step time within this share (or the cap);
    # the same share decides whether a first repeat is an outlier (pipeline.stats)
    steady_tolerance: float = 0.10
    warmup_max_rounds: int = 6
    # the engine instance is started this many times, each start measuring every batch size
    # (its repeats are one level of the intervals): a fresh process can differ more than repeats
    instance_starts: int = 1
    seed: int = 0
    timeout_s: float = 600.0
    # server engines only: Poisson arrivals at this many requests/s (open loop) instead of
    # batch_size requests in flight (closed loop); and the client processes that send them
    request_rate: float | None = None
    client_processes: int = 1
    # latency targets for goodput and SLO attainment (SloConfig; server engines; analysis only
    # unless a search uses them)
    slo: dict | None = None
    # server engines: the most load that meets the SLO, searched once per engine instance (SearchConfig)
    search: dict | None = None
    # engines' prefix caches (vLLM's, SGLang's radix cache, MLC's, llama.cpp server's) stay off so
    # that no repeat is served from cache; true studies the cache on purpose
    prefix_cache: bool = False
    # precision fidelity against the model's hf fp32 reference, once per instance (FidelityConfig)
    fidelity: bool | dict | None = True

    def __post_init__(self):
        _require(
            self.request_rate is None or self.request_rate > 0,
            f"workload.request_rate must be > 0 or null, got {self.request_rate}",
        )
        _require(self.client_processes >= 1, f"workload.client_processes must be >= 1, got {self.client_processes}")
        _require(self.input_tokens >= 1, f"workload.input_tokens must be >= 1, got {self.input_tokens}")
        # TPOT needs at least two tokens: (e2e - ttft) / (output_tokens - 1)
        _require(self.output_tokens >= 2, f"workload.output_tokens must be >= 2, got {self.output_tokens}")
        _require(self.num_requests >= 1, f"workload.num_requests must be >= 1, got {self.num_requests}")
        _require(self.warmup_requests >= 0, f"workload.warmup_requests must be >= 0, got {self.warmup_requests}")
        self.repeat_policy  # noqa: B018 (validates)
        self.slo_config  # noqa: B018 (validates)
        self.fidelity_config  # noqa: B018 (validates)
        _require(
            self.search_config is None or self.slo_config is not None,
            "workload.search looks for the most load that meets an SLO, and workload.slo gives none: "
            "add e.g. workload.slo={tpot_s: 0.05, percentile: 90}",
        )
        _require(
            0 < self.steady_tolerance < 1, f"workload.steady_tolerance must be in (0, 1), got {self.steady_tolerance}"
        )
        _require(self.warmup_max_rounds >= 1, f"workload.warmup_max_rounds must be >= 1, got {self.warmup_max_rounds}")
        _require(self.instance_starts >= 1, f"workload.instance_starts must be >= 1, got {self.instance_starts}")
        _require(self.timeout_s > 0, f"workload.timeout_s must be > 0, got {self.timeout_s}")

    @property
    def repeat_policy(self) -> RepeatPolicy:
        return RepeatPolicy.parse(self.repeats)

    @property
    def slo_config(self) -> SloConfig | None:
        return SloConfig.parse(self.slo)

    @property
    def search_config(self) -> SearchConfig | None:
        return SearchConfig.parse(self.search)

    @property
    def fidelity_config(self) -> FidelityConfig:
        return FidelityConfig.parse(self.fidelity)


@dataclass(frozen=True)
class HardwareConfig:
    """A datasheet entry (conf/hardware/), or `auto`: detect the machine and pick one."""

    name: str = "auto"
    kind: str = "auto"  # auto | cpu | gpu
    match: list[str] = field(default_factory=list)  # regexes on the detected device name
    memory_bandwidth_gbs: float | None = None
    peak_tflops: dict[str, float] = field(default_factory=dict)  # dense, per dtype
    memory_gb: float | None = None
    source: str | None = None

    def __post_init__(self):
        _require(self.kind in ("auto", "cpu", "gpu"), f"hardware.kind must be auto, cpu or gpu, got {self.kind!r}")
        _require(
            self.memory_bandwidth_gbs is None or self.memory_bandwidth_gbs > 0,
            "hardware.memory_bandwidth_gbs must be > 0 or null",
        )
        # caught here, with the entry's name, rather than as a bare re.error in the middle of a collect
        import re

        _require(
            isinstance(self.match, list | tuple) and all(isinstance(p, str) for p in self.match),
            f"hardware {self.name}: match must be a list of regexes, got {self.match!r}",
        )
        for pattern in self.match:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ConfigError(f"hardware {self.name}: match {pattern!r} is not a valid regex: {exc}") from exc


@dataclass(frozen=True)
class CellConfig:
    """One benchmark cell: an engine instance (engine x model x precision) at a batch size."""

    engine: EngineConfig
    model: ModelConfig
    precision: PrecisionConfig
    workload: WorkloadConfig
    hardware: HardwareConfig
    batch_size: int = 1
    out_dir: str = "results/single-cell"
    models_dir: str = "models"

    def __post_init__(self):
        _require(
            isinstance(self.batch_size, int) and self.batch_size >= 1,
            f"batch_size must be an integer >= 1, got {self.batch_size!r}",
        )
        total_len = self.workload.input_tokens + self.workload.output_tokens
        max_len = self.model.architecture.get("max_position_embeddings")
        _require(
            max_len is None or total_len <= max_len,
            f"input_tokens + output_tokens = {total_len} exceeds model {self.model.name}'s "
            f"max_position_embeddings ({max_len})",
        )

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> CellConfig:
        values = dict(values)
        sections = {
            "engine": EngineConfig,
            "model": ModelConfig,
            "precision": PrecisionConfig,
            "workload": WorkloadConfig,
            "hardware": HardwareConfig,
        }
        for key, section_cls in sections.items():
            _require(key in values, f"config has no {key} section")
            values[key] = build_section(section_cls, key, values[key])
        return build_section(cls, "top-level", values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def engine_precision(self) -> str | None:
        """What the engine is really asked for at this cell's precision (None: unsupported)."""
        return self.engine.precisions.get(self.precision.name)
