"""vLLM in-process (offline): the batch is submitted together; every engine step is timed.

vllm.LLM.generate() returns only when the whole batch is done, so the adapter drives the
same engine step by step (add_request, then step() until nothing is left) and stamps each
request's new tokens with the time the step that produced them returned.
"""

from __future__ import annotations

import itertools
import os
import time

from pipeline.engines.base import Engine, RequestResult
from pipeline.models.paths import model_source


class VLLMEngine(Engine):
    def load(self) -> None:
        # Driving a multiprocess engine core step by step costs a fixed ~0.2 s per step here
        # (tiny-llama TPOT 199 ms vs 6.7 ms in-process, measured): keep the core in-process
        # unless the user says otherwise.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        vllm = self.require()
        options = {
            "enforce_eager": True,
            "gpu_memory_utilization": 0.3,  # on a CPU: the share of memory given to the KV cache
            **self.cfg.engine.options,
        }
        self.args = {
            "model": model_source(self.cfg.model, self.cfg.models_dir),
            "dtype": self.cfg.engine_precision,
            "max_model_len": self.cfg.workload.input_tokens + self.cfg.workload.output_tokens,
            "max_num_seqs": max(self.max_batch_size, 1),
            "seed": self.cfg.workload.seed,
            **options,
        }
        self.llm = vllm.LLM(**self.args)
        self.tokenizer = self.llm.get_tokenizer()
        self._ids = itertools.count()
        self._sampling = vllm.SamplingParams
        from vllm.inputs import TokensPrompt

        self._prompt = TokensPrompt

    def vocab_size(self) -> int:
        return min(self.llm.llm_engine.model_config.get_vocab_size(), len(self.tokenizer))

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def generate(self, prompts: list[list[int]], output_tokens: int) -> list[RequestResult]:
        engine = self.llm.llm_engine
        params = self._sampling(temperature=0.0, max_tokens=output_tokens, min_tokens=output_tokens, ignore_eos=True)
        ids = [f"req-{next(self._ids)}" for _ in prompts]
        results = {}
        for request_id, prompt in zip(ids, prompts, strict=True):
            results[request_id] = RequestResult(t_send=time.perf_counter())
            engine.add_request(request_id, self._prompt(prompt_token_ids=prompt), params)
        seen = dict.fromkeys(ids, 0)
        while engine.has_unfinished_requests():
            outputs = engine.step()
            now = time.perf_counter()
            for output in outputs:
                completion = output.outputs[0]
                count = len(completion.token_ids)
                if count > seen[output.request_id]:
                    result = results[output.request_id]
                    result.chunk_times.append(now)
                    result.chunk_tokens.append(count - seen[output.request_id])
                    seen[output.request_id] = count
                if output.finished:
                    result = results[output.request_id]
                    result.output_tokens = count
                    result.text = completion.text
        return [results[request_id] for request_id in ids]

    def probe_target(self) -> tuple[str, str]:
        import torch

        return ("cuda" if torch.cuda.is_available() else "cpu"), self.cfg.engine_precision
