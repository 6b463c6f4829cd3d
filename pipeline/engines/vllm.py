"""vLLM in-process (offline): the batch is submitted together; every engine step is timed.

vllm.LLM.generate() returns only when the whole batch is done, so the adapter drives the
same engine step by step (add_request, then step() until nothing is left) and stamps each
request's new tokens with the time the step that produced them returned.
"""

from __future__ import annotations

import itertools
import time

from pipeline.engines.base import Engine, RequestResult
from pipeline.models.paths import model_source


class VLLMEngine(Engine):
    def resolve_device_kind(self) -> str:
        from pipeline.engines.device import torch_device_kind

        return torch_device_kind(self.cfg.engine.device)

    def load(self) -> None:
        vllm = self.require()
        # conf/engine/vllm.yaml: devices, with engine.options on top; the prefix cache off unless studied
        options = {"enable_prefix_caching": self.cfg.workload.prefix_cache, **self.device_settings.options}
        fidelity = self.cfg.workload.fidelity_config  # its prompts, after the cells, must fit the context too
        fidelity_length = fidelity.positions + 2 if fidelity.enabled else 0  # the prompt and one token out
        self.args = {
            "model": model_source(self.cfg.model, self.cfg.models_dir),
            "dtype": self.cfg.engine_precision,
            "max_model_len": max(self.cfg.workload.input_tokens + self.cfg.workload.output_tokens, fidelity_length),
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

    def next_token_logprobs(self, prompts: list[list[int]], top_k: int = 20) -> list:
        """vLLM reports, per prompt position, its own top-k (prompt_logprobs, at most the engine's
        max_logprobs) plus the prompt's next token: the reference's tokens outside them are unknown."""
        limit = self.llm.llm_engine.model_config.max_logprobs
        k = top_k if limit < 0 else min(top_k, limit)
        params = self._sampling(temperature=0.0, max_tokens=1, prompt_logprobs=k)
        outputs = self.llm.generate([self._prompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        # prompt_logprobs[t] is the distribution that predicted token t; [0] has none
        return [
            [{token: entry.logprob for token, entry in position.items()} for position in output.prompt_logprobs[1:]]
            for output in outputs
        ]

    def probe_target(self) -> tuple[str, str]:
        return ("cuda" if self.device_kind == "gpu" else "cpu"), self.cfg.engine_precision
