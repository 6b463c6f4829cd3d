"""Which kind of device an engine instance computes on, decided before it loads.

engine.device is `cpu`, `cuda` (or `cuda:N`) or `auto`. For `auto` the answer is a GPU when
this process can see one (nvidia-smi lists one and CUDA_VISIBLE_DEVICES does not hide it),
and it is checked against what the engine's build can use: a torch without a working CUDA
build, or a llama.cpp compiled for the CPU only, on a machine with GPUs is an error that says
what to change, never a silent CPU measurement labelled with the GPU's datasheet.

    python -m pipeline.engines.device     # this machine: GPUs seen, and whether torch can use them
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

from pipeline.engines.base import EngineUnavailable


def gpus_seen(environ: Mapping[str, str] = os.environ) -> list[str]:
    """Names of the GPUs this process can see: the driver's list through CUDA_VISIBLE_DEVICES."""
    from pipeline.run.provenance import nvidia_smi_gpus, visible_gpus

    return [gpu.name for gpu in visible_gpus(nvidia_smi_gpus(), environ.get("CUDA_VISIBLE_DEVICES"))]


def driver_version() -> str | None:
    from pipeline.run.provenance import nvidia_smi_query

    lines = (nvidia_smi_query("driver_version") or "").split()
    return lines[0] if lines else None


def torch_cuda_problem(torch, gpus: list[str]) -> str:
    """Why torch cannot use the GPUs nvidia-smi lists, with the versions that decide it."""
    build = torch.version.cuda
    if build is None:
        return (
            f"this machine has {len(gpus)} GPU(s) ({gpus[0]}) but torch {torch.__version__} is a CPU build: "
            "install the GPU environment (make setup-gpu, README: GPU machines), or set engine.device=cpu "
            "to measure the CPU"
        )
    return (
        f"this machine has {len(gpus)} GPU(s) ({gpus[0]}, driver {driver_version() or 'unknown'}) but torch "
        f"{torch.__version__} (built for CUDA {build}) cannot use them: the driver is probably older than that "
        "CUDA needs. Update the driver, or install a torch built for an older CUDA "
        "(https://pytorch.org/get-started/previous-versions/), or set engine.device=cpu to measure the CPU"
    )


def torch_device_kind(requested: str) -> str:
    """cpu or gpu for an engine that computes through torch (hf, hf_compiled, vLLM)."""
    if requested == "cpu":
        return "cpu"
    import torch

    if requested != "auto" and not requested.startswith("cuda"):
        torch.device(requested)  # another accelerator (xpu, mps) or a typo: torch's own error says which
        return "gpu"
    if torch.cuda.is_available():
        return "gpu"
    gpus = gpus_seen()
    if requested == "auto" and not gpus:
        return "cpu"
    if gpus:
        raise EngineUnavailable(torch_cuda_problem(torch, gpus))
    raise EngineUnavailable(f"engine.device={requested} but this machine has no GPU that CUDA can see")


def offload_device_kind(requested: str, supports_gpu: bool, library: str, rebuild: str) -> str:
    """cpu or gpu for an engine whose build may or may not include GPU support (llama.cpp)."""
    if requested == "cpu":
        return "cpu"
    gpus = gpus_seen()
    if supports_gpu and (gpus or requested != "auto"):
        return "gpu"
    if not gpus and requested == "auto":
        return "cpu"
    where = f"this machine has {len(gpus)} GPU(s) ({gpus[0]})" if gpus else f"engine.device={requested}"
    raise EngineUnavailable(
        f"{where} but {library} here was built without GPU support: {rebuild}; or set engine.device=cpu to "
        "measure the CPU"
    )


def plain_device_kind(requested: str) -> str:
    """cpu or gpu from engine.device alone: auto means a GPU when one is visible."""
    if requested == "auto":
        return "gpu" if gpus_seen() else "cpu"
    return "cpu" if requested == "cpu" else "gpu"


def main() -> int:
    gpus = gpus_seen()
    print(f"GPUs visible: {len(gpus)} {gpus if gpus else ''}".rstrip())
    if not gpus:
        return 0
    print(f"driver: {driver_version() or 'unknown'}")
    try:
        import torch
    except ImportError:
        print("torch: not installed in this environment")
        return 1
    if not torch.cuda.is_available():
        print(f"FAIL: {torch_cuda_problem(torch, gpus)}", file=sys.stderr)
        return 1
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda}) uses {torch.cuda.get_device_name(0)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
