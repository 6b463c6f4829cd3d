"""What a result was measured on: the machine and the code."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from functools import cache
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parents[2]


def last_level_cache_bytes(root: Path = Path("/sys/devices/system/cpu/cpu0/cache")) -> int | None:
    """The CPU's largest data cache (usually L3, shared by the socket), from sysfs."""
    sizes = {}
    for index in root.glob("index*"):
        try:
            if (index / "type").read_text().strip() == "Instruction":
                continue
            level = int((index / "level").read_text())
            size = (index / "size").read_text().strip()
        except (OSError, ValueError):
            continue
        units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
        number = int(size.rstrip("KMG"))
        sizes[level] = number * units.get(size[-1:], 1)
    return sizes[max(sizes)] if sizes else None


@cache
def git_sha() -> str:
    try:
        sha = subprocess.run(
            ["git", "-C", str(REPO_DIR), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO_DIR), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _nvidia_smi_gpus() -> list[str]:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


@cache
def describe_hardware() -> dict:
    """CPU always; the GPU too when torch is importable and sees one."""
    info = {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_cache_bytes": last_level_cache_bytes(),
        "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
        "gpu": None,
        "gpu_count": 0,
        "hostname": platform.node(),
    }
    torch = sys.modules.get("torch")  # only where the engine already imported it: it costs seconds
    if torch is not None and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = torch.cuda.device_count()
        info["gpu_memory_bytes"] = torch.cuda.get_device_properties(0).total_memory
    elif torch is None:
        names = _nvidia_smi_gpus()
        if names:
            info["gpu"], info["gpu_count"] = names[0], len(names)
    info["name"] = info["gpu"] or info["cpu"]
    return info


# Variables that change how an engine runs (threads, devices, kernels, vLLM/MLC/llama.cpp
# switches): recorded with every cell, since the same config measures differently with them.
ENGINE_ENV_PREFIXES = (
    "CUDA_",
    "NCCL_",
    "OMP_",
    "MKL_",
    "OPENBLAS_",
    "KMP_",
    "PYTORCH_",
    "TORCH",
    "THP_",
    "VLLM_",
    "SGLANG_",
    "GGML_",
    "LLAMA_",
    "MLC_",
    "TVM_",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_",
    "TOKENIZERS_",
)


def engine_environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    environ = os.environ if environ is None else environ
    return {k: v for k, v in sorted(environ.items()) if k.startswith(ENGINE_ENV_PREFIXES)}
