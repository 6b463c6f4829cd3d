"""The compiled hf engine for real on the CPU (inductor's C++ backend), tiny-llama at fp32."""

import pytest

from pipeline.engines.hf_compiled import HFCompiledEngine
from pipeline.plan.conf import compose_cell
from pipeline.run.measure import measure_cell

pytestmark = pytest.mark.engine


def test_compiled_decode_is_timed_per_step_with_the_compile_off_the_clock(models_dir):
    import torch
    from transformers import AutoModelForCausalLM

    overrides = [f"models_dir={models_dir}", "engine=hf_compiled", "precision=fp32", "batch_size=2"]
    workload = ["workload.input_tokens=12", "workload.output_tokens=6", "workload.num_requests=2"]
    cell = compose_cell([*overrides, *workload, "workload.repeats=1", "workload.warmup_requests=2"])
    engine = HFCompiledEngine(cell, max_batch_size=2, threads=2)
    engine.load()
    assert engine.args["compile_mode"] == "default" and engine.args["kv_cache"] == "static"  # a CPU: no CUDA graphs

    done = measure_cell(engine, cell, progress=lambda message: None)
    assert done.prepare_s > 1.0  # the compile happened here, before warm-up and measurement
    assert len(done.records) == 2
    for record in done.records:
        assert record["success"] and record["output_tokens"] == 6 and record["chunks"] == 6
        assert 0 < record["ttft_s"] < record["e2e_s"]

    # the compiled greedy decode says what eager transformers says
    prompt = list(range(10, 22))
    (result,) = engine.generate([prompt], output_tokens=6)
    hf = AutoModelForCausalLM.from_pretrained(models_dir / "tiny-llama", dtype=torch.float32)
    with torch.inference_mode():
        expected = hf.generate(torch.tensor([prompt]), max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert result.text.startswith(engine.tokenizer.decode(expected[0, len(prompt) :].tolist()[:4]))
