"""HF transformers compiled: a static KV cache and a torch.compile'd decode step, in a loop of
its own (generate()'s per-step machinery is what an eager `hf` cell mostly measures on small
models). On a GPU the step is compiled with CUDA graphs (mode reduce-overhead); on a CPU with
inductor's C++ backend (mode default): chosen by device, recorded in engine_args.

Shapes are static, so each batch size compiles once: prepare() does it before the cell's
warm-up and reports the time (compile_s in cells.csv), so no compile lands in a measured step.
Prefill runs eagerly; every decode step is timed as `hf` times it (its token on the host).
"""

from __future__ import annotations

import time

from pipeline.engines.base import CannotRun, RequestResult
from pipeline.engines.hf import HFEngine


def _decode_step(model, token, position, cache):
    logits = model(
        token,
        position_ids=position.expand(token.shape[0], 1),
        cache_position=position,
        past_key_values=cache,
        use_cache=True,
        return_dict=False,
    )[0]
    return logits[:, -1].argmax(dim=-1, keepdim=True)


class HFCompiledEngine(HFEngine):
    def load(self) -> None:
        super().load()
        options = self.device_settings.options
        mode = options.get("compile_mode") or "default"  # conf/engine/hf_compiled.yaml: by device
        self._step = self._torch.compile(_decode_step, mode=mode, fullgraph=True, dynamic=False)
        self._caches: dict[tuple[int, int], object] = {}
        self.args.update(compile_mode=mode, compile_backend="inductor", kv_cache="static", fullgraph=True)

    def _cache(self, batch_size: int, length: int):
        from transformers import StaticCache

        key = (batch_size, length)
        if key not in self._caches:
            self._caches[key] = StaticCache(config=self.model.config, max_cache_len=length)
        return self._caches[key]

    def prepare(self, batch_size: int, input_tokens: int, output_tokens: int) -> float:
        """Compile the decode step for this batch size (a short generation); its seconds."""
        started = time.perf_counter()
        try:
            self.generate([[4] * input_tokens] * batch_size, output_tokens, compiling=True)
        except Exception as exc:  # the compiler's own failure: this shape cannot be run compiled
            raise CannotRun(
                f"torch.compile ({self.args['compile_mode']}) cannot compile the decode step at batch size "
                f"{batch_size}: {type(exc).__name__}: {str(exc)[:300]}"
            ) from exc
        return time.perf_counter() - started

    def generate(self, prompts: list[list[int]], output_tokens: int, compiling: bool = False) -> list[RequestResult]:
        torch = self._torch
        batch, length = len(prompts), len(prompts[0])
        cache = self._cache(batch, length + output_tokens)
        # compiling: the prompt's length and the cache are what the measured cells use; two
        # decode steps are enough to compile and to run the compiled graph once
        steps = 3 if compiling else output_tokens
        ids = torch.tensor(prompts, dtype=torch.long, device=self.device)
        t_send = time.perf_counter()
        with torch.inference_mode():
            cache.reset()
            positions = torch.arange(length, device=self.device)
            logits = self.model(
                ids,
                position_ids=positions.expand(batch, -1),
                cache_position=positions,
                past_key_values=cache,
                use_cache=True,
                return_dict=False,
            )[0]
            token = logits[:, -1].argmax(dim=-1, keepdim=True)
            tokens, times = [token.reshape(-1).tolist()], [time.perf_counter()]  # .tolist(): the token is there
            for index in range(steps - 1):
                position = torch.tensor([length + index], device=self.device)
                token = self._step(self.model, token, position, cache)
                tokens.append(token.reshape(-1).tolist())
                times.append(time.perf_counter())
        results = []
        for row in range(batch):
            ids_out = [step[row] for step in tokens]
            results.append(
                RequestResult(
                    t_send=t_send,
                    chunk_times=list(times),
                    chunk_tokens=[1] * len(ids_out),
                    output_tokens=len(ids_out),  # argmax never stops at EOS: exactly output_tokens
                    text=self.tokenizer.decode(ids_out, skip_special_tokens=True),
                )
            )
        return results
