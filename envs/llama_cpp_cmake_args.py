"""The CMake flags that build llama.cpp (llama-cpp-python) for this machine's CPU.

    CMAKE_ARGS="$(python envs/llama_cpp_cmake_args.py)" pip install llama-cpp-python==...

Like GGML_NATIVE, each x86 extension the CPU reports is enabled, except AMX: on the
machines this project runs on, llama.cpp's native build (-march=native, which turns on its
AMX kernels wherever the CPU lists AMX) dies with SIGILL on Q4_0/Q8_0 models. Not for GPUs:
a CUDA build adds -DGGML_CUDA=on (README, On a GPU).
"""

from __future__ import annotations

import platform
import sys
from pathlib import Path

# GGML option -> the /proc/cpuinfo flags it needs
X86_OPTIONS = {
    "GGML_AVX": ("avx",),
    "GGML_AVX2": ("avx2",),
    "GGML_FMA": ("fma",),
    "GGML_F16C": ("f16c",),
    "GGML_BMI2": ("bmi2",),
    "GGML_AVX_VNNI": ("avx_vnni",),
    "GGML_AVX512": ("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"),
    "GGML_AVX512_VBMI": ("avx512vbmi",),
    "GGML_AVX512_VNNI": ("avx512_vnni",),
    "GGML_AVX512_BF16": ("avx512_bf16",),
}


def cpu_flags(cpuinfo: str) -> set[str]:
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cmake_args(flags: set[str]) -> str:
    options = ["-DGGML_NATIVE=OFF", "-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF"]
    options += [f"-D{option}={'ON' if set(needs) <= flags else 'OFF'}" for option, needs in X86_OPTIONS.items()]
    return " ".join(options)


if __name__ == "__main__":
    if platform.machine() not in ("x86_64", "AMD64"):
        sys.exit(0)  # elsewhere llama.cpp's own native build is used
    print(cmake_args(cpu_flags(Path("/proc/cpuinfo").read_text())))
