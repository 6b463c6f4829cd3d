"""Roofline accounting: exact figures for the published architectures, the notebook's
7.2 ms, MBU arithmetic, hardware detection, the probes, and a cross-check with llm-analysis."""

import json
import math

import pytest

from pipeline.analysis.roofline import cell_roofline, main, ridge_batch_size, select_hardware
from pipeline.config import HardwareConfig
from pipeline.models.shape import ModelShape, weight_bytes
from pipeline.plan.conf import ConfTree, compose_cell
from tests.conftest import CONF


def cfg(*overrides):
    return compose_cell(list(overrides))


def shape(model):
    return ModelShape.from_architecture(cfg(f"model={model}").model.architecture)


def test_published_parameter_counts():
    assert shape("llama2-7b").params == 6_738_415_616  # Llama-2-7b-hf's safetensors
    assert shape("mistral-7b").params == 7_241_732_096  # Mistral-7B-v0.1's safetensors


def test_kv_cache_per_token_gqa_is_a_quarter_of_mha():
    assert shape("llama2-7b").kv_bytes_per_token(2) == 2 * 32 * 32 * 128 * 2 == 524_288
    assert shape("mistral-7b").kv_bytes_per_token(2) == 524_288 // 4


def test_weight_bytes_per_precision_include_quantization_scales():
    llama = shape("llama2-7b")
    fp16 = weight_bytes(llama, cfg("precision=fp16").precision)
    int4 = weight_bytes(llama, cfg("precision=int4").precision)
    norms = (2 * 32 + 1) * 4096
    assert fp16 == pytest.approx((llama.params - norms) * 2 + norms * 2)
    assert int4 == pytest.approx((llama.params - norms) * 4.5 / 8 + norms * 2)  # Q4_0: 4.5 bits/weight
    # a decode step reads one embedding row per token, not the table
    read = weight_bytes(llama, cfg("precision=fp16").precision, read_per_step=True)
    assert fp16 - read == pytest.approx(32000 * 4096 * 2)


def test_the_notebooks_7_2_ms_per_token(capsys):
    assert main(["--params", "7e9", "precision=bf16", "hardware=a100-80g-pcie"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["peak_bandwidth_gbs"] == 1935
    assert round(figures["tpot_floor_ms"], 1) == 7.2


def test_llama2_7b_floor_and_mbu_from_a_measured_tpot(capsys):
    main(["model=llama2-7b", "precision=fp16", "hardware=a100-80g", "batch_size=1", "--tpot-ms", "13.0"])
    figures = json.loads(capsys.readouterr().out)
    # 13.26 GB read per step (weights without the embedding table, plus 80 tokens of KV)
    assert figures["bytes_per_step"] == pytest.approx(13.26e9, rel=1e-3)
    assert figures["tpot_floor_ms"] == pytest.approx(13.26e9 / 2039e9 * 1e3, rel=1e-3)
    assert figures["mbu"] == pytest.approx(figures["tpot_floor_s"] / 0.013, rel=1e-9)
    assert figures["peak_tflops"] == 312 and figures["ridge_batch_size"] > 100  # far from compute bound


def test_mbu_is_floor_over_measured_and_flags_impossible_cells():
    cell = cfg("model=tiny-llama", "precision=fp32")
    entry = HardwareConfig(name="test", kind="cpu", memory_bandwidth_gbs=100, peak_tflops={"fp32": 1})
    floor = cell_roofline(cell, entry, {"bandwidth_gbs": 50})["tpot_floor_measured_s"]
    row = cell_roofline(cell, entry, {"bandwidth_gbs": 50}, tpot_s=2 * floor)
    assert row["mbu_measured"] == pytest.approx(0.5)
    assert row["mbu"] == pytest.approx(0.25)
    assert row["roofline_flag"] == ""
    faster_than_physics = cell_roofline(cell, entry, {"bandwidth_gbs": 50}, tpot_s=floor / 2)
    assert faster_than_physics["mbu_measured"] == pytest.approx(2.0)
    assert "exceeds 1.0 against the measured peak" in faster_than_physics["roofline_flag"]


def test_the_bandwidth_probed_beside_the_cell_is_its_peak_and_bounds_its_mbu():
    cell = cfg("model=tiny-llama", "precision=fp32")
    entry = HardwareConfig(name="test", kind="cpu")
    cached = {"bandwidth_gbs": 30}  # measured at engine load, perhaps long before
    probes = [{"bandwidth_gbs": 40}, {"bandwidth_gbs": 36}]  # just before and after the cell
    floor = cell_roofline(cell, entry, cached, cell_probes=probes)["tpot_floor_measured_s"]
    # TPOT 1.05x the floor at 40 GB/s: above 1.0 against the stale 30 GB/s, not against its own moment
    tpot = 1.05 * floor
    row = cell_roofline(cell, entry, cached, tpot_s=tpot, cell_probes=probes, tpot_interval=(tpot * 0.9, tpot * 1.1))
    assert row["peak_bandwidth_measured_gbs"] == 40 and row["peak_bandwidth_measured_low_gbs"] == 36
    assert row["peak_bandwidth_probe"] == "cell"
    assert row["mbu_measured"] == pytest.approx(1 / 1.05)
    assert row["mbu_measured_low"] == pytest.approx(1 / 1.05 / 1.1)
    assert row["mbu_measured_high"] == pytest.approx(1 / 1.05 / 0.9 * 40 / 36)
    assert row["roofline_flag"] == ""
    stale = cell_roofline(cell, entry, cached, tpot_s=tpot)
    assert stale["peak_bandwidth_probe"] == "load" and stale["mbu_measured"] == pytest.approx(40 / 30 / 1.05)
    assert "exceeds 1.0" in stale["roofline_flag"]
    # Flagged only when even the slowest TPOT of the interval beats the better probe.
    fast = cell_roofline(cell, entry, cached, tpot_s=floor / 1.5, cell_probes=probes, tpot_interval=(0, floor / 1.2))
    assert fast["mbu_measured_low"] == pytest.approx(1.2) and "at least 1.20" in fast["roofline_flag"]
    noisy = cell_roofline(cell, entry, cached, tpot_s=floor / 1.1, cell_probes=probes, tpot_interval=(0, floor * 1.2))
    assert noisy["mbu_measured"] > 1 and noisy["roofline_flag"] == ""


def test_unmeasured_figures_stay_empty():
    row = cell_roofline(cfg(), select_hardware(cfg().hardware, {"cpu": "x"}, ConfTree(CONF).hardware_entries()))
    assert row["hardware_entry"] == "cpu"
    assert row["mbu"] is None and row["mbu_measured"] is None and row["tpot_floor_s"] is None
    assert row["weight_bytes"] > 0 and row["bytes_per_step"] > 0


def test_ridge_batch_size_is_where_intensity_meets_the_ridge():
    llama, precision = shape("llama2-7b"), cfg("precision=fp16").precision
    context, bandwidth, flops = 80.0, 2039.0, 312e12
    batch = ridge_batch_size(llama, precision, context, bandwidth, flops)
    step_bytes = weight_bytes(llama, precision, read_per_step=True) + batch * llama.kv_bytes_per_token(2) * context
    intensity = batch * llama.flops_per_token(context) / step_bytes
    assert intensity == pytest.approx(flops / (bandwidth * 1e9), rel=1e-9)
    # at a long enough context the KV reads grow as fast as the FLOPs: never compute bound
    assert ridge_batch_size(llama, precision, 100_000, bandwidth, flops) == math.inf


@pytest.mark.parametrize(
    ("device", "entry"),
    [
        ("NVIDIA H100 80GB HBM3", "h100-sxm"),
        ("NVIDIA H100 PCIe", "h100-pcie"),
        ("NVIDIA H200", "h200"),
        ("NVIDIA A100-SXM4-80GB", "a100-80g"),
        ("NVIDIA A100 80GB PCIe", "a100-80g-pcie"),
        ("NVIDIA A100-SXM4-40GB", "a100-40g"),
        ("NVIDIA L4", "l4"),
        ("NVIDIA GeForce RTX 4090", "rtx-4090"),
        ("NVIDIA L40S", "unlisted: NVIDIA L40S"),
        (None, "cpu"),
    ],
)
def test_auto_hardware_picks_the_datasheet_entry(device, entry):
    detected = {"gpu": device, "cpu": "AMD EPYC"}
    assert select_hardware(cfg().hardware, detected, ConfTree(CONF).hardware_entries()).name == entry


def test_a_named_entry_wins_over_detection():
    chosen = select_hardware(cfg("hardware=h200").hardware, {"gpu": "NVIDIA L4"}, ConfTree(CONF).hardware_entries())
    assert chosen.name == "h200" and chosen.memory_bandwidth_gbs == 4800


def test_probes_measure_and_cache(tmp_path):
    from pipeline.run.probes import cached_peaks

    cache = tmp_path / "probes.json"
    first = cached_peaks("cpu", "test-cpu", "float32", 1, cache_file=cache, copy_bytes=32 << 20, matmul_n=128)
    assert first["cached"] is False
    assert first["bandwidth_gbs"] >= first["bandwidth_gbs_median"] > 0.1
    assert first["bandwidth_gbs"] == max(first["copy_gbs"], first["read_gbs"])
    assert first["read_gbs"] == max(first["read_kernels_gbs"].values())  # one stream and two: the better
    assert set(first["read_kernels_gbs"]) == {"sum", "dot"}
    assert first["matmul_tflops"] > 0
    again = cached_peaks("cpu", "test-cpu", "float32", 1, cache_file=cache, copy_bytes=32 << 20, matmul_n=128)
    assert again["cached"] is True and again["bandwidth_gbs"] == first["bandwidth_gbs"]


def test_probes_of_an_older_method_are_measured_again(tmp_path):
    import json

    from pipeline.run import probes

    cache = tmp_path / "probes.json"
    probes.cached_peaks("cpu", "test-cpu", "float32", 1, cache_file=cache, copy_bytes=32 << 20, matmul_n=128)
    entries = json.loads(cache.read_text())
    (key,) = entries
    older = key.replace(f"v{probes.PROBE_VERSION}|", f"v{probes.PROBE_VERSION - 1}|")
    cache.write_text(json.dumps({older: {**entries[key], "bandwidth_gbs": 1e6}}))  # a stale figure
    found = probes.cached_peaks("cpu", "test-cpu", "float32", 1, cache_file=cache, copy_bytes=32 << 20, matmul_n=128)
    assert found["cached"] is False and found["bandwidth_gbs"] < 1e6


# -- a peer's figures ---------------------------------------------------------------------
llm_analysis = pytest.importorskip("llm_analysis.analysis", reason="llm-analysis is installed by `make setup`")


def peer(model: str):
    """llm-analysis for the same architecture. It models a two-matrix MLP, so it gets the
    gated MLP's parameter count as ffn_embed_dim = 1.5 x intermediate_size."""
    from llm_analysis.config import ModelConfig, get_dtype_config_by_name, get_gpu_config_by_name

    s = shape(model)
    ffn = s.intermediate * 3 // 2
    model_config = ModelConfig(
        name=model,
        num_layers=s.layers,
        n_head=s.heads,
        hidden_dim=s.hidden,
        vocab_size=s.vocab,
        num_key_value_heads=s.kv_heads,
        ffn_embed_dim=ffn,
        expansion_ratio=ffn / s.hidden,
        model_type="llama",
    )
    return s, llm_analysis.LLMAnalysis(
        model_config,
        get_gpu_config_by_name("a100-sxm-80gb"),
        get_dtype_config_by_name("w16a16e16"),
        flops_efficiency=1.0,
        hbm_memory_efficiency=1.0,
    )


@pytest.mark.parametrize("model", ["llama2-7b", "mistral-7b"])
def test_cross_check_with_llm_analysis(model):
    s, analysis = peer(model)
    head = s.vocab * s.hidden
    # llm-analysis counts the embedding table once (as if tied): ours minus the untied head
    assert analysis.get_num_params_total() == s.params - head
    assert analysis.get_memory_kv_cache_per_layer(1, 1, 2) * s.layers == s.kv_bytes_per_token(2)
    fp16 = cfg("precision=fp16").precision
    summary = analysis.inference(batch_size_per_gpu=1, seq_len=64, num_tokens_to_generate=32)
    assert summary["weight_memory_per_gpu"] + head * 2 == pytest.approx(weight_bytes(s, fp16), rel=1e-6)
    # The memory-bound step on A100-80GB (2039 GB/s, efficiency 1.0). llm-analysis reads the
    # input embedding table each step and not the output head; we read the head and one
    # embedding row. Both tables have the same size, so the weight floors agree. Its KV term
    # loads *and stores* the whole cache at the final context (64 + 32 tokens) each step;
    # a step really stores one token's K and V, so we count the reads only, at the mean
    # decode context: theirs is 2 x 96 / 80 of ours.
    weights_only = weight_bytes(s, fp16, read_per_step=True) / 2039e9
    assert summary["decode_latency"] - summary["kv_cache_latency"] == pytest.approx(weights_only, rel=0.001)
    assert summary["kv_cache_latency"] == pytest.approx(2 * s.kv_bytes_per_token(2) * 96 / 2039e9, rel=1e-6)
    ours = cell_roofline(
        cfg(
            f"model={model}",
            "precision=fp16",
            "hardware=a100-80g",
            "workload.input_tokens=64",
            "workload.output_tokens=32",
        ),
        cfg("hardware=a100-80g").hardware,
    )
    assert ours["tpot_floor_s"] == pytest.approx(weights_only + s.kv_bytes_per_token(2) * 80 / 2039e9, rel=1e-9)


def test_hardware_comparison_for_mistral_7b_bf16_a100_vs_rtx_4090(capsys):
    # by hand: weights read per step (all but the embedding table), bf16
    attention = 32 * (4096 * 4096 * 2 + 2 * 4096 * 1024)
    mlp = 32 * 3 * 4096 * 14336
    head = 32000 * 4096
    norms = 65 * 4096
    kv = 2 * 32 * 8 * 128 * 2 * (64 + 32 / 2)  # K and V at the mean decode context of the default workload
    step_bytes = (attention + mlp + head) * 2 + norms * 2 + kv
    flops = 2 * (attention + mlp + head) + 4 * 32 * 32 * 128 * (64 + 32 / 2)
    main(["model=mistral-7b", "precision=bf16", "--compare", "a100-80g", "rtx-4090"])
    *lines, why = capsys.readouterr().out.strip().splitlines()
    a100, rtx = (json.loads(line) for line in lines)
    assert a100["tpot_floor_batch1_ms"] == pytest.approx(step_bytes / 2039e9 * 1e3, rel=1e-9)
    assert rtx["tpot_floor_batch1_ms"] == pytest.approx(step_bytes / 1008e9 * 1e3, rel=1e-9)
    assert a100["ridge_flops_per_byte"] == pytest.approx(312e12 / 2039e9)
    assert rtx["ridge_flops_per_byte"] == pytest.approx(165.2e12 / 1008e9)
    assert a100["intensity_batch1_flops_per_byte"] == pytest.approx(flops / step_bytes, rel=1e-9)
    assert a100["bound_batch1"] == rtx["bound_batch1"] == "bandwidth"
    assert why.startswith("a100-80g is 2.02x faster for batch-1 decode") and "only memory bandwidth counts" in why


def test_a_model_that_fits_in_the_cpu_cache_is_not_flagged_for_beating_the_memory_probe():
    cell = cfg("model=tiny-llama", "precision=fp32")
    entry = HardwareConfig(name="test", kind="cpu")
    probes = [{"bandwidth_gbs": 20}]
    floor = cell_roofline(cell, entry, cell_probes=probes)["tpot_floor_measured_s"]
    bytes_per_step = cell_roofline(cell, entry)["bytes_per_step"]
    fast = {"tpot_s": floor / 1.3, "cell_probes": probes, "tpot_interval": (floor / 1.4, floor / 1.2)}
    cached = cell_roofline(cell, entry, cache_bytes=bytes_per_step + 1, **fast)
    assert cached["fits_in_cache"] is True and cached["mbu_measured_low"] > 1 and cached["roofline_flag"] == ""
    in_memory = cell_roofline(cell, entry, cache_bytes=bytes_per_step - 1, **fast)
    assert in_memory["fits_in_cache"] is False and "exceeds 1.0" in in_memory["roofline_flag"]
    on_a_gpu = cell_roofline(cell, entry, **fast)  # no CPU cache is passed for a GPU cell
    assert on_a_gpu["fits_in_cache"] is None and "exceeds 1.0" in on_a_gpu["roofline_flag"]


def test_the_last_level_cache_is_read_from_sysfs(tmp_path):
    from pipeline.run.provenance import last_level_cache_bytes

    for index, (level, kind, size) in enumerate(
        [(1, "Data", "48K"), (1, "Instruction", "32K"), (2, "Unified", "2048K"), (3, "Unified", "300M")]
    ):
        folder = tmp_path / f"index{index}"
        folder.mkdir()
        (folder / "level").write_text(f"{level}\n")
        (folder / "type").write_text(f"{kind}\n")
        (folder / "size").write_text(f"{size}\n")
    assert last_level_cache_bytes(tmp_path) == 300 << 20
    assert last_level_cache_bytes(tmp_path / "missing") is None
