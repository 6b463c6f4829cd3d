"""Device memory on a GPU, sampled with NVML over the engine's process tree. No GPU here: the
NVML calls are answered by a STAND-IN (named so), whose numbers change from sample to sample."""

from types import SimpleNamespace

from pipeline.run.device_memory import DeviceMemorySampler


class StandInNvml:
    """Answers nvmlDeviceGetComputeRunningProcesses / nvmlDeviceGetMemoryInfo from a script:
    one list of (pid, bytes) per sample, and the device's used bytes."""

    def __init__(self, samples, device_used):
        self.samples, self.device_used, self.calls = samples, device_used, 0

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        step = min(self.calls, len(self.samples) - 1)
        self.calls += 1
        return [SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in self.samples[step]]

    def nvmlDeviceGetMemoryInfo(self, handle):
        return SimpleNamespace(used=self.device_used[min(self.calls - 1, len(self.device_used) - 1)])


def sampler(nvml, tree=frozenset({100, 101})):
    return DeviceMemorySampler(100, ["gpu0"], nvml, tree=lambda root: set(tree))


def test_the_peak_is_the_engines_process_tree_not_the_other_processes_on_the_gpu():
    nvml = StandInNvml(
        [[(100, 2 << 30), (999, 50 << 30)], [(100, 2 << 30), (101, 6 << 30)], [(100, 1 << 30)]],
        device_used=[60 << 30] * 3,
    )
    measure = sampler(nvml)
    for _ in range(3):
        measure.sample()
    assert measure.stop() == (8 << 30, "nvml_process")  # 2 + 6 GiB at the second sample; pid 999 is not ours


def test_without_our_pids_in_the_listing_the_device_figure_is_used_and_labelled_so():
    nvml = StandInNvml([[(4242, 3 << 30)]], device_used=[10 << 30, 12 << 30, 11 << 30])
    measure = sampler(nvml)
    for _ in range(3):
        measure.sample()
    assert measure.stop() == (12 << 30, "nvml_device")


def test_a_sampler_needs_nvml_else_the_cell_says_unmeasured(monkeypatch):
    from pipeline.engines.base import Engine
    from pipeline.plan.conf import compose_cell
    from pipeline.run import device_memory

    def no_driver():
        raise ImportError("No module named 'pynvml'")

    monkeypatch.setattr(device_memory, "_nvml", no_driver)
    assert DeviceMemorySampler.start_for(1) is None

    class OnAGpu(Engine):
        load = generate = vocab_size = count_tokens = None

    engine = OnAGpu(compose_cell(["engine=hf", "model=tiny-llama"]), 1, 1)
    engine.device_kind = "gpu"
    engine.reset_peak_memory()
    assert engine.peak_memory() == (None, "unmeasured")  # never host RSS labelled as device memory
