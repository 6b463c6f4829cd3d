"""llama.cpp in-process through llama-cpp-python: one sequence at a time, every token timed."""

from __future__ import annotations

import time
from pathlib import Path

from pipeline.engines.base import Engine, RequestResult
from pipeline.models.paths import gguf_path

REBUILD = (
    "rebuild it with CUDA: CMAKE_ARGS=-DGGML_CUDA=on pip install --no-cache-dir --force-reinstall "
    "--no-deps llama-cpp-python==0.3.36 (README: GPU machines)"
)


def llama_cpp_device_kind(requested: str) -> str:
    """cpu or gpu for llama.cpp, whose build says whether it can offload to a GPU at all."""
    from pipeline.engines.device import offload_device_kind

    if requested == "cpu":
        return "cpu"
    import llama_cpp

    return offload_device_kind(requested, bool(llama_cpp.llama_supports_gpu_offload()), "llama-cpp-python", REBUILD)


class LlamaCppEngine(Engine):
    def resolve_device_kind(self) -> str:
        self.require()
        return llama_cpp_device_kind(self.cfg.engine.device)

    def load(self) -> None:
        llama_cpp = self.require()
        path = gguf_path(self.cfg.model, self.cfg.models_dir, self.cfg.engine_precision)
        if not Path(path).is_file():
            raise FileNotFoundError(f"no GGUF file at {path}; for a synthetic model the workflow builds it")
        options = dict(self.device_settings.options)  # conf/engine/llama_cpp.yaml: devices, engine.options on top
        context = self.cfg.workload.input_tokens + self.cfg.workload.output_tokens
        self.args = {
            "model_path": str(path),
            "n_ctx": max(context, options.pop("n_ctx", 0)),
            "n_batch": max(self.cfg.workload.input_tokens, 8),
            "n_threads": options.pop("n_threads", None) or self.threads,  # an explicit option wins
            "seed": self.cfg.workload.seed,
            "verbose": False,
            **options,
        }
        self.llm = llama_cpp.Llama(**self.args)
        self.path = path

    def vocab_size(self) -> int:
        return self.llm.n_vocab()

    def count_tokens(self, text: str) -> int:
        return len(self.llm.tokenize(text.encode(), add_bos=False, special=False))

    def generate(self, prompts: list[list[int]], output_tokens: int) -> list[RequestResult]:
        if len(prompts) != 1:
            raise ValueError("llama_cpp generates one sequence at a time (batch_size 1)")
        result = RequestResult(t_send=time.perf_counter())
        tokens = []
        # generate() samples greedily at temp 0 and never stops by itself: EOS cannot end
        # the request early, so every request emits exactly output_tokens tokens.
        for token in self.llm.generate(prompts[0], temp=0.0, reset=True):
            result.chunk_times.append(time.perf_counter())
            tokens.append(token)
            if len(tokens) == output_tokens:
                break
        result.chunk_tokens = [1] * len(tokens)
        result.output_tokens = len(tokens)
        result.text = self.llm.detokenize(tokens).decode("utf-8", errors="replace")
        return [result]

    def next_token_logprobs(self, prompts: list[list[int]], top_k: int = 20) -> list:
        """Every position's logits need a context made with logits_all, which would also change
        the speed cells' prefill: the pass (after them) reopens the file with it."""
        import numpy as np

        from pipeline.stats import log_softmax

        llama_cpp = self.require()
        longest = max(len(p) for p in prompts)
        self.llm.close()
        args = {**self.args, "logits_all": True}
        args["n_ctx"], args["n_batch"] = max(args["n_ctx"], longest), max(args["n_batch"], longest)
        self.llm = llama_cpp.Llama(**args)
        rows = []
        for prompt in prompts:
            self.llm.reset()
            self.llm.eval(prompt)
            rows.append(log_softmax(np.array(self.llm.scores[: len(prompt) - 1], dtype=np.float64)))
        return rows

    def weight_bytes(self) -> dict | None:
        return gguf_weight_bytes(self.path)

    def probe_target(self) -> tuple[str, str] | None:
        # llama.cpp's kernels are not torch's, but the memory they read is the same: probe the
        # device it computes on (on a GPU only where this environment's torch can reach it)
        if self.device_kind == "cpu":
            return "cpu", "float32"
        try:
            import torch
        except ImportError:
            return None
        return ("cuda", "float32") if torch.cuda.is_available() else None

    def close(self) -> None:
        if getattr(self, "llm", None) is not None:
            self.llm.close()


def gguf_weight_bytes(path: str | Path) -> dict | None:
    """From the GGUF's tensor table: llama.cpp keeps some tensors wider than the file type
    (Q4_0 files hold a Q6_K output matrix; rows not divisible by 32 fall back to F16)."""
    try:
        import gguf
    except ImportError:
        return None
    tensors = {t.name: int(t.n_bytes) for t in gguf.GGUFReader(str(path)).tensors}
    embedding = tensors.get("token_embd.weight", 0)
    # one embedding row per token is read, not the table
    return {"total": sum(tensors.values()), "read_per_step": sum(tensors.values()) - embedding}
