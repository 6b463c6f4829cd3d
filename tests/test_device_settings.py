"""Engine settings by device: each engine's conf states its CPU and GPU defaults, the device the
instance runs on picks one set, the user's settings go on top, and a build that cannot use the
machine's GPUs says what to change. torch and llama.cpp's GPU checks run against stand-ins here
(this machine has no GPU); the real CPU choices are asserted in the engines' own tests."""

import os
from types import SimpleNamespace

import pytest

from pipeline.config import ConfigError, EngineConfig
from pipeline.engines import device
from pipeline.engines.base import EngineUnavailable
from pipeline.plan.conf import compose_cell


def engine_conf(name, *overrides):
    return compose_cell([f"engine={name}", "model=tiny-llama", *overrides]).engine


def test_vllm_gets_eager_mode_on_a_cpu_and_cuda_graphs_on_a_gpu():
    vllm = engine_conf("vllm")
    cpu, gpu = vllm.settings_for("cpu"), vllm.settings_for("gpu")
    assert cpu.options == {"enforce_eager": True, "gpu_memory_utilization": 0.3}
    assert cpu.env == {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    assert gpu.options == {"gpu_memory_utilization": 0.9} and gpu.env == {}  # graphs on, default process model
    server = engine_conf("vllm_server")
    assert server.settings_for("cpu").extra_args == ["--enforce-eager", "--gpu-memory-utilization", "0.3"]
    assert server.settings_for("gpu").extra_args == ["--gpu-memory-utilization", "0.9"]


def test_llama_cpp_offloads_every_layer_on_a_gpu_only():
    assert engine_conf("llama_cpp").settings_for("gpu").options == {"n_gpu_layers": -1}
    assert engine_conf("llama_cpp").settings_for("cpu").options == {"n_gpu_layers": 0}
    assert engine_conf("llama_cpp_server").settings_for("gpu").extra_args == ["--n_gpu_layers", "-1"]
    assert engine_conf("hf_compiled").settings_for("gpu").options == {"compile_mode": "reduce-overhead"}


def test_a_user_setting_always_wins():
    vllm = engine_conf("vllm", "+engine.options.gpu_memory_utilization=0.5", "+engine.options.enforce_eager=true")
    assert vllm.settings_for("gpu").options == {"gpu_memory_utilization": 0.5, "enforce_eager": True}
    assert vllm.settings_for("cpu").options["gpu_memory_utilization"] == 0.5
    server = engine_conf("vllm_server", "engine.server.extra_args=[--gpu-memory-utilization,'0.7']")
    # the user's flag comes last: argparse keeps the last of a repeated flag
    flags = server.settings_for("gpu").extra_args
    assert flags == ["--gpu-memory-utilization", "0.9", "--gpu-memory-utilization", "0.7"]
    assert server.settings_for(None).extra_args == ["--gpu-memory-utilization", "0.7"]  # an endpoint: no defaults


def test_a_default_variable_never_replaces_the_users(monkeypatch):
    from pipeline.engines.vllm import VLLMEngine

    cell = compose_cell(["engine=vllm", "model=tiny-llama"])
    monkeypatch.setattr(VLLMEngine, "resolve_device_kind", lambda self: "cpu")
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
    engine = VLLMEngine(cell, 1, 1)
    engine.select_device()
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0" and engine.device_settings.options["enforce_eager"]
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")  # the user's choice
    VLLMEngine(cell, 1, 1).select_device()
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "1"


def test_engine_devices_is_validated():
    with pytest.raises(ConfigError, match=r"engine.devices has \['tpu'\]; the kinds are \('cpu', 'gpu'\)"):
        EngineConfig(name="x", adapter="m:C", devices={"tpu": {}})
    with pytest.raises(ConfigError, match=r"unknown engine.devices.gpu setting\(s\) \['option'\]"):
        EngineConfig(name="x", adapter="m:C", devices={"gpu": {"option": {}}})


def fake_torch(cuda_available, cuda_build="13.0", version="2.13.0"):
    cuda = SimpleNamespace(is_available=lambda: cuda_available)
    return SimpleNamespace(__version__=version, version=SimpleNamespace(cuda=cuda_build), cuda=cuda)


@pytest.fixture
def machine(monkeypatch):
    """A machine whose GPUs (names as nvidia-smi gives them) and torch the test chooses."""

    def set_up(gpus, torch):
        monkeypatch.setattr(device, "gpus_seen", lambda environ=os.environ: list(gpus))
        monkeypatch.setattr(device, "driver_version", lambda: "535.104.05")
        monkeypatch.setitem(__import__("sys").modules, "torch", torch)

    return set_up


def test_auto_is_the_gpu_when_torch_can_use_it_and_the_cpu_when_there_is_none(machine):
    machine(["NVIDIA H200"], fake_torch(True))
    assert device.torch_device_kind("auto") == "gpu" and device.torch_device_kind("cpu") == "cpu"
    machine([], fake_torch(False, cuda_build=None, version="2.13.0+cpu"))
    assert device.torch_device_kind("auto") == "cpu"
    with pytest.raises(EngineUnavailable, match="engine.device=cuda but this machine has no GPU"):
        device.torch_device_kind("cuda")


def test_gpus_that_torch_cannot_use_are_an_error_with_the_versions(machine):
    machine(["NVIDIA H200"], fake_torch(False, cuda_build="13.0"))
    with pytest.raises(EngineUnavailable) as old_driver:
        device.torch_device_kind("auto")
    message = str(old_driver.value)
    assert "NVIDIA H200, driver 535.104.05" in message
    assert "torch 2.13.0 (built for CUDA 13.0) cannot use them" in message
    assert "engine.device=cpu" in message
    machine(["NVIDIA H200"], fake_torch(False, cuda_build=None, version="2.13.0+cpu"))
    with pytest.raises(EngineUnavailable, match=r"torch 2.13.0\+cpu is a CPU build: install the GPU environment"):
        device.torch_device_kind("auto")


def test_a_build_without_gpu_support_on_a_gpu_machine_says_how_to_rebuild(machine):
    machine(["NVIDIA H100 80GB HBM3"], fake_torch(True))
    assert device.offload_device_kind("auto", True, "lib", "rebuild") == "gpu"
    with pytest.raises(EngineUnavailable, match="has 1 GPU.* but lib here was built without GPU support: rebuild"):
        device.offload_device_kind("auto", False, "lib", "rebuild")
    assert device.offload_device_kind("cpu", False, "lib", "rebuild") == "cpu"
    machine([], fake_torch(False))
    assert device.offload_device_kind("auto", False, "lib", "rebuild") == "cpu"
    with pytest.raises(EngineUnavailable, match="engine.device=cuda but lib here was built without GPU support"):
        device.offload_device_kind("cuda", False, "lib", "rebuild")


def test_hidden_gpus_are_not_seen(monkeypatch):
    from pipeline.run import provenance

    rows = provenance.parse_smi_gpus("0, GPU-aaaa, NVIDIA H200\n1, GPU-bbbb, NVIDIA H100 PCIe\n")
    monkeypatch.setattr(provenance, "nvidia_smi_gpus", lambda: rows)
    assert device.gpus_seen({}) == ["NVIDIA H200", "NVIDIA H100 PCIe"]
    assert device.gpus_seen({"CUDA_VISIBLE_DEVICES": "1"}) == ["NVIDIA H100 PCIe"]
    assert device.gpus_seen({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert device.gpus_seen({"CUDA_VISIBLE_DEVICES": "-1"}) == []


def test_only_engines_that_read_no_device_variables_are_forked_from_a_preloaded_process():
    # hf preloads torch and transformers once per instance; a device environment variable set
    # for it, or an engine whose conf has some (vLLM), must be set before the import: spawned.
    from pipeline.run.supervisor import InstanceRunner

    def start_method(*overrides):
        runner = InstanceRunner([], {}, {}, [], threads=None)
        runner._context(compose_cell(["model=tiny-llama", *overrides]))
        return runner.start_method

    assert start_method("engine=hf") == "forkserver"
    assert start_method("engine=hf", "+engine.devices.cpu.env.OMP_NUM_THREADS=1") == "spawn"
    assert start_method("engine=vllm") == "spawn"
    assert start_method("engine=llama_cpp") == "spawn"  # nothing to preload
