"""What a model is in numbers: its shape, and how many bytes its weights take at a precision.

The architecture comes from the model's conf (`architecture:`), else from the model's own
config.json (a local directory, or a hub model already in the local Hugging Face cache).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import ModelConfig, PrecisionConfig
from pipeline.models.paths import model_dir

WEIGHT_FILE_PATTERNS = ("*.safetensors", "*.bin", "*.gguf")


@dataclass(frozen=True)
class ModelShape:
    """A decoder-only transformer (Llama/Mistral family: gated MLP, RMSNorm, no biases)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool

    @classmethod
    def from_architecture(cls, arch: dict) -> ModelShape:
        heads = arch["num_attention_heads"]
        return cls(
            hidden=arch["hidden_size"],
            layers=arch["num_hidden_layers"],
            heads=heads,
            kv_heads=arch.get("num_key_value_heads") or heads,
            head_dim=arch.get("head_dim") or arch["hidden_size"] // heads,
            intermediate=arch["intermediate_size"],
            vocab=arch["vocab_size"],
            tied=bool(arch.get("tie_word_embeddings", False)),
        )

    def params_by_part(self) -> dict[str, int]:
        q_out, kv_out = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return {
            "embedding": self.vocab * self.hidden,
            "attention": self.layers * (self.hidden * q_out + 2 * self.hidden * kv_out + q_out * self.hidden),
            "mlp": self.layers * 3 * self.hidden * self.intermediate,  # gate, up, down
            "norms": (2 * self.layers + 1) * self.hidden,
            "head": 0 if self.tied else self.vocab * self.hidden,
        }

    @property
    def params(self) -> int:
        return sum(self.params_by_part().values())

    @property
    def matmul_params(self) -> int:
        """Weights of the matrix multiplies one token goes through (the LM head included)."""
        parts = self.params_by_part()
        return parts["attention"] + parts["mlp"] + self.vocab * self.hidden

    def kv_bytes_per_token(self, kv_bytes: int) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * kv_bytes  # K and V, every layer

    def flops_per_token(self, context: float) -> float:
        # 2 FLOPs per weight, plus attention: q.k and p.v over the context, every head
        return 2 * self.matmul_params + 4 * self.layers * self.heads * self.head_dim * context


def weight_bytes(shape: ModelShape, precision: PrecisionConfig, read_per_step: bool = False) -> float:
    """The weights' size at this precision (scales included); with read_per_step, what one
    decode step reads: everything but the embedding table, of which each token reads one row."""
    bits = precision.bits_per_weight or precision.weight_bits
    parts = shape.params_by_part()
    norms = parts.pop("norms") * precision.kv_bytes  # kept in activation precision
    if read_per_step:
        parts["embedding"] = 0
        if shape.tied:
            parts["head"] = shape.vocab * shape.hidden  # the head reads the shared table
    return sum(parts.values()) * bits / 8 + norms


def _local_dir(model: ModelConfig, models_dir: str | Path) -> Path | None:
    if model.path or model.synthetic:
        return model_dir(model, models_dir)
    return None


def _read_json(path: Path | None) -> dict | None:
    try:
        return json.loads(Path(path).read_text()) if path else None
    except (OSError, ValueError):
        return None


def model_architecture(model: ModelConfig, models_dir: str | Path = "models") -> tuple[dict | None, str]:
    """(architecture, where it came from): the conf's, else config.json's; (None, why) when neither."""
    if model.architecture:
        return dict(model.architecture), "conf"
    local = _local_dir(model, models_dir)
    if local is not None:
        config = _read_json(local / "config.json")
        return (config, f"{local}/config.json") if config else (None, f"no architecture in its conf and no {local}/config.json")
    try:  # a hub model the machine has already downloaded
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model.hub_id, "config.json")
    except Exception:  # huggingface_hub missing or the cache unreadable: simply not known
        cached = None
    config = _read_json(cached) if isinstance(cached, str) else None
    if config:
        return config, f"{model.hub_id} config.json (local cache)"
    return None, f"no architecture in its conf, and {model.hub_id}'s config.json is not in the local cache"


def model_weight_bytes(model: ModelConfig, precision: PrecisionConfig, models_dir: str | Path) -> tuple[float, str]:
    """The weights' bytes at this precision for planning memory, and a note when it is a guess
    ("" when it comes from the architecture)."""
    architecture, source = model_architecture(model, models_dir)
    if architecture:
        try:
            return weight_bytes(ModelShape.from_architecture(architecture), precision), ""
        except (KeyError, TypeError, ValueError) as exc:
            source = f"its architecture lacks {exc}"
    local = _local_dir(model, models_dir)
    files = [f for pattern in WEIGHT_FILE_PATTERNS for f in local.glob(pattern)] if local and local.is_dir() else []
    if files:
        return float(sum(f.stat().st_size for f in files)), f"memory from the size of its weight files ({source})"
    return 0.0, f"weights unknown ({source}): the job asks only the base memory; give model.architecture"
