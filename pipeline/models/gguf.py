"""A local HF Llama directory -> GGUF for llama.cpp, at F32/F16/BF16, and quantized variants.

    python -m pipeline.models.gguf models/tiny-llama --type F16 --out models/tiny-llama/gguf/F16.gguf
    python -m pipeline.models.gguf models/tiny-llama/gguf/F32.gguf --type Q4_0 --out models/tiny-llama/gguf/Q4_0.gguf

Float files are written with the `gguf` package; quantized ones (Q8_0, Q4_0, Q4_K_M) by
llama.cpp's own quantizer from the F32 file, so they are exactly what llama.cpp makes.
The tokenizer is the byte-level BPE of the HF directory, declared as llama.cpp's "gpt2"
model with the "gpt-2" pre-tokenizer, which tokenizes exactly as HF does.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

FLOAT_TYPES = ("F32", "F16", "BF16")
QUANT_TYPES = ("Q8_0", "Q4_0", "Q4_K_M")


def _permute(weight, heads: int):
    """Llama's rotary layout in HF checkpoints -> the interleaved one llama.cpp expects."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _tensor_name(hf_name: str) -> str | None:
    fixed = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    if hf_name in fixed:
        return fixed[hf_name]
    parts = hf_name.split(".")  # model.layers.{i}.{module}.{proj}.weight
    if parts[:2] != ["model", "layers"]:
        return None
    block = f"blk.{parts[2]}"
    module = ".".join(parts[3:-1])
    names = {
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    return f"{block}.{names[module]}.weight" if module in names else None


def _write_tokenizer(writer, model_dir: Path, vocab_size: int) -> None:
    import gguf

    spec = json.loads((model_dir / "tokenizer.json").read_text())
    vocab = dict(spec["model"]["vocab"])
    special = {}
    for added in spec.get("added_tokens", []):
        vocab[added["content"]] = added["id"]
        special[added["id"]] = added["special"]
    by_id = {token_id: token for token, token_id in vocab.items()}
    tokens, types = [], []
    for token_id in range(vocab_size):
        token = by_id.get(token_id, f"[PAD{token_id}]")
        tokens.append(token)
        if token_id not in by_id:
            types.append(gguf.TokenType.UNUSED)
        elif special.get(token_id):
            types.append(gguf.TokenType.CONTROL)
        elif token_id in special:
            types.append(gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    config = json.loads((model_dir / "config.json").read_text())
    writer.add_bos_token_id(config.get("bos_token_id", 1))
    writer.add_eos_token_id(config.get("eos_token_id", 2))
    if config.get("pad_token_id") is not None:
        writer.add_pad_token_id(config["pad_token_id"])
    writer.add_add_bos_token(False)


def write_float_gguf(model_dir: Path, out: Path, file_type: str) -> Path:
    import gguf
    import numpy as np
    import torch
    from safetensors.torch import load_file

    config = json.loads((model_dir / "config.json").read_text())
    if config.get("model_type") not in ("llama", "mistral"):
        raise ValueError(f"GGUF export handles llama/mistral models, not {config.get('model_type')}")
    heads, kv_heads = config["num_attention_heads"], config.get("num_key_value_heads") or config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    writer = gguf.GGUFWriter(str(partial), "llama")
    writer.add_name(model_dir.name)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_rope_dimension_count(head_dim)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_rope_freq_base(config.get("rope_theta", 10000.0))
    writer.add_vocab_size(config["vocab_size"])
    writer.add_file_type(
        {
            "F32": gguf.LlamaFileType.ALL_F32,
            "F16": gguf.LlamaFileType.MOSTLY_F16,
            "BF16": gguf.LlamaFileType.MOSTLY_BF16,
        }[file_type]
    )
    _write_tokenizer(writer, model_dir, config["vocab_size"])

    tensors = {}
    for shard in sorted(model_dir.glob("*.safetensors")):
        tensors.update(load_file(shard))
    if "lm_head.weight" not in tensors and config.get("tie_word_embeddings"):
        tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"]
    for hf_name, tensor in tensors.items():
        name = _tensor_name(hf_name)
        if name is None:
            raise ValueError(f"no GGUF name for tensor {hf_name}")
        data = tensor.to(torch.float32).numpy()
        if name.endswith("attn_q.weight"):
            data = _permute(data, heads)
        elif name.endswith("attn_k.weight"):
            data = _permute(data, kv_heads)
        if data.ndim == 1 or file_type == "F32":  # norms stay F32, as llama.cpp's converter keeps them
            writer.add_tensor(name, data.astype(np.float32))
        elif file_type == "F16":
            writer.add_tensor(name, data.astype(np.float16))
        else:
            raw = gguf.quants.quantize(data, gguf.GGMLQuantizationType.BF16)
            writer.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=gguf.GGMLQuantizationType.BF16)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    partial.replace(out)
    return out


def quantize_gguf(source: Path, out: Path, file_type: str, threads: int = 0) -> Path:
    """llama.cpp's own quantizer (through llama_cpp's low-level API)."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{file_type}")
    params.nthread = threads
    partial = out.with_name(out.name + ".partial")
    status = llama_cpp.llama_model_quantize(str(source).encode(), str(partial).encode(), params)
    if status != 0:
        raise RuntimeError(f"llama.cpp could not quantize {source} to {file_type} (status {status})")
    partial.replace(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.models.gguf", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="an HF Llama/Mistral directory (float types) or an F32 .gguf")
    parser.add_argument("--type", required=True, choices=FLOAT_TYPES + QUANT_TYPES)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.type in FLOAT_TYPES:
        write_float_gguf(args.source, args.out, args.type)
    else:
        quantize_gguf(args.source, args.out, args.type)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
