"""What a result was measured on: the machine and the code."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import NamedTuple

from pipeline.run.gpu_slots import cuda_visible_ids

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


class SmiGpu(NamedTuple):
    """One row of `nvidia-smi --query-gpu=index,uuid,name`: a physical GPU, in nvidia-smi's order."""

    index: int
    uuid: str
    name: str


def parse_smi_gpus(text: str) -> list[SmiGpu]:
    rows = []
    for line in text.splitlines():
        fields = [f.strip() for f in line.split(",", 2)]  # a name could hold a comma, the first two never do
        if len(fields) == 3 and fields[0].isdigit():
            rows.append(SmiGpu(int(fields[0]), fields[1], fields[2]))
    return rows


def nvidia_smi_query(fields: str) -> str | None:
    """What `nvidia-smi --query-gpu=FIELDS` prints (CSV, no header); None without a working driver."""
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def nvidia_smi_gpus() -> list[SmiGpu]:
    return parse_smi_gpus(nvidia_smi_query("index,uuid,name") or "")


def _match_visible(rows: list[SmiGpu], entry: str) -> SmiGpu | None:
    if entry.isdigit():
        # CUDA numbers devices fastest first unless CUDA_DEVICE_ORDER=PCI_BUS_ID, nvidia-smi by PCI bus:
        # the two agree on a machine of one GPU model, which gpu_uuid lets a reader check.
        return next((r for r in rows if r.index == int(entry)), None)
    if entry.startswith("MIG-GPU-"):  # MIG-GPU-<parent uuid>/<gi>/<ci>: a slice of that GPU
        parent = _match_visible(rows, entry.removeprefix("MIG-").split("/")[0])
        return parent._replace(uuid=entry) if parent else None
    matches = [r for r in rows if r.uuid.startswith(entry)]  # CUDA takes any unique UUID prefix
    return matches[0] if len(matches) == 1 else None


def visible_gpus(smi_rows: list[SmiGpu], cuda_visible_devices: str | None) -> list[SmiGpu]:
    """The GPUs a process with this CUDA_VISIBLE_DEVICES sees, in CUDA's order (its device 0 first)."""
    if cuda_visible_devices is None:
        return list(smi_rows)
    visible = []
    for entry in cuda_visible_ids(cuda_visible_devices):
        row = _match_visible(smi_rows, entry)
        if row is None:
            break  # CUDA stops at the first entry naming no device
        visible.append(row)
    return visible


def _torch_gpu(torch) -> dict:
    """torch's device 0 is already the first one CUDA_VISIBLE_DEVICES lets it see."""
    props = torch.cuda.get_device_properties(0)
    info = {
        "gpu": torch.cuda.get_device_name(0),
        "gpu_count": torch.cuda.device_count(),
        "gpu_memory_bytes": props.total_memory,
    }
    uuid = getattr(props, "uuid", None)  # recent torch only
    if uuid is not None:
        uuid = str(uuid)
        info["gpu_uuid"] = uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"  # as nvidia-smi writes it
    return info


def _smi_gpu(environ: Mapping[str, str]) -> dict:
    visible = visible_gpus(nvidia_smi_gpus(), environ.get("CUDA_VISIBLE_DEVICES"))
    if not visible:
        return {}
    first = visible[0]
    return {"gpu": first.name, "gpu_count": len(visible), "gpu_index": first.index, "gpu_uuid": first.uuid}


def gpu_description(torch, environ: Mapping[str, str] = os.environ) -> dict:
    """The GPU fields of describe_hardware: {} when this process sees no GPU."""
    if torch is not None:
        # torch imported without CUDA means the engine computes on the CPU, whatever the driver lists
        return _torch_gpu(torch) if torch.cuda.is_available() else {}
    return _smi_gpu(environ)


@cache
def describe_hardware() -> dict:
    """CPU always; the GPU too when this process can see one (torch's view where the engine imported it)."""
    info = {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_cache_bytes": last_level_cache_bytes(),
        "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
        "gpu": None,
        "gpu_count": 0,
        "hostname": platform.node(),
    }
    # torch only where the engine already imported it: importing it costs seconds
    info.update(gpu_description(sys.modules.get("torch")))
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
