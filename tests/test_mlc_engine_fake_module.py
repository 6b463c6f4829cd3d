"""The MLC adapter against a STAND-IN mlc_llm module (MLC-LLM cannot be installed here).

The stand-in records what the adapter asked for and streams chunks on a known schedule,
several tokens per chunk, with usage in a final chunk with no choices, as MLC does.
The real-module case is the one that can run here: without mlc_llm, a cell says so.
"""

import json
import sys
import textwrap

import pytest

from pipeline.plan.conf import compose_cell

FAKE_MLC = textwrap.dedent(
    """
    import asyncio, time
    from types import SimpleNamespace as NS

    CALLS = []

    class AsyncMLCEngine:
        def __init__(self, model, device="auto", *, model_lib=None, mode="local", engine_config=None):
            CALLS.append(("init", model, device, model_lib, mode, engine_config))
            self.tokenizer = NS(encode=lambda text: text.split())  # MLC's Tokenizer has no vocab_size
            self.model_config_dicts = [{"model_type": "llama", "model_config": {"vocab_size": 32001}}]
            self.completions = self
        async def create(self, **kwargs):
            CALLS.append(("create", kwargs))
            async def stream():
                for index in range(3):          # 3 chunks of 2 tokens, 10 ms apart
                    await asyncio.sleep(0.01)
                    yield NS(choices=[NS(text=f"w{index} x ")], usage=None)
                yield NS(choices=[], usage=NS(completion_tokens=6, prompt_tokens=len(kwargs["prompt"])))
            return stream()
        async def _generate(self, prompt, generation_config, request_id):
            CALLS.append(("generate", prompt, generation_config, request_id))
            # 4 steps of one token, 10 ms apart; step 2's token ends inside a character: empty text
            for text in ("w0 ", "", "w1 w2 ", "x "):
                await asyncio.sleep(0.01)
                yield [NS(delta_text=text, delta_logprob_json_strs=['{"token": "t"}'], finish_reason=None,
                          request_final_usage_json_str=None)]
            usage = '{"prompt_tokens": %d, "completion_tokens": 4, "total_tokens": 0}' % len(prompt)
            yield [NS(delta_text="", delta_logprob_json_strs=None, finish_reason=None,
                      request_final_usage_json_str=usage)]
        def terminate(self):
            CALLS.append(("terminate",))
    """
)
KWARGS_CLASS = "class {}:\n    def __init__(self, **kwargs):\n        self.kwargs = kwargs\n"
FAKE_PROTOCOL = {
    "generation_config.py": KWARGS_CLASS.format("GenerationConfig"),
    "debug_protocol.py": KWARGS_CLASS.format("DebugConfig"),
}
FAKE_CONFIG = textwrap.dedent(
    """
    class EngineConfig:
        def __init__(self, **kwargs):
            self.kwargs = kwargs
    """
)


@pytest.fixture
def fake_mlc(tmp_path, monkeypatch):
    package = tmp_path / "mlc_llm"
    (package / "serve").mkdir(parents=True)
    (package / "__init__.py").write_text(FAKE_MLC)
    (package / "serve" / "__init__.py").write_text("")
    (package / "serve" / "config.py").write_text(FAKE_CONFIG)
    (package / "protocol").mkdir()
    (package / "protocol" / "__init__.py").write_text("")
    for name, text in FAKE_PROTOCOL.items():
        (package / "protocol" / name).write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [n for n in sys.modules if n.startswith("mlc_llm")]:
        monkeypatch.delitem(sys.modules, name)
    import mlc_llm

    return mlc_llm


def mlc_cell(*overrides):
    return compose_cell(["engine=mlc", "model=llama2-7b", "precision=int4", *overrides])


def test_fake_module_mapping_and_streamed_results(fake_mlc):
    from pipeline.engines.mlc import MLCEngine

    engine = MLCEngine(
        mlc_cell("engine.device=cuda", "+engine.options.model_lib=/libs/llama.so"), max_batch_size=8, threads=None
    )
    engine.load()
    (_, model, device, model_lib, mode, engine_config) = fake_mlc.CALLS[0]
    assert model == "HF://mlc-ai/Llama-2-7b-chat-hf-q4f16_1-MLC"  # the q4f16_1 build for int4
    assert (device, model_lib, mode) == ("cuda", "/libs/llama.so", "server")  # server mode: no 4-sequence cap
    assert engine_config.kwargs["max_num_sequence"] == 8
    assert engine_config.kwargs["prefix_cache_mode"] == "disable"
    assert engine_config.kwargs["max_total_sequence_length"] == 8 * (64 + 32)  # KV room for the whole batch
    assert engine.vocab_size() == 32001  # the build's mlc-chat-config.json, not a guess

    results = engine.generate([[5, 6, 7], [8, 9, 10]], output_tokens=4)
    generates = [call for call in fake_mlc.CALLS if call[0] == "generate"]
    assert [call[1] for call in generates] == [[5, 6, 7], [8, 9, 10]] and generates[0][3] != generates[1][3]
    config = generates[0][2].kwargs
    assert config["logprobs"] is True and config["max_tokens"] == 4 and config["temperature"] == 0.0
    assert config["debug_config"].kwargs == {"ignore_eos": True}
    for result in results:
        # the step whose text was empty is a token arrival all the same, counted from its logprob
        assert result.success and result.output_tokens == 4 and result.counted_by == "server_counts"
        assert len(result.chunk_times) == 4 and result.chunk_tokens == [1, 1, 1, 1]
        assert result.text == "w0 w1 w2 x "
        assert result.chunk_times[0] - result.t_send >= 0.009
    engine.close()
    assert fake_mlc.CALLS[-1] == ("terminate",)


def test_fake_module_without_the_engine_stream_falls_back_to_the_openai_layer(fake_mlc, monkeypatch):
    from pipeline.engines.mlc import MLCEngine

    monkeypatch.delattr(fake_mlc.AsyncMLCEngine, "_generate")
    engine = MLCEngine(mlc_cell(), max_batch_size=2, threads=None)
    engine.load()
    results = engine.generate([[5, 6, 7], [8, 9, 10]], output_tokens=6)
    creates = [call[1] for call in fake_mlc.CALLS if call[0] == "create"]
    assert len(creates) == 2
    assert creates[0]["extra_body"] == {"debug_config": {"ignore_eos": True}}
    assert creates[0]["stream_options"] == {"include_usage": True}
    assert creates[0]["temperature"] == 0.0 and creates[0]["max_tokens"] == 6 and creates[0]["prompt"] == [5, 6, 7]
    for result in results:
        assert result.success and result.output_tokens == 6  # from usage, not from the 3 chunks
        assert len(result.chunk_times) == 3 and result.chunk_tokens == [2.0, 2.0, 2.0]
        assert result.counted_by == "spread" and result.text == "w0 x w1 x w2 x "


def test_fake_module_missing_build_is_explained(fake_mlc):
    from pipeline.engines.mlc import MLCEngine

    engine = MLCEngine(mlc_cell("precision=fp32"), max_batch_size=1, threads=None)
    with pytest.raises(ValueError, match="no MLC build for q0f32: add builds: {q0f32: HF://mlc-ai/...-MLC}"):
        engine.load()


def test_without_mlc_llm_a_cell_says_how_to_get_it(tmp_path, models_dir):
    import subprocess

    summary = tmp_path / "mlc/llama2-7b/int4/bs1/summary.json"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.run.supervisor",
            "--engine",
            "mlc",
            "--model",
            "llama2-7b",
            "--precision",
            "int4",
            "--batch-sizes",
            "1",
            "--summaries",
            str(summary),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(summary.read_text())
    assert result["status"] == "error"
    assert "mlc_llm is not installed" in result["error"] and "envs/mlc.yaml" in result["error"]
    assert result["engine_precision"] == "q4f16_1"
