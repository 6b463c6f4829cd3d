"""MLC-LLM in-process: AsyncMLCEngine, one streamed completion per request, all submitted together.

Written against MLC-LLM's documented Python API (mlc_llm 0.20): it cannot be installed on
the CPU machines this project is developed on (tests drive it through a stand-in module).
The sync MLCEngine serves one request at a time and mode="local" caps a batch at 4
sequences, so the adapter uses AsyncMLCEngine in mode="server" with max_num_sequence set
to the largest batch. One chunk may carry several tokens: usage (asked for with
stream_options.include_usage) gives the engine's own token count.
"""

from __future__ import annotations

import asyncio
import time

from pipeline.engines.base import Engine, RequestResult


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

        options = dict(self.cfg.engine.options)
        model_lib = options.pop("model_lib", None)  # a compiled library; without it MLC JIT-compiles (needs nvcc)
        context = self.cfg.workload.input_tokens + self.cfg.workload.output_tokens
        config = {
            "max_num_sequence": max(self.max_batch_size, 1),
            "max_total_sequence_length": context * max(self.max_batch_size, 1),
            "prefix_cache_mode": "disable",  # repeats must not be served from cache
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

    def vocab_size(self) -> int:
        return self.engine.tokenizer.vocab_size if hasattr(self.engine.tokenizer, "vocab_size") else 32000

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text))

    async def _one(self, prompt: list[int], output_tokens: int) -> RequestResult:
        result = RequestResult(t_send=time.perf_counter())
        try:
            stream = await self.engine.completions.create(
                prompt=prompt,
                max_tokens=output_tokens,
                temperature=0.0,
                stream=True,
                stream_options={"include_usage": True},
                extra_body={"debug_config": {"ignore_eos": True}},  # a top-level ignore_eos is ignored
            )
            pieces = []
            async for chunk in stream:
                now = time.perf_counter()
                if chunk.usage is not None:
                    result.output_tokens = chunk.usage.completion_tokens
                if chunk.choices and chunk.choices[0].text:
                    result.chunk_times.append(now)
                    pieces.append(chunk.choices[0].text)
            result.text = "".join(pieces)
            # tokens per chunk are unknown per chunk; spread the engine's count evenly
            if result.chunk_times and result.output_tokens:
                per_chunk = result.output_tokens / len(result.chunk_times)
                result.chunk_tokens = [per_chunk] * len(result.chunk_times)
        except Exception as exc:  # one failed request is a row, not a failed cell
            result.success, result.error = False, f"{type(exc).__name__}: {exc}"
        return result

    def generate(self, prompts: list[list[int]], output_tokens: int) -> list[RequestResult]:
        async def batch():
            return await asyncio.gather(*(self._one(p, output_tokens) for p in prompts))

        return self.loop.run_until_complete(batch())

    def close(self) -> None:
        if getattr(self, "engine", None) is not None:
            self.engine.terminate()
