"""Server mode: start an engine's OpenAI-compatible server, wait until it answers, drive it with
the shared streaming client (pipeline.engines.client), and stop it.

One class does the work for every server engine; conf/engine/<name>.yaml says how to launch
it (engine.server), what it loads (model_format: an HF directory, a GGUF file, an MLC build),
on which device it computes (device) and which distribution's version to report. The server
runs in the engine process's process group and dies with that process (PR_SET_PDEATHSIG),
so the supervisor's kill reaches it and no orphan keeps a GPU.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from pipeline.config import ServerSettings
from pipeline.engines.base import Engine, RequestResult
from pipeline.engines.client import CHAT, Load, Target, parse_response, run_load
from pipeline.models.paths import gguf_path, model_source
from pipeline.run.lifetime import die_with_parent

HOST = "127.0.0.1"
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # a local server is never behind a proxy


class ServerFailed(RuntimeError):
    """The server would not start, or stopped serving."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def prometheus_total(text: str, name: str) -> float | None:
    """The sum of a metric's samples over its labels in Prometheus text format (a counter may be
    exposed with a `_total` suffix); None when the metric is absent."""
    total, seen = 0.0, False
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        sample, _, value = line.rpartition(" ")
        metric = sample.split("{", 1)[0]
        if metric in (name, f"{name}_total"):
            try:
                total += float(value)
            except ValueError:
                continue
            seen = True
    return total if seen else None


def _die_with_parent() -> None:  # runs in the server's process between fork and exec
    die_with_parent(signal.SIGKILL)


class ServerEngine(Engine):
    serves_streams = True

    def model_argument(self) -> str:
        """What the launch command's {model} is, by engine.model_format."""
        cfg = self.cfg
        if cfg.engine.model_format == "gguf":
            return str(gguf_path(cfg.model, cfg.models_dir, cfg.engine_precision))
        if cfg.engine.model_format == "mlc":
            return cfg.model.builds.get(cfg.engine_precision) or model_source(cfg.model, cfg.models_dir)
        return model_source(cfg.model, cfg.models_dir)

    def version(self) -> str:
        if not self.settings.command:  # nothing started here: the endpoint is all we know
            return f"endpoint {self.settings.base_url}"
        return super().version()

    def weight_bytes(self) -> dict | None:
        if self.cfg.engine.model_format == "gguf":
            from pipeline.engines.llama_cpp import gguf_weight_bytes

            return gguf_weight_bytes(self.model_argument())
        return None

    def resolve_device_kind(self) -> str | None:
        """The server's device, judged from this process, which runs in the server's environment:
        by llama.cpp's build for a GGUF server, by torch's CUDA build where torch is installed."""
        if not self.settings.command:
            return None  # an endpoint elsewhere
        requested = self.cfg.engine.device
        if self.cfg.engine.model_format == "gguf":
            from pipeline.engines.llama_cpp import llama_cpp_device_kind

            return llama_cpp_device_kind(requested)
        try:
            import torch  # noqa: F401
        except ImportError:
            from pipeline.engines.device import plain_device_kind

            return plain_device_kind(requested)
        from pipeline.engines.device import torch_device_kind

        return torch_device_kind(requested)

    def probe_target(self) -> tuple[str, str] | None:
        """The server's device, where this process can probe it; the dtype is the engine's when it
        is a torch dtype."""
        if self.device_kind is None:
            return None  # an endpoint elsewhere: this machine's peaks say nothing about it
        try:
            import torch
        except ImportError:
            return None
        device = "cpu" if self.device_kind == "cpu" else "cuda"
        if device == "cuda" and not torch.cuda.is_available():
            return None  # a GPU this environment's torch cannot reach: no probe rather than the CPU's
        dtype = self.cfg.engine_precision
        return device, dtype if isinstance(getattr(torch, str(dtype), None), torch.dtype) else "float32"

    # -- start ------------------------------------------------------------------------------
    @property
    def settings(self) -> ServerSettings:
        return self.cfg.engine.server

    def load(self) -> None:
        self.process: subprocess.Popen | None = None
        self.log_tail: collections.deque[str] = collections.deque(maxlen=30)
        self.tokenizer = self._load_tokenizer()
        settings = self.settings
        if settings.command:
            port = free_port()
            self.base_url = f"http://{HOST}:{port}"
            self._launch(port)
        else:
            self.base_url = settings.base_url
        api_key = os.environ.get(settings.api_key_env) if settings.api_key_env else None
        self.target = Target.from_base_url(self.base_url, settings.api, api_key)
        self._wait_ready()
        self._check_prompt_length()

    def _load_tokenizer(self):
        from transformers import AutoTokenizer

        source = model_source(self.cfg.model, self.cfg.models_dir)
        try:
            return AutoTokenizer.from_pretrained(source)
        except (OSError, ValueError) as exc:
            raise ServerFailed(
                f"cannot load model {self.cfg.model.name}'s tokenizer from {source} ({exc}); the client needs it "
                "to build exact-length prompts and re-count output tokens: give model.path or model.hub_id"
            ) from exc

    def _launch(self, port: int) -> None:
        cfg = self.cfg
        values = {
            "python": sys.executable,
            "bin": str(Path(sys.executable).parent),  # the environment's own programs (llama-server)
            "model": self.model_argument(),
            "served_model": self.served_model,
            "host": HOST,
            "port": port,
            "precision": cfg.engine_precision,
            "max_batch_size": max(self.max_batch_size, 1),
            "max_model_len": cfg.workload.input_tokens + cfg.workload.output_tokens,
            "threads": self.threads or 1,
            "seed": cfg.workload.seed,
            # KV-cache room for every sequence of the largest batch at full length (MLC sizes it by this)
            "kv_tokens": max(self.max_batch_size, 1) * (cfg.workload.input_tokens + cfg.workload.output_tokens),
        }
        cache = "on" if cfg.workload.prefix_cache else "off"
        if cache == "on" and "on" not in self.settings.prefix_cache_flags:
            raise ServerFailed(
                f"workload.prefix_cache=true, but engine {cfg.engine.name} has no flag to turn its prefix cache on "
                "(engine.server.prefix_cache_flags.on)"
            )
        flags = self.settings.prefix_cache_flags.get(cache, [])
        try:
            argv = [
                str(arg).format(**values) for arg in [*self.settings.command, *flags, *self.device_settings.extra_args]
            ]
        except KeyError as exc:
            known = sorted(values)
            raise ServerFailed(f"engine.server.command names an unknown placeholder {exc}; known: {known}") from None
        print(f"[server] {' '.join(argv)}", file=sys.stderr, flush=True)
        # select_device() has put these in the environment already; this covers a load() without it
        env = {**{key: str(value) for key, value in self.device_settings.env.items()}, **os.environ}
        self.args = {"argv": argv, "env": {key: env[key] for key in self.device_settings.env}}
        try:
            self.process = subprocess.Popen(
                argv,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                preexec_fn=_die_with_parent,
            )
        except FileNotFoundError as exc:
            name = cfg.engine.name
            raise ServerFailed(
                f"cannot start the server: {argv[0]} is not installed ({exc}); conf/engine/{name}.yaml says how "
                "to install it"
            ) from exc
        except OSError as exc:
            raise ServerFailed(f"cannot start the server ({exc}); command: {' '.join(argv)}") from exc
        threading.Thread(target=self._relay_log, daemon=True).start()

    def _relay_log(self) -> None:
        """The server's output into the cell's log, keeping the last lines for error messages."""
        for line in iter(self.process.stdout.readline, b""):
            text = line.decode("utf-8", "replace").rstrip()
            self.log_tail.append(text)
            print(f"[server] {text}", file=sys.stderr, flush=True)

    def _last_lines(self) -> str:
        time.sleep(0.2)  # the relay thread may still be reading the last words
        return "\n".join(self.log_tail) or "(no output)"

    def _wait_ready(self) -> None:
        url = self.base_url.rstrip("/").removesuffix("/v1") + self.settings.ready_path
        timeout_s = self.cfg.engine.load_timeout_s
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise ServerFailed(
                    f"the server exited with code {self.process.returncode} before it was ready; "
                    f"its last output:\n{self._last_lines()}"
                )
            try:
                with NO_PROXY.open(url, timeout=5) as response:
                    if response.status == 200:
                        return
                    last = f"HTTP {response.status}"
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code}"
            except (OSError, ValueError) as exc:
                last = str(getattr(exc, "reason", exc))
            time.sleep(0.25)
        raise ServerFailed(
            f"the server did not answer GET {url} with 200 within engine.load_timeout_s={timeout_s:g}s "
            f"(last: {last}); its last output:\n{self._last_lines() if self.process else '(not started here)'}"
        )

    def prefix_cache_counters(self) -> dict | None:
        """The server's prefix-cache counters (engine.server.cache_counters), summed over their
        labels; None where the conf names none or the server does not answer (never fatal)."""
        counters = self.settings.cache_counters
        if not counters:
            return None
        url = self.base_url.rstrip("/").removesuffix("/v1") + counters["path"]
        try:
            with NO_PROXY.open(url, timeout=10) as response:
                text = response.read().decode("utf-8", "replace")
        except (OSError, ValueError):
            return None
        found = {key: prometheus_total(text, counters[key]) for key in ("queries", "hits")}
        return None if None in found.values() else found

    # -- requests ---------------------------------------------------------------------------
    @property
    def served_model(self) -> str:
        return self.settings.served_model or self.cfg.model.name

    def _prompt_payload(self, prompt: list[int]) -> dict:
        if self.settings.prompt_format == "token_ids":
            return {"prompt": prompt}
        text = self.text_prompt(prompt)
        return {"messages": [{"role": "user", "content": text}]} if self.settings.api == CHAT else {"prompt": text}

    def text_prompt(self, prompt: list[int]) -> str:
        """A text that the model's tokenizer turns into exactly len(prompt) tokens, specials included:
        each id picks a word token that re-tokenizes to itself, and words split at spaces."""
        if not hasattr(self, "_words"):
            self._words = stable_words(self.tokenizer)
            probe = self.tokenizer.encode("a")
            self._specials = len(probe) - len(self.tokenizer.encode("a", add_special_tokens=False))
        text = self.tokenizer.decode([self._words[t % len(self._words)] for t in prompt[self._specials :]])
        counted = len(self.tokenizer.encode(text))
        if counted != len(prompt):
            raise ServerFailed(
                f"cannot build an exact {len(prompt)}-token text prompt with model {self.cfg.model.name}'s tokenizer "
                f"(it counts {counted}); use engine.server.prompt_format=token_ids if the server takes token ids"
            )
        return text

    def _body(self, prompt: list[int], output_tokens: int, stream: bool = True) -> dict:
        extra = {
            key: output_tokens if value == "{output_tokens}" else value for key, value in self.settings.body.items()
        }
        body = {
            "model": self.served_model,
            **self._prompt_payload(prompt),
            "max_tokens": output_tokens,
            "temperature": 0.0,
            "stream": stream,
            **extra,
        }
        if stream:  # usage always; the engine's body may ask for more (continuous_usage_stats)
            body["stream_options"] = {"include_usage": True, **(extra.get("stream_options") or {})}
        return body

    def expected_prompt_tokens(self, prompt: list[int]) -> int | None:
        """What the server should count for this prompt; None where a chat template adds an unknown number."""
        return None if self.settings.api == CHAT else len(prompt)

    def _check_prompt_length(self) -> None:
        """One non-streamed request: does the server count the prompt as we do?"""
        from pipeline.run.prompts import make_prompts

        prompt = make_prompts(1, self.cfg.workload.input_tokens, self.vocab_size(), self.cfg.workload.seed, "check")[0]
        request = self.target.request_bytes(self._body(prompt, 2, stream=False))
        raw = run_load(self.target, [request], Load(timeout_s=self.cfg.workload.timeout_s)).responses[0]
        if raw.error or raw.status != 200:
            raise ServerFailed(f"the server failed a first request: {raw.error or parse_response(raw).result.error}")
        try:
            counted = (json.loads(raw.body).get("usage") or {}).get("prompt_tokens")
        except ValueError:
            counted = None
        expected = self.expected_prompt_tokens(prompt)
        if counted is None or expected is None:
            print("[server] prompt lengths cannot be checked (no usage, or a chat template)", file=sys.stderr)
        elif counted != expected:
            raise ServerFailed(
                f"the server counted {counted} prompt tokens where the workload sends {expected} "
                f"(prompt_format {self.settings.prompt_format}): its tokenizer or chat template differs from "
                f"model {self.cfg.model.name}'s; use prompt_format token_ids, or the api completions"
            )

    def stream(self, prompts: list[list[int]], output_tokens: int, load: Load) -> tuple[list[RequestResult], dict]:
        """Send the prompts with the given load; per request the result and the prompt tokens the server counted."""
        requests = [self.target.request_bytes(self._body(p, output_tokens)) for p in prompts]
        run = run_load(self.target, requests, load)
        results = []
        for prompt, raw in zip(prompts, run.responses, strict=True):
            parsed = parse_response(raw, self.settings.api, output_tokens)
            result = parsed.result
            expected = self.expected_prompt_tokens(prompt)
            result.input_tokens = parsed.prompt_tokens if parsed.prompt_tokens is not None else expected
            if result.success and None not in (parsed.prompt_tokens, expected) and parsed.prompt_tokens != expected:
                result.success = False
                result.error = f"the server counted {parsed.prompt_tokens} prompt tokens, {expected} were sent"
            results.append(result)
        if self.process is not None and any(raw.error for raw in run.responses):
            # a dropped connection may be a dying server, which closes its sockets before the
            # kernel reports its exit (an HTTP error status comes from a live one: no wait)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(2)
        if not self.alive():
            raise ServerFailed(
                f"the server exited with code {self.process.returncode} during the cell; "
                f"its last output:\n{self._last_lines()}"
            )
        return results, run.describe()

    def generate(self, prompts: list[list[int]], output_tokens: int) -> list[RequestResult]:
        return self.stream(prompts, output_tokens, Load(concurrency=len(prompts)))[0]

    def vocab_size(self) -> int:
        return len(self.tokenizer)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def alive(self) -> bool:
        return self.process is None or self.process.poll() is None

    # -- stop -------------------------------------------------------------------------------
    def memory_root_pid(self) -> int:
        return self.process.pid if self.process is not None else os.getpid()

    def peak_memory(self) -> tuple[int | None, str]:
        """On a GPU the server's device memory (sampled, pipeline.run.device_memory); on a CPU its
        resident memory (its whole process tree) at the end of the cell."""
        if self.device_kind == "gpu":
            return super().peak_memory()
        if self.process is None or not self.alive():
            return None, "unmeasured"
        try:
            import psutil

            root = psutil.Process(self.process.pid)
            return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]), "server_rss"
        except Exception:  # psutil missing or the process just ended
            return None, "unmeasured"

    def reset_peak_memory(self) -> None:
        if self.device_kind == "gpu" and self.process is not None:
            super().reset_peak_memory()

    def close(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(self.settings.stop_timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


def stable_words(tokenizer, enough: int = 2000) -> list[int]:
    """Ids of word tokens (a space, then letters) that the tokenizer gives back for their own text."""
    words = []
    for token_id in range(len(tokenizer)):
        text = tokenizer.decode([token_id])
        is_word = len(text) > 1 and text[0] == " " and text[1:].isalpha()
        if is_word and tokenizer.encode(text, add_special_tokens=False) == [token_id]:
            words.append(token_id)
            if len(words) == enough:
                break
    if not words:
        raise ServerFailed("the tokenizer has no stable word tokens to build text prompts from")
    return words
