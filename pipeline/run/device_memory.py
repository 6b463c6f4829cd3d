"""Peak GPU memory of an engine, sampled with NVML while a cell runs.

Engines allocate device memory in ways their host process cannot see (vLLM reserves its KV
cache up front, llama.cpp and MLC through their own allocators, servers in a child process),
so the host's RSS says nothing about it. NVML lists each process's device memory: a sampler
thread sums it over the engine's process tree every `interval_s` and keeps the peak
(`nvml_process`). Inside a container NVML may report host PIDs that match none of ours; then
the whole device's used memory is the figure (`nvml_device`: one job holds a GPU slot, so it is
mostly the engine's, plus whatever else runs there).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Mapping


def _nvml():
    import pynvml  # nvidia-ml-py

    pynvml.nvmlInit()
    return pynvml


def _process_tree(root_pid: int) -> set[int]:
    import psutil

    try:
        root = psutil.Process(root_pid)
        return {root_pid, *(child.pid for child in root.children(recursive=True))}
    except psutil.Error:
        return {root_pid}


def visible_handles(nvml, environ: Mapping[str, str] = os.environ) -> list:
    """NVML handles of the GPUs this process may use (CUDA_VISIBLE_DEVICES by index or UUID)."""
    from pipeline.run.provenance import nvidia_smi_gpus, visible_gpus

    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
    return [nvml.nvmlDeviceGetHandleByUUID(gpu.uuid) for gpu in visible_gpus(nvidia_smi_gpus(), visible)]


class DeviceMemorySampler:
    """Samples the device memory of `root_pid`'s process tree until stop(); the peak and its kind."""

    def __init__(self, root_pid: int, handles: list, nvml, interval_s: float = 0.1, tree=_process_tree):
        self.root_pid, self.handles, self.nvml = root_pid, handles, nvml
        self.interval_s, self.tree = interval_s, tree
        self.peak_process: int | None = None  # the engine's processes, where NVML lists them
        self.peak_device: int | None = None  # the whole device (its visible GPUs)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="device-memory")

    @classmethod
    def start_for(cls, root_pid: int, **options) -> DeviceMemorySampler | None:
        """A running sampler, or None where NVML is not available (no driver, no nvidia-ml-py)."""
        try:
            nvml = _nvml()
            handles = visible_handles(nvml)
        except Exception:  # ImportError, NVMLError: the cell records no device memory, never fails
            return None
        if not handles:
            return None
        sampler = cls(root_pid, handles, nvml, **options)
        with contextlib.suppress(Exception):  # the baseline sample; the thread keeps trying
            sampler.sample()
        sampler._thread.start()
        return sampler

    def sample(self) -> None:
        pids = self.tree(self.root_pid)
        ours, device_used, listed = 0, 0, False
        for handle in self.handles:
            for process in self.nvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if process.pid in pids and process.usedGpuMemory is not None:
                    ours, listed = ours + process.usedGpuMemory, True
            device_used += self.nvml.nvmlDeviceGetMemoryInfo(handle).used
        if listed:
            self.peak_process = max(self.peak_process or 0, ours)
        self.peak_device = max(self.peak_device or 0, device_used)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            with contextlib.suppress(Exception):  # a failed sample leaves the peak as it was
                self.sample()

    def stop(self) -> tuple[int | None, str]:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        with contextlib.suppress(Exception):  # the last sample, after the cell
            self.sample()
        if self.peak_process is not None:
            return self.peak_process, "nvml_process"
        return self.peak_device, "nvml_device"
