"""The fidelity pass: an engine instance's next-token distributions next to the model's hf fp32 reference.

Teacher-forced: each of the model's fixed fidelity prompts is fed whole, and the distribution
the engine gives for the next token after every prefix is read (nothing is sampled, so a
precision's error cannot compound along a generated text). The reference is the same model
at fp32 through transformers, built once per model (`fidelity_reference` rule) and keeping,
for every position, the reference's top_k tokens and their log-probabilities. Each instance
records what its engine gives for those same tokens (None where it did not report one: an
engine that reports only its own top-k) and its own top 5. Everything derived (KL, agreement,
intervals) is pipeline.analysis.fidelity's, in collect.

    python -m pipeline.run.fidelity MODEL --out models/MODEL/fidelity/reference.json [model.seed=1 ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from pipeline.config import CellConfig, FidelityConfig
from pipeline.engines.base import Engine, FidelityUnsupported
from pipeline.run.prompts import make_prompts

REFERENCE = {"engine": "hf", "precision": "fp32"}
TOP_SHOWN = 5  # the candidate's own top tokens kept (top-5 overlap, its argmax)


def no_distributions(engine: str) -> str:
    return f"engine {engine} reads no next-token distributions (conf/engine/{engine}.yaml: fidelity: null)"


def fidelity_prompts(settings: FidelityConfig, vocab_size: int, seed: int) -> list[list[int]]:
    """positions + 1 token ids each: the distributions after all but the last are compared."""
    return make_prompts(settings.prompts, settings.positions + 1, vocab_size, seed, "fidelity")


def top_tokens(logprobs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k most likely token ids, most likely first, and their log-probabilities."""
    ids = np.argsort(-logprobs, axis=-1, kind="stable")[:, :k]
    return ids, np.take_along_axis(logprobs, ids, axis=-1)


def candidate_values(reported, wanted: list[list[int]]) -> tuple[list[list[float | None]], list[list[int]]]:
    """One prompt's engine output -> (its log-probability of each wanted token per position, None
    where it reported none; its own top TOP_SHOWN ids per position).

    `reported` is a (positions x vocab) array of log-probabilities (engines with whole
    distributions) or one {token id: logprob} per position (engines that report their top-k)."""
    if isinstance(reported, np.ndarray):
        values = np.take_along_axis(reported, np.asarray(wanted), axis=-1).tolist()
        return values, top_tokens(reported, TOP_SHOWN)[0].tolist()
    values, shown = [], []
    for position, ids in zip(reported, wanted, strict=True):
        values.append([float(position[i]) if i in position else None for i in ids])
        shown.append(sorted(position, key=position.get, reverse=True)[:TOP_SHOWN])
    return values, shown


def reference_config(cfg: CellConfig) -> CellConfig:
    """The cell's model and workload through the reference engine and precision, as conf/ defines
    them (the user's engine.* overrides are the measured engine's, not the reference's)."""
    from pipeline.plan.conf import ConfTree

    tree = ConfTree()
    return dataclasses.replace(
        cfg, engine=tree.engine(REFERENCE["engine"]), precision=tree.precision(REFERENCE["precision"]), batch_size=1
    )


def build_reference(cfg: CellConfig, threads: int | None = None, say=print) -> dict:
    """The model's reference: hf at fp32 (on a GPU where there is one), every fidelity prompt's
    reference top_k tokens and log-probabilities per position."""
    from pipeline.engines.hf import HFEngine

    settings = cfg.workload.fidelity_config
    started = time.perf_counter()
    engine = HFEngine(cfg, max_batch_size=1, threads=threads)
    engine.select_device()
    engine.load()
    prompts = fidelity_prompts(settings, engine.vocab_size(), cfg.workload.seed)
    ids, logprobs = [], []
    for rows in engine.next_token_logprobs(prompts):
        top_ids, top_logprobs = top_tokens(rows, settings.top_k)
        ids.append(top_ids.tolist())
        logprobs.append(top_logprobs.tolist())
    say(f"[fidelity] reference for {cfg.model.name}: {len(prompts)} prompts in {time.perf_counter() - started:.1f}s")
    return {
        "model": cfg.model.name,
        "settings": settings.reference_settings(cfg.workload.seed),
        "engine": {**REFERENCE, "version": engine.version(), "device": engine.args["device"]},
        "prompts": prompts,
        "top_ids": ids,
        "top_logprobs": logprobs,
    }


def failed_reference(path: str | Path) -> str | None:
    """The error a reference file records instead of a reference (None: a reference, or no file)."""
    try:
        return json.loads(Path(path).read_text()).get("error")
    except (OSError, ValueError):
        return None


def read_reference(path: str | Path, cfg: CellConfig) -> dict:
    """The model's reference, checked against this cell's settings."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no fidelity reference at {path}: the workflow builds it (rule fidelity_reference); by hand: "
            f"python -m pipeline.run.fidelity {cfg.model.name} --out {path}"
        )
    reference = json.loads(path.read_text())
    if reference.get("error"):
        raise ValueError(
            f"the fidelity reference of {cfg.model.name} could not be built ({reference['error']}); the workflow "
            f"tries again on its next run (its log: {cfg.models_dir}/logs/{cfg.model.name}-fidelity-reference.log)"
        )
    wanted = cfg.workload.fidelity_config.reference_settings(cfg.workload.seed)
    if reference.get("settings") != wanted or reference.get("model") != cfg.model.name:
        raise ValueError(
            f"the fidelity reference at {path} was made for {reference.get('model')} with {reference.get('settings')}, "
            f"not {cfg.model.name} with {wanted}: delete it and let the workflow rebuild it"
        )
    return reference


def fidelity_pass(engine: Engine, cfg: CellConfig, reference_path: str | Path) -> dict:
    """What the loaded engine gives for the reference's tokens on the reference's prompts."""
    if cfg.engine.fidelity is None:
        raise FidelityUnsupported(no_distributions(cfg.engine.name))
    reference = read_reference(reference_path, cfg)
    started = time.perf_counter()
    reported = engine.next_token_logprobs(reference["prompts"], reference["settings"]["top_k"])
    values, shown = [], []
    for prompt_output, wanted in zip(reported, reference["top_ids"], strict=True):
        prompt_values, prompt_shown = candidate_values(prompt_output, wanted)
        if len(prompt_values) != len(wanted):
            raise ValueError(f"{cfg.engine.name} gave {len(prompt_values)} positions for a prompt, not {len(wanted)}")
        values.append(prompt_values)
        shown.append(prompt_shown)
    return {
        "source": cfg.engine.fidelity,
        "engine_precision": cfg.engine_precision,
        "reference": {"path": str(reference_path), **reference["engine"], "settings": reference["settings"]},
        "reference_top_ids": reference["top_ids"],
        "reference_top_logprobs": reference["top_logprobs"],
        "candidate_logprobs": values,
        "candidate_top_ids": shown,
        "pass_s": time.perf_counter() - started,
    }


def main(argv: list[str] | None = None) -> int:
    from pipeline.plan.conf import compose_cell
    from pipeline.results.store import write_json

    parser = argparse.ArgumentParser(
        prog="python -m pipeline.run.fidelity",
        description="Build a model's fidelity reference: hf at fp32, teacher-forced on the fixed fidelity prompts.",
    )
    parser.add_argument("model", help="model name from conf/model/")
    parser.add_argument("--out", type=Path, required=True, help="the reference file (JSON) to write")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (model.*, workload.fidelity.*, workload.seed)")
    args = parser.parse_intermixed_args(argv)
    cfg = reference_config(compose_cell([f"model={args.model}", *args.overrides]))
    try:
        reference = build_reference(cfg, args.threads, say=lambda m: print(m, file=sys.stderr))
    except Exception as exc:  # the model's fidelity fails, never its speed cells: they wait on this file
        print(traceback.format_exc(), file=sys.stderr)
        reference = {
            "model": cfg.model.name,
            "settings": cfg.workload.fidelity_config.reference_settings(cfg.workload.seed),
            "error": f"{type(exc).__name__}: {exc}",
        }
    write_json(args.out, reference)
    print(f"[fidelity] wrote {args.out}: {process_seconds():.1f}s since this process started", file=sys.stderr)
    return 0


def process_seconds() -> float:
    """Wall time since this process started, imports included (what the reference costs a run)."""
    import psutil

    return time.time() - psutil.Process().create_time()


if __name__ == "__main__":
    sys.exit(main())
