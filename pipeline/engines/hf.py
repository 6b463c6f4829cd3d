"""HF transformers, in-process: one generate() call per batch, every step timestamped."""

from __future__ import annotations

import time

from pipeline.engines.base import Engine, RequestResult
from pipeline.models.paths import model_source


class _StepClock:
    """A generate() streamer that timestamps every decode step for the whole batch.

    transformers' TextIteratorStreamer handles batch 1 only; this keeps one row of token
    ids per step and the time it became available on the host.
    """

    def __init__(self):
        self.times: list[float] = []
        self.steps: list[list[int]] = []
        self._seen_prompt = False

    def put(self, value) -> None:
        if not self._seen_prompt:  # generate() first hands over the prompt itself
            self._seen_prompt = True
            return
        ids = value.reshape(-1).tolist()  # .tolist() waits for the device: the token is really there
        self.times.append(time.perf_counter())
        self.steps.append(ids)

    def end(self) -> None:
        pass


class HFEngine(Engine):
    preload = ("pipeline.engines.hf_preload",)

    def resolve_device_kind(self) -> str:
        from pipeline.engines.device import torch_device_kind

        self.require()
        return torch_device_kind(self.cfg.engine.device)

    def load(self) -> None:
        self.require()
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if self.threads:
            torch.set_num_threads(self.threads)
        requested = self.cfg.engine.device  # as given (cpu, cuda:N, ...); auto as select_device() chose
        auto = "cuda" if self.device_kind == "gpu" else "cpu"
        self.device = torch.device(auto if requested == "auto" else requested)
        self.dtype = getattr(torch, self.cfg.engine_precision)
        source = model_source(self.cfg.model, self.cfg.models_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(source)
        self.model = AutoModelForCausalLM.from_pretrained(source, dtype=self.dtype).to(self.device).eval()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self._torch = torch
        self.args = {
            "source": source,
            "device": str(self.device),
            "dtype": self.cfg.engine_precision,
            "torch_threads": torch.get_num_threads(),
        }

    def vocab_size(self) -> int:
        return min(self.model.config.vocab_size, len(self.tokenizer))

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def generate(self, prompts: list[list[int]], output_tokens: int) -> list[RequestResult]:
        torch = self._torch
        input_ids = torch.tensor(prompts, dtype=torch.long, device=self.device)
        clock = _StepClock()
        t_send = time.perf_counter()
        with torch.inference_mode():
            # min_new_tokens = max_new_tokens suppresses EOS: every request emits exactly
            # output_tokens tokens, whatever the random weights prefer.
            self.model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=output_tokens,
                min_new_tokens=output_tokens,
                do_sample=False,
                streamer=clock,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        results = []
        for row in range(len(prompts)):
            tokens = [step[row] for step in clock.steps]
            results.append(
                RequestResult(
                    t_send=t_send,
                    chunk_times=list(clock.times),
                    chunk_tokens=[1] * len(tokens),
                    output_tokens=len(tokens),
                    text=self.tokenizer.decode(tokens, skip_special_tokens=True),
                )
            )
        return results

    def next_token_logprobs(self, prompts: list[list[int]], top_k: int = 20) -> list:
        from pipeline.stats import log_softmax

        torch = self._torch
        rows = []
        with torch.inference_mode():
            for prompt in prompts:
                input_ids = torch.tensor([prompt], dtype=torch.long, device=self.device)
                logits = self.model(input_ids=input_ids).logits[0, :-1]
                rows.append(log_softmax(logits.float().cpu().numpy()))
        return rows

    def probe_target(self) -> tuple[str, str]:
        return str(self.device), self.cfg.engine_precision

    def reset_peak_memory(self) -> None:
        if self.device.type == "cuda":
            self._torch.cuda.reset_peak_memory_stats(self.device)
        super().reset_peak_memory()

    def peak_memory(self) -> tuple[int | None, str]:
        """NVML's figure where there is one (comparable with the other engines': it counts the CUDA
        context and torch's cache too), else torch's own peak of allocated tensors."""
        measured = super().peak_memory()
        if self.device.type == "cuda" and measured[0] is None:
            return int(self._torch.cuda.max_memory_allocated(self.device)), "cuda_allocated"
        return measured

    def close(self) -> None:
        if getattr(self, "device", None) is not None and self.device.type == "cuda":
            del self.model
            self._torch.cuda.empty_cache()
