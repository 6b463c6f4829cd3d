"""Synthetic models: an architecture + seed -> a local HF directory, with no download.

Speed does not depend on weight values, so a random model of the right shape measures
what a real one would. Precision fidelity does depend on them: a model may ask for a brief
training run on its corpus (model.training), so that its next-token distributions have a
trained model's shape (train_briefly says why). The tokenizer is a byte-level BPE trained here on a seeded
pseudo-text corpus (GPT-2 pre-tokenization, so llama.cpp's "gpt2" tokenizer can match it).

    python -m pipeline.models.synthetic tiny-llama --into models/tiny-llama [model.seed=1 ...]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from pathlib import Path

from pipeline.config import ModelConfig
from pipeline.models.paths import model_dir

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]  # ids 0..3, as Llama numbers them


def _pseudo_corpus(seed: int, n_words: int = 400_000) -> list[str]:
    """Seeded pseudo-English lines: varied enough for a BPE of tens of thousands of merges."""
    rng = random.Random(seed)
    onsets = [
        "",
        "b",
        "c",
        "d",
        "f",
        "g",
        "h",
        "j",
        "k",
        "l",
        "m",
        "n",
        "p",
        "r",
        "s",
        "t",
        "v",
        "w",
        "z",
        "bl",
        "br",
        "ch",
        "cl",
        "cr",
        "dr",
        "fl",
        "fr",
        "gr",
        "pl",
        "pr",
        "sh",
        "sl",
        "st",
        "th",
        "tr",
    ]
    vowels = ["a", "e", "i", "o", "u", "ai", "ea", "ee", "oo", "ou", "y"]
    codas = ["", "", "n", "r", "s", "t", "l", "m", "nd", "st", "ng", "ck", "x"]
    lexicon = [
        "".join(rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas) for _ in range(rng.randint(1, 4)))
        for _ in range(60_000)
    ]
    weights = [1.0 / (rank + 1) for rank in range(len(lexicon))]  # Zipf, like real text
    words = rng.choices(lexicon, weights=weights, k=n_words)
    punctuation = [".", ",", "?", "!", ";", ":", " 42", " 7", " (x)", "'s"]
    lines, line = [], []
    for word in words:
        line.append(word.capitalize() if not line else word)
        if rng.random() < 0.08:
            line[-1] += rng.choice(punctuation)
        if len(line) >= rng.randint(8, 20):
            lines.append(" ".join(line))
            line = []
    return lines


def train_tokenizer(vocab_size: int, seed: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_pseudo_corpus(seed), trainer=trainer)
    return tokenizer


def train_briefly(hf_model, tokenizer, model: ModelConfig) -> dict:
    """A short language-modelling run on the model's own pseudo corpus (model.training: steps, batch,
    length, lr). Random weights give near-flat next-token distributions with tiny margins, on which
    any rounding flips the top token: the fidelity figures (pipeline.run.fidelity) would measure the
    random weights, not the precision. A brief run gives the distributions a trained model's shape:
    a few likely tokens well ahead of the rest. Speed does not depend on it."""
    import torch

    training = {"batch": 16, "length": 64, "lr": 3e-3, **model.training}
    started = time.perf_counter()
    lines = _pseudo_corpus(model.seed, n_words=60_000)
    data = torch.tensor([i for line in lines for i in tokenizer.encode(line + "\n", add_special_tokens=False)])
    device = next(hf_model.parameters()).device
    optimizer = torch.optim.AdamW(hf_model.parameters(), lr=training["lr"])
    generator = torch.Generator().manual_seed(model.seed)
    hf_model.train()
    losses = []
    for _ in range(int(training["steps"])):
        starts = torch.randint(0, len(data) - training["length"] - 1, (training["batch"],), generator=generator)
        batch = torch.stack([data[s : s + training["length"]] for s in starts.tolist()]).to(device)
        loss = hf_model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    hf_model.eval()
    seconds = time.perf_counter() - started
    print(
        f"[models] {model.name}: trained {training['steps']} steps in {seconds:.1f}s "
        f"(loss {losses[0]:.2f} -> {losses[-1]:.2f} nats/token)",
        file=sys.stderr,
    )
    return {**training, "loss_first": losses[0], "loss_last": losses[-1], "seconds": seconds}


def materialize(model: ModelConfig, target: str | Path) -> Path:
    """Write the model's HF directory (safetensors + tokenizer) into target, atomically."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    if not model.synthetic:
        raise ValueError(f"model {model.name} is not synthetic; nothing to materialize")
    target = Path(target)
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)

    arch = dict(model.architecture)
    vocab_size = arch["vocab_size"]
    started = time.perf_counter()
    tokenizer = train_tokenizer(vocab_size, model.seed)
    # The engine samples from the model's whole vocabulary; give every id a token so that
    # any generated id decodes to text.
    missing = vocab_size - tokenizer.get_vocab_size()
    if missing > 0:
        tokenizer.add_tokens([f"<extra_{i}>" for i in range(missing)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    fast.save_pretrained(staging)
    print(
        f"[models] {model.name}: tokenizer with {tokenizer.get_vocab_size()} tokens "
        f"({missing if missing > 0 else 0} filler) in {time.perf_counter() - started:.1f}s",
        file=sys.stderr,
    )

    model_type = arch.pop("model_type")
    config = AutoConfig.for_model(model_type, **arch, bos_token_id=1, eos_token_id=2, pad_token_id=3, dtype="bfloat16")
    torch.manual_seed(model.seed)
    started = time.perf_counter()
    # Random init of a 7B model takes minutes on a CPU and seconds on a GPU; the values differ
    # between the two (other generators), which speed does not depend on. Recorded either way.
    init_device = "cuda" if torch.cuda.is_available() else "cpu"
    steps = int(model.training.get("steps", 0))
    with torch.device(init_device):  # trained in fp32 (AdamW in bf16 barely moves), saved in bf16
        hf_model = AutoModelForCausalLM.from_config(config, dtype=torch.float32 if steps else torch.bfloat16)
    n_params = sum(p.numel() for p in hf_model.parameters())
    facts = {"name": model.name, "seed": model.seed, "params": n_params, "initialized_on": init_device}
    if steps:
        facts["training"] = train_briefly(hf_model, fast, model)
        hf_model = hf_model.to(torch.bfloat16)
    hf_model.save_pretrained(staging, safe_serialization=True)
    (staging / "synthetic.json").write_text(json.dumps(facts))
    print(
        f"[models] {model.name}: {n_params / 1e6:.1f}M params (initialized on the {init_device}) written in "
        f"{time.perf_counter() - started:.1f}s",
        file=sys.stderr,
    )

    # Built aside and renamed: an interrupted build never leaves a half model in place.
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


def main(argv: list[str] | None = None) -> int:
    from pipeline.plan.conf import compose_cell

    parser = argparse.ArgumentParser(
        prog="python -m pipeline.models.synthetic",
        description="Materialize a synthetic model (random weights + local tokenizer) into a directory.",
    )
    parser.add_argument("model", help="model name from conf/model/")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for the model (model.seed=1 ...)")
    parser.add_argument("--into", type=Path, help="target directory (default: models/NAME)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for the training (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)  # two builds side by side must not both take every core
    cfg = compose_cell([f"model={args.model}", *args.overrides])
    if not cfg.model.synthetic:
        parser.error(f"model {args.model} is not synthetic (hub id {cfg.model.hub_id}); set model.synthetic=true")
    path = materialize(cfg.model, args.into or model_dir(cfg.model))
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
