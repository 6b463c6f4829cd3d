"""Where a model's files are: a local HF directory, a hub id, a GGUF file, an MLC build."""

from __future__ import annotations

from pathlib import Path

from pipeline.config import ModelConfig


def model_dir(model: ModelConfig, models_dir: str | Path = "models") -> Path:
    """Where the engine loads this model from."""
    if model.path:
        return Path(model.path)
    if model.synthetic:
        return Path(models_dir) / model.name
    raise ValueError(f"model {model.name} is a hub model ({model.hub_id}); it has no local directory")


def model_source(model: ModelConfig, models_dir: str | Path = "models") -> str:
    """What to hand to from_pretrained(): a local directory or a hub id."""
    if model.path or model.synthetic:
        return str(model_dir(model, models_dir))
    return model.hub_id


def gguf_path(model: ModelConfig, models_dir: str | Path, file_type: str) -> Path:
    """A GGUF file: the user's own (model.path ending in .gguf) or the one made for a synthetic model."""
    if file_type in model.builds:
        return Path(model.builds[file_type])
    if model.path and model.path.endswith(".gguf"):
        return Path(model.path)
    if model.synthetic:
        return Path(models_dir) / model.name / "gguf" / f"{file_type}.gguf"
    raise ValueError(f"model {model.name}: llama.cpp needs a GGUF file; give model.path=/path/to/file.gguf")


def fidelity_reference_path(model: ModelConfig, models_dir: str | Path = "models") -> Path:
    """The model's hf fp32 fidelity reference (pipeline.run.fidelity), kept with its other artifacts."""
    return Path(models_dir) / model.name / "fidelity" / "reference.json"
