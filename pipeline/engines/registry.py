"""Engine name -> "module:Class", imported only when a cell needs it."""

from __future__ import annotations

import importlib

from pipeline.engines.base import Engine

ENGINES: dict[str, str] = {
    "hf": "pipeline.engines.hf:HFEngine",
    "llama_cpp": "pipeline.engines.llama_cpp:LlamaCppEngine",
    "mlc": "pipeline.engines.mlc:MLCEngine",
    "vllm": "pipeline.engines.vllm:VLLMEngine",
    # server mode: the engine's OpenAI-compatible server, driven by pipeline.client
    "vllm_server": "pipeline.engines.server:VLLMServer",
    "llama_cpp_server": "pipeline.engines.server:LlamaCppServer",
    "mlc_server": "pipeline.engines.server:MLCServer",
    "sglang_server": "pipeline.engines.server:SGLangServer",
    "openai": "pipeline.engines.server:OpenAIEndpoint",
}


def engine_class(name: str) -> type[Engine]:
    try:
        target = ENGINES[name]
    except KeyError:
        raise KeyError(f"no engine adapter named {name!r}; registered: {', '.join(sorted(ENGINES))}") from None
    module_name, class_name = target.split(":")
    return getattr(importlib.import_module(module_name), class_name)
