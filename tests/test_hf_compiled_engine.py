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


def test_a_shape_that_cannot_compile_raises_cannot_run(models_dir, monkeypatch):
    from pipeline.engines.base import CannotRun

    cell = compose_cell([f"models_dir={models_dir}", "engine=hf_compiled", "precision=fp32"])
    engine = HFCompiledEngine(cell, max_batch_size=4, threads=1)
    engine.load()

    def broken(*args):
        raise RuntimeError("C++ compile failed: no such instruction")

    monkeypatch.setattr(engine, "_step", broken)
    with pytest.raises(
        CannotRun, match="cannot compile the decode step at batch size 4: RuntimeError: C\\+\\+ compile"
    ):
        engine.prepare(4, 8, 4)


def test_a_stand_in_engine_that_cannot_run_a_batch_size_leaves_it_unsupported_and_serves_the_rest(tmp_path, models_dir):
    import json
    import os
    import shutil
    import subprocess
    import sys

    from tests.conftest import CONF

    conf = shutil.copytree(CONF, tmp_path / "conf")
    text = (conf / "engine/hf.yaml").read_text()
    (conf / "engine/stand_in.yaml").write_text(
        text.replace("pipeline.engines.hf:HFEngine", "tests.stand_in_cannot_compile:StandInCannotCompile")
    )
    summaries = [tmp_path / f"results/stand_in/tiny-llama/fp32/bs{bs}/summary.json" for bs in (1, 2)]
    run = subprocess.run(
        [sys.executable, "-m", "pipeline.run.supervisor", "--engine", "stand_in", "--model", "tiny-llama"]
        + ["--precision", "fp32", "--batch-sizes", "1,2", "--summaries", *map(str, summaries), "--threads", "1"]
        + ["--", f"models_dir={models_dir}", "workload.output_tokens=4", "workload.repeats=1"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "LLM_BENCH_CONF": str(conf)},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    first, second = (json.loads(p.read_text()) for p in summaries)
    assert first["status"] == "ok" and first["compile_s"] == 0.5
    assert second["status"] == "unsupported" and second["error"] == "stand-in: cannot compile for batch size 2"
