"""The interface every engine adapter implements, and what one request's timing looks like."""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

from pipeline.config import CellConfig, DeviceSettings, EngineConfig


class EngineUnavailable(RuntimeError):
    """The engine's library cannot be imported in this environment."""


class CannotRun(RuntimeError):
    """The engine cannot run this cell's shape (it cannot compile for that batch size, say):
    the cell is `unsupported`, with this message as the reason; the engine serves the others."""


class FidelityUnsupported(CannotRun):
    """The engine exposes no next-token distributions: the instance's fidelity is `unsupported`."""


@dataclass
class RequestResult:
    """One request as the measuring process saw it; all times from time.perf_counter()."""

    t_send: float
    chunk_times: list[float] = field(default_factory=list)  # one per chunk carrying output tokens
    chunk_tokens: list[float] = field(default_factory=list)  # tokens in each chunk
    # how chunk_tokens were known: engine (its own token ids), server_counts (token ids or
    # logprobs in the stream), one_per_event (one token per event, checked against usage),
    # spread (fewer events than tokens: the usage spread evenly)
    counted_by: str = "engine"
    output_tokens: int | None = None  # the engine's own count
    input_tokens: int | None = None  # the prompt length the engine counted, where it says (servers)
    text: str = ""
    success: bool = True
    error: str = ""


def adapter_class(engine: EngineConfig) -> type[Engine]:
    """The adapter its conf names (engine.adapter: "module:Class"), imported only now."""
    module_name, class_name = engine.adapter.split(":")
    try:
        adapter = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise EngineUnavailable(
            f"engine {engine.name}: its adapter {engine.adapter} (conf/engine/{engine.name}.yaml) "
            f"cannot be imported: {exc}"
        ) from exc
    if not (isinstance(adapter, type) and issubclass(adapter, Engine)):
        raise EngineUnavailable(f"engine {engine.name}: {engine.adapter} is not an Engine adapter")
    return adapter


class Engine(ABC):
    """One engine instance: load once, then generate batches of token-id prompts.

    What an engine is (its adapter, library, distributions, environment) is said once, in
    conf/engine/<name>.yaml. Adapters keep their library's import inside load() so that
    planning, testing and reporting never need the engine installed.
    """

    serves_streams: ClassVar[bool] = False  # True: measured with pipeline.engines.client load patterns (servers)
    # Modules an engine process may import before it is told its device (pipeline.run.supervisor
    # forks every start of an instance from one process that imported them); empty: each start
    # is spawned afresh. Only for libraries that read no device environment variable at import.
    preload: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg: CellConfig, max_batch_size: int, threads: int | None):
        self.cfg = cfg
        self.max_batch_size = max_batch_size
        self.threads = threads
        self.args: dict = {}  # what load() really started the engine with (recorded with every cell)
        self.device_kind: str | None = None  # cpu | gpu, chosen by select_device() before load()
        self.device_settings: DeviceSettings = cfg.engine.settings_for(None)  # the user's alone, until chosen

    def resolve_device_kind(self) -> str | None:
        """cpu or gpu for engine.device on this machine (None: the engine computes elsewhere).
        Adapters whose library decides what is usable (torch's CUDA build, llama.cpp's) override it."""
        from pipeline.engines.device import plain_device_kind

        return plain_device_kind(self.cfg.engine.device)

    def select_device(self) -> None:
        """Choose the device and its settings (engine.devices), before the library is imported:
        their environment variables must be set by then. A default never replaces a variable the
        user set in the environment; engine.server.env does (it is the user's too)."""
        self.device_kind = self.resolve_device_kind()
        self.device_settings = self.cfg.engine.settings_for(self.device_kind)
        server = self.cfg.engine.server
        chosen = server.env if server is not None else {}
        for key, value in self.device_settings.env.items():
            if key in chosen:
                os.environ[key] = str(value)
            else:
                os.environ.setdefault(key, str(value))

    def require(self):
        """Import the engine's library (engine.import_name), or say which environment provides it."""
        engine = self.cfg.engine
        if not engine.import_name:
            raise EngineUnavailable(f"engine {engine.name}: its conf names no import_name for its adapter to load")
        try:
            return importlib.import_module(engine.import_name)
        except ImportError as exc:
            raise EngineUnavailable(
                f"{engine.import_name} is not installed ({exc}); create the environment in "
                f"envs/{engine.environment or engine.name}.yaml (see README: one environment per engine)"
            ) from exc

    def version(self) -> str:
        """The version of the first of engine.distributions that is installed, named when there are several.

        The import name and the distribution name differ for some engines (llama_cpp vs
        llama-cpp-python); the version comes from the distribution."""
        names = self.cfg.engine.distributions
        for name in names:
            try:
                version = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                continue
            return f"{name} {version}" if len(names) > 1 else version
        return "unknown"

    def engine_args(self) -> dict:
        """The arguments the engine was started with, as recorded by load() (JSON-safe)."""
        return {
            key: value if isinstance(value, (str, int, float, bool, type(None), list, dict)) else str(value)
            for key, value in self.args.items()
        }

    @abstractmethod
    def load(self) -> None:
        """Start the engine: load weights, compile, allocate caches."""

    @abstractmethod
    def generate(self, prompts: list[list[int]], output_tokens: int) -> list[RequestResult]:
        """Submit the prompts together; each must produce exactly output_tokens tokens."""

    @abstractmethod
    def vocab_size(self) -> int:
        """Prompts draw token ids below this."""

    @abstractmethod
    def count_tokens(self, text: str) -> int:
        """Re-tokenize output text with the model's tokenizer (output_tokens_retok)."""

    def prepare(self, batch_size: int, input_tokens: int, output_tokens: int) -> float | None:
        """Work a cell's shape needs once before its warm-up (a compile); its seconds, or None.
        Raises CannotRun when the engine cannot run that shape at all."""
        return None

    def next_token_logprobs(self, prompts: list[list[int]], top_k: int = 20) -> list:
        """Teacher-forced (pipeline.run.fidelity): for each prompt, the natural-log next-token
        distribution after each of its tokens but the last, as a (positions x vocab) array where
        the engine gives whole distributions, else one {token id: logprob} per position holding
        at least the engine's own top_k."""
        raise FidelityUnsupported(f"the {type(self).__name__} adapter reads no next-token distributions")

    def weight_bytes(self) -> dict | None:
        """Exact {"total", "read_per_step"} bytes of the loaded weights when the engine's file
        says (quantized formats keep some tensors wider); None: count from the architecture."""
        return None

    def probe_target(self) -> tuple[str, str] | None:
        """(torch device, torch dtype) on which to measure the machine's peaks, or None."""
        return None

    def prefix_cache_counters(self) -> dict | None:
        """The engine's own prefix-cache counters so far ({"queries", "hits"}), where it exposes them."""
        return None

    def memory_root_pid(self) -> int:
        """The process whose tree holds the engine's memory (a server's own process for servers)."""
        return os.getpid()

    def reset_peak_memory(self) -> None:
        """Start measuring the cell's peak memory: on a GPU device memory (NVML, sampled over
        the engine's process tree: pipeline.run.device_memory), on a CPU resident memory."""
        if self.device_kind == "gpu":
            from pipeline.run.device_memory import DeviceMemorySampler

            self._device_memory = DeviceMemorySampler.start_for(self.memory_root_pid())
            return
        from pipeline.run.memory import reset_peak_rss

        reset_peak_rss()

    def peak_memory(self) -> tuple[int | None, str]:
        """(bytes, what was measured): rss on a CPU; nvml_process / nvml_device on a GPU, or
        (None, "unmeasured") where NVML is not available."""
        if self.device_kind == "gpu":
            sampler = getattr(self, "_device_memory", None)
            return sampler.stop() if sampler is not None else (None, "unmeasured")
        from pipeline.run.memory import peak_rss_bytes

        return peak_rss_bytes(), "rss"

    def alive(self) -> bool:
        """False once the engine cannot serve another cell (its server died): a fresh one is started."""
        return True

    def close(self) -> None:  # noqa: B027  (optional hook, not abstract)
        """Release the engine; the process exits right after, so this may be a no-op."""
