"""llama.cpp for real: GGUF files made from the synthetic tiny-llama, and the engine on them."""

import itertools

import pytest

from pipeline.plan.conf import compose_cell
from tests.conftest import fidelity_of

pytestmark = pytest.mark.engine
llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is installed by `make setup-engines`")

TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0")


@pytest.fixture(scope="module")
def gguf_files(models_dir):
    from pipeline.models.gguf import quantize_gguf, write_float_gguf

    source, out = models_dir / "tiny-llama", models_dir / "tiny-llama" / "gguf"
    files = {}
    for file_type in ("F32", "F16", "BF16"):
        files[file_type] = write_float_gguf(source, out / f"{file_type}.gguf", file_type)
    for file_type in ("Q8_0", "Q4_0"):
        files[file_type] = quantize_gguf(files["F32"], out / f"{file_type}.gguf", file_type)
    return files


def engine_for(models_dir, precision, **overrides):
    from pipeline.engines.llama_cpp import LlamaCppEngine

    extra = [f"{k}={v}" for k, v in overrides.items()]
    engine = LlamaCppEngine(
        compose_cell(["engine=llama_cpp", f"models_dir={models_dir}", f"precision={precision}", *extra]),
        max_batch_size=1,
        threads=1,
    )
    engine.select_device()
    engine.load()
    return engine


def test_this_cpu_build_runs_on_the_cpu_and_refuses_a_gpu(gguf_files, models_dir):
    from pipeline.engines.base import EngineUnavailable

    engine = engine_for(models_dir, "fp32")
    assert engine.device_kind == "cpu" and engine.args["n_gpu_layers"] == 0  # devices.cpu
    assert engine.probe_target() == ("cpu", "float32")
    assert not llama_cpp.llama_supports_gpu_offload()  # the wheel `make setup-engines` builds here
    with pytest.raises(EngineUnavailable, match="built without GPU support: rebuild it with CUDA: CMAKE_ARGS=-DGGML"):
        engine_for(models_dir, "fp32", **{"engine.device": "cuda"})


def test_file_sizes_follow_bits_per_weight(gguf_files):
    sizes = {t: gguf_files[t].stat().st_size for t in TYPES}
    assert sizes["Q4_0"] < sizes["Q8_0"] < sizes["F16"] < sizes["F32"]
    assert sizes["BF16"] == pytest.approx(sizes["F16"], rel=0.01)
    # the weights dominate: F32 / Q4_0 is near 32 / 4.5 (norms and metadata stay small)
    assert 5.5 < sizes["F32"] / sizes["Q4_0"] < 7.2


def test_gguf_tokenizer_matches_the_hf_tokenizer(gguf_files, models_dir):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(models_dir / "tiny-llama")
    llm = llama_cpp.Llama(model_path=str(gguf_files["F32"]), vocab_only=True, verbose=False)
    text = "Brastoo kleen, a quick shtai: plou 42 (x)'s dree!"
    assert llm.tokenize(text.encode(), add_bos=False) == hf.encode(text, add_special_tokens=False)


def test_f32_gguf_computes_what_the_hf_model_computes(gguf_files, models_dir):
    """Greedy tokens agree: the tensor names, the q/k permutation and the metadata are right."""
    import torch
    from transformers import AutoModelForCausalLM

    prompt = list(range(10, 30))
    hf = AutoModelForCausalLM.from_pretrained(models_dir / "tiny-llama", dtype=torch.float32)
    with torch.inference_mode():
        expected = hf.generate(torch.tensor([prompt]), max_new_tokens=6, min_new_tokens=6, do_sample=False)
    engine = engine_for(models_dir, "fp32")
    tokens = list(itertools.islice(engine.llm.generate(prompt, temp=0.0, reset=True), 6))
    assert tokens[:4] == expected[0, len(prompt) :].tolist()[:4]


@pytest.mark.parametrize("precision", ["fp16", "int4"])
def test_engine_emits_exactly_the_requested_tokens(gguf_files, models_dir, precision):
    engine = engine_for(models_dir, precision)
    assert engine.path.name == {"fp16": "F16.gguf", "int4": "Q4_0.gguf"}[precision]
    (result,) = engine.generate([[5] * 16], output_tokens=12)
    assert result.output_tokens == 12 and len(result.chunk_times) == 12
    assert result.t_send < result.chunk_times[0] <= result.chunk_times[-1]
    assert engine.version() == llama_cpp.__version__


def test_a_batch_is_refused_with_the_reason(gguf_files, models_dir):
    engine = engine_for(models_dir, "fp32")
    with pytest.raises(ValueError, match="one sequence at a time"):
        engine.generate([[5] * 4, [6] * 4], output_tokens=2)


def test_fidelity_orders_the_quantizations_and_f32_matches_hf(gguf_files, models_dir, fidelity_reference):
    """Every position's logits (a context reopened with logits_all) against hf fp32 on the same prompts."""
    figures = {}
    for precision in ("fp32", "bf16", "int8", "int4"):
        engine = engine_for(models_dir, precision)
        figures[precision] = fidelity_of(engine, fidelity_reference)
        assert "logits_all" not in engine.args  # the speed cells' context is the one recorded
        engine.close()
    fp32 = figures["fp32"]
    assert fp32["fidelity_status"] == "ok" and fp32["fidelity_source"] == "logits"
    assert fp32["fidelity_top1"] >= 0.995 and fp32["fidelity_kl_mean"] < 1e-7  # the GGUF export is right
    # int8 against bf16 is left out: on this tiny model their intervals can overlap (issue 16's
    # ordering is measured on small-llama by tests/benchmarks/bench_fidelity.py)
    for worse, better in (("int4", "int8"), ("int4", "bf16"), ("int8", "fp32"), ("bf16", "fp32")):
        assert figures[worse]["fidelity_kl_mean_low"] > figures[better]["fidelity_kl_mean_high"], (worse, better)
