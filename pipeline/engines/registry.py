"""Engine name -> "module:Class", imported only when a cell needs it."""

from __future__ import annotations

import importlib

from pipeline.engines.base import Engine

ENGINES: dict[str, str] = {
    "hf": "pipeline.engines.hf:HFEngine",
    "llama_cpp": "pipeline.engines.llama_cpp:LlamaCppEngine",
    "mlc": "pipeline.engines.mlc:MLCEngine",
    "vllm": "pipeline.engines.vllm:VLLMEngine",
}


def engine_class(name: str) -> type[Engine]:
    try:
        target = ENGINES[name]
    except KeyError:
        raise KeyError(f"no engine adapter named {name!r}; registered: {', '.join(sorted(ENGINES))}") from None
    module_name, class_name = target.split(":")
    return getattr(importlib.import_module(module_name), class_name)
