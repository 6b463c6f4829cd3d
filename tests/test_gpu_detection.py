"""Which GPU a job actually got: CUDA_VISIBLE_DEVICES read against nvidia-smi's rows, as CUDA reads it.

Fake nvidia-smi output and a fake torch: no GPU needed.
"""

import subprocess
from types import SimpleNamespace

import pytest

from pipeline.run import provenance
from pipeline.run.provenance import SmiGpu, gpu_description, parse_smi_gpus, visible_gpus

H100_UUID = "GPU-11111111-aaaa-4aaa-8aaa-aaaaaaaaaaaa"
H200_UUID = "GPU-22222222-bbbb-4bbb-8bbb-bbbbbbbbbbbb"
SMI_OUTPUT = f"0, {H100_UUID}, NVIDIA H100 80GB HBM3\n1, {H200_UUID}, NVIDIA H200\n"
H100 = SmiGpu(0, H100_UUID, "NVIDIA H100 80GB HBM3")
H200 = SmiGpu(1, H200_UUID, "NVIDIA H200")
ROWS = [H100, H200]


def test_nvidia_smi_rows_are_parsed():
    assert parse_smi_gpus(SMI_OUTPUT) == ROWS
    assert parse_smi_gpus("\n0, GPU-abc, Some GPU, Rev. B\n") == [SmiGpu(0, "GPU-abc", "Some GPU, Rev. B")]
    assert parse_smi_gpus("No devices were found\n") == []


@pytest.mark.parametrize(
    ("visible", "expected"),
    [
        (None, ROWS),  # unset: every GPU, in nvidia-smi's order
        ("1", [H200]),  # the job's device 0 is physical GPU 1, not GPU 0
        (" 1 ", [H200]),
        ("GPU-2222", [H200]),  # a unique UUID prefix is enough for CUDA
        (H200_UUID, [H200]),
        ("1,0", [H200, H100]),
        (f"{H200_UUID},0", [H200, H100]),
        ("0,5,1", [H100]),  # the list ends at the first entry naming no device
        ("5", []),
        ("GPU-3333", []),
        ("GPU-", []),  # a prefix of both is ambiguous: no device
        ("", []),
        ("-1", []),
        ("0,0", []),
    ],
)
def test_the_visible_gpus_are_those_cuda_visible_devices_names_in_its_order(visible, expected):
    assert visible_gpus(ROWS, visible) == expected


def test_a_mig_slice_is_its_parent_gpu_with_the_slice_id():
    mig = f"MIG-{H200_UUID}/1/0"
    assert visible_gpus(ROWS, mig) == [SmiGpu(1, mig, "NVIDIA H200")]
    # the newer MIG-<uuid> form names no GPU nvidia-smi's query lists
    assert visible_gpus(ROWS, "MIG-5c2d9f10-aaaa-5bbb-8ccc-0123456789ab") == []


def fake_nvidia_smi(monkeypatch, stdout=SMI_OUTPUT, returncode=0):
    commands = []

    def run(command, **_):
        commands.append(command)
        return subprocess.CompletedProcess(command, returncode, stdout=stdout, stderr="")

    monkeypatch.setattr(provenance.subprocess, "run", run)
    return commands


def test_without_torch_the_gpu_is_the_first_visible_one(monkeypatch):
    commands = fake_nvidia_smi(monkeypatch)
    assert gpu_description(None, {"CUDA_VISIBLE_DEVICES": "1"}) == {
        "gpu": "NVIDIA H200",
        "gpu_count": 1,
        "gpu_index": 1,
        "gpu_uuid": H200_UUID,
    }
    assert commands == [["nvidia-smi", "--query-gpu=index,uuid,name", "--format=csv,noheader"]]
    every = gpu_description(None, {})
    assert (every["gpu"], every["gpu_count"], every["gpu_index"]) == ("NVIDIA H100 80GB HBM3", 2, 0)


def test_without_a_visible_gpu_or_a_driver_no_gpu_is_described(monkeypatch):
    fake_nvidia_smi(monkeypatch)
    assert gpu_description(None, {"CUDA_VISIBLE_DEVICES": "7"}) == {}
    fake_nvidia_smi(monkeypatch, stdout="", returncode=9)
    assert gpu_description(None, {}) == {}

    def missing(command, **_):
        raise FileNotFoundError(command[0])

    monkeypatch.setattr(provenance.subprocess, "run", missing)
    assert gpu_description(None, {}) == {}


def fake_torch(available=True, uuid="22222222-bbbb-4bbb-8bbb-bbbbbbbbbbbb"):
    props = SimpleNamespace(total_memory=141 << 30)
    if uuid is not None:
        props.uuid = uuid
    cuda = SimpleNamespace(
        is_available=lambda: available,
        get_device_name=lambda i: ["NVIDIA H200"][i],
        device_count=lambda: 1,
        get_device_properties=lambda i: [props][i],
    )
    return SimpleNamespace(cuda=cuda)


def test_with_torch_its_device_0_is_described_with_its_uuid(monkeypatch):
    monkeypatch.setattr(provenance.subprocess, "run", lambda *a, **k: pytest.fail("nvidia-smi asked"))
    assert gpu_description(fake_torch(), {"CUDA_VISIBLE_DEVICES": "1"}) == {
        "gpu": "NVIDIA H200",
        "gpu_count": 1,
        "gpu_memory_bytes": 141 << 30,
        "gpu_uuid": H200_UUID,  # written as nvidia-smi writes it, so the two can be matched
    }
    assert "gpu_uuid" not in gpu_description(fake_torch(uuid=None))  # an older torch
    assert gpu_description(fake_torch(available=False)) == {}  # a CPU engine, whatever the driver lists


def test_describe_hardware_reports_the_visible_gpu(monkeypatch):
    fake_nvidia_smi(monkeypatch)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-2222")
    monkeypatch.delitem(provenance.sys.modules, "torch", raising=False)
    provenance.describe_hardware.cache_clear()
    try:
        info = provenance.describe_hardware()
    finally:
        provenance.describe_hardware.cache_clear()
    assert (info["gpu"], info["gpu_count"], info["gpu_index"], info["name"]) == ("NVIDIA H200", 1, 1, "NVIDIA H200")
    assert info["cpu"] and info["hostname"] is not None
