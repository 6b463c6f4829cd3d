"""MLC-LLM in-process: AsyncMLCEngine, one streamed completion per request, all submitted together.

Written against MLC-LLM's documented Python API (mlc_llm 0.20): it cannot be installed on
the CPU machines this project is developed on (tests drive it through a stand-in module).
The sync MLCEngine serves one request at a time and mode="local" caps a batch at 4
sequences, so the adapter uses AsyncMLCEngine in mode="server" with max_num_sequence set
to the largest batch.

Tokens are counted from MLC's own per-step outputs, not from text: its OpenAI layer
(completions.create) drops every step whose text is empty (a token that ends inside a UTF-8
character), so the adapter reads the engine's stream beneath it (AsyncMLCEngine._generate,
what completions.create is built on) with logprobs on: each step's output then carries one
logprob entry per token, empty text or not, and the last output carries the usage. Where
that stream is absent (another MLC version) it falls back to completions.create and spreads
the usage's count over the chunks it sees, and says so (counted_by "spread").
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time

from pipeline.engines.base import Engine, RequestResult
from pipeline.engines.client import reconcile_arrivals


class MLCEngine(Engine):
    def model_location(self) -> str:
        """The MLC build for this precision: model.builds[<quantization code>] or model.path."""
        build = self.cfg.model.builds.get(self.cfg.engine_precision)
        if build:
            return build
        if self.cfg.model.path:
            return self.cfg.model.path
        raise ValueError(
            f"model {self.cfg.model.name} has no MLC build for {self.cfg.engine_precision}: add "
            f"builds: {{{self.cfg.engine_precision}: HF://mlc-ai/...-MLC}} to its conf, or give model.path"
        )

    def load(self) -> None:
        mlc_llm = self.require()
        from mlc_llm.serve.config import EngineConfig

        options = dict(self.device_settings.options)
        model_lib = options.pop("model_lib", None)  # a compiled library; without it MLC JIT-compiles (needs nvcc)
        context = self.cfg.workload.input_tokens + self.cfg.workload.output_tokens
        config = {
            "max_num_sequence": max(self.max_batch_size, 1),
            "max_total_sequence_length": context * max(self.max_batch_size, 1),
            "prefix_cache_mode": "radix" if self.cfg.workload.prefix_cache else "disable",  # repeats: not from cache
            **options,
        }
        engine_config = EngineConfig(**config)
        device = self.cfg.engine.device
        self.args = {
            "model": self.model_location(),
            "device": device,
            "model_lib": model_lib,
            "mode": "server",
            "engine_config": config,
        }
        self.loop = asyncio.new_event_loop()
        self.engine = mlc_llm.AsyncMLCEngine(
            self.model_location(), device=device, model_lib=model_lib, mode="server", engine_config=engine_config
        )
        self.tokenizer = self.engine.tokenizer
        self._ids = itertools.count()

    def vocab_size(self) -> int:
        """From the build's mlc-chat-config.json (MLC's Tokenizer has no vocab_size)."""
        configs = getattr(self.engine, "model_config_dicts", None) or [{}]
        config = configs[0]
        size = config.get("vocab_size") or (config.get("model_config") or {}).get("vocab_size")
        if not size:
            raise ValueError(
                f"the MLC build {self.model_location()} states no vocab_size in its mlc-chat-config.json: "
                "prompts cannot be drawn from its vocabulary"
            )
        return int(size)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text))

    async def _one(self, prompt: list[int], output_tokens: int) -> RequestResult:
        result = RequestResult(t_send=time.perf_counter())
        try:
            if hasattr(self.engine, "_generate"):
                await self._engine_steps(result, prompt, output_tokens)
            else:
                await self._openai_chunks(result, prompt, output_tokens)
        except Exception as exc:  # one failed request is a row, not a failed cell
            result.success, result.error = False, f"{type(exc).__name__}: {exc}"
        return result

    async def _engine_steps(self, result: RequestResult, prompt: list[int], output_tokens: int) -> None:
        """Every engine step's output, with one logprob entry per token it produced."""
        from mlc_llm.protocol.debug_protocol import DebugConfig
        from mlc_llm.protocol.generation_config import GenerationConfig

        config = GenerationConfig(
            temperature=0.0,
            max_tokens=output_tokens,
            logprobs=True,  # one entry per token: the per-step token count, whatever the text
            top_logprobs=0,
            debug_config=DebugConfig(ignore_eos=True),
        )
        arrivals, pieces = [], []
        async for outputs in self.engine._generate(prompt, config, f"bench-{next(self._ids)}"):
            now = time.perf_counter()
            output = outputs[0]
            if output.request_final_usage_json_str is not None:
                result.output_tokens = json.loads(output.request_final_usage_json_str).get("completion_tokens")
                continue
            count = len(output.delta_logprob_json_strs) if output.delta_logprob_json_strs is not None else None
            if count or output.delta_text:
                arrivals.append((now, count, output.delta_text))
                pieces.append(output.delta_text)
        self._finish(result, arrivals, pieces)

    async def _openai_chunks(self, result: RequestResult, prompt: list[int], output_tokens: int) -> None:
        stream = await self.engine.completions.create(
            prompt=prompt,
            max_tokens=output_tokens,
            temperature=0.0,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"debug_config": {"ignore_eos": True}},  # a top-level ignore_eos is ignored
        )
        arrivals, pieces = [], []
        async for chunk in stream:
            now = time.perf_counter()
            if chunk.usage is not None:
                result.output_tokens = chunk.usage.completion_tokens
            if chunk.choices and chunk.choices[0].text:  # MLC sends no chunk for an empty-text step
                arrivals.append((now, None, chunk.choices[0].text))
                pieces.append(chunk.choices[0].text)
        self._finish(result, arrivals, pieces)

    @staticmethod
    def _finish(result: RequestResult, arrivals: list, pieces: list[str]) -> None:
        tokens, result.counted_by = reconcile_arrivals(arrivals, result.output_tokens)
        result.chunk_times = [t for t, _ in tokens]
        result.chunk_tokens = [n for _, n in tokens]
        result.text = "".join(pieces)

    def generate(self, prompts: list[list[int]], output_tokens: int) -> list[RequestResult]:
        async def batch():
            return await asyncio.gather(*(self._one(p, output_tokens) for p in prompts))

        return self.loop.run_until_complete(batch())

    def close(self) -> None:
        if getattr(self, "engine", None) is not None:
            self.engine.terminate()
