"""GPU slots on one machine: concurrent jobs never share a device, a killed job's device comes back.

Real processes contend for real flocks; the slots are fake device ids (no GPU needed).
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from pipeline.run.gpu_slots import NoGpuSlots, acquire, configured_slots, holders, scheduler_devices, try_acquire
from tests.conftest import REPO

# One contender: take a slot (waiting if need be), hold it a while, report (device, start, end).
CONTENDER = """
import json, sys, time
from pathlib import Path
from pipeline.run.gpu_slots import acquire
with acquire(1, ["0", "1", "2"], Path(sys.argv[1]), holder="contender", poll_s=0.01) as lease:
    start = time.monotonic()
    time.sleep(0.3)
    end = time.monotonic()
print(json.dumps({"device": lease.devices[0], "start": start, "end": end}))
"""

HOLDER = """
import sys, time
from pathlib import Path
from pipeline.run.gpu_slots import acquire
lease = acquire(int(sys.argv[2]), ["0", "1"], Path(sys.argv[1]), holder="crasher")
print(",".join(lease.devices), flush=True)
time.sleep(600)
"""


def python(code: str, *args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO, stdout=subprocess.PIPE, text=True, **kwargs)


def test_concurrent_jobs_never_share_a_slot_and_all_slots_are_used(tmp_path):
    contenders = [python(CONTENDER, str(tmp_path)) for _ in range(8)]
    spans = [json.loads(p.communicate(timeout=120)[0]) for p in contenders]
    assert all(p.returncode == 0 for p in contenders)
    overlapping_same_device = [
        (a, b)
        for i, a in enumerate(spans)
        for b in spans[i + 1 :]
        if a["device"] == b["device"] and a["start"] < b["end"] and b["start"] < a["end"]
    ]
    assert not overlapping_same_device
    assert {s["device"] for s in spans} == {"0", "1", "2"}
    # 8 jobs on 3 slots: some had to wait, yet never more than 3 held at once
    events = sorted([(s["start"], 1) for s in spans] + [(s["end"], -1) for s in spans])
    held, most = 0, 0
    for _, change in events:
        held += change
        most = max(most, held)
    assert most == 3


def test_a_killed_holder_gives_its_slots_back(tmp_path):
    holder = python(HOLDER, str(tmp_path), "2")
    assert holder.stdout.readline().strip() == "0,1"
    assert try_acquire(1, ["0", "1"], tmp_path) is None  # both held
    assert set(holders(["0", "1"], tmp_path).values()) == {f"{holder.pid} crasher"}
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    lease = try_acquire(2, ["0", "1"], tmp_path)
    assert lease is not None and lease.devices == ["0", "1"]
    lease.release()
    assert holders(["0", "1"], tmp_path) == {"0": None, "1": None}


def test_a_waiting_job_gets_the_slot_when_its_holder_dies(tmp_path):
    holder = python(HOLDER, str(tmp_path), "2")
    assert holder.stdout.readline().strip() == "0,1"
    started = time.monotonic()
    waiter = python(
        "import sys; from pathlib import Path; from pipeline.run.gpu_slots import acquire\n"
        "print(acquire(1, ['0', '1'], Path(sys.argv[1]), poll_s=0.01).devices[0], flush=True)",
        str(tmp_path),
    )
    time.sleep(1.0)
    assert waiter.poll() is None, "it waits while every slot is held"
    holder.kill()
    assert waiter.communicate(timeout=30)[0].strip() == "0"
    assert time.monotonic() - started >= 1.0
    holder.wait(timeout=30)


def test_a_partial_grab_holds_nothing(tmp_path):
    with acquire(1, ["0", "1"], tmp_path) as first:
        assert first.devices == ["0"]
        assert try_acquire(2, ["0", "1"], tmp_path) is None
        second = try_acquire(1, ["0", "1"], tmp_path)  # slot 1 was not left locked by the failed grab
        assert second is not None and second.devices == ["1"]
        second.release()


@pytest.mark.parametrize(
    ("setting", "slots"),
    [
        ("4", ["0", "1", "2", "3"]),  # one number is a count, here only
        (" 2 ", ["0", "1"]),
        ("0", []),
        ("0,1,3", ["0", "1", "3"]),
        (" 1 , 3 ", ["1", "3"]),
        ("2,", ["2"]),  # one device alone, not a count
    ],
)
def test_the_slot_setting_is_device_ids_or_a_count(setting, slots):
    assert configured_slots({"LLM_BENCH_GPU_SLOTS": setting}) == slots


@pytest.mark.parametrize(
    ("visible", "slots"),
    [
        ("0", ["0"]),  # a device id, never a count (it used to give no slot at all)
        ("1", ["1"]),
        ("3", ["3"]),
        (" 3 ", ["3"]),
        ("0,2", ["0", "2"]),
        ("2, 0", ["2", "0"]),  # CUDA's order is kept: the engine's device 0 is physical 2
        ("", []),
        ("  ", []),
        ("-1", []),
        ("0,-1,1", ["0"]),  # CUDA ignores the list from the first invalid entry on
        ("0,,1", ["0"]),
        ("1,x,2", ["1"]),
        ("0,1,0", []),  # a repeated device hides them all
        ("GPU-8a3f0c2e-1b2c-4d5e-8f90-123456789abc", ["GPU-8a3f0c2e-1b2c-4d5e-8f90-123456789abc"]),
        ("GPU-8a3f,GPU-77b1", ["GPU-8a3f", "GPU-77b1"]),
        ("MIG-GPU-8a3f0c2e-1b2c-4d5e-8f90-123456789abc/1/0", ["MIG-GPU-8a3f0c2e-1b2c-4d5e-8f90-123456789abc/1/0"]),
        ("MIG-5c2d9f10-aaaa-5bbb-8ccc-0123456789ab", ["MIG-5c2d9f10-aaaa-5bbb-8ccc-0123456789ab"]),
    ],
)
def test_cuda_visible_devices_is_always_a_list_of_device_ids(visible, slots, monkeypatch):
    monkeypatch.setattr("pipeline.run.gpu_slots.shutil.which", lambda _: pytest.fail("nvidia-smi asked"))
    assert configured_slots({"CUDA_VISIBLE_DEVICES": visible}) == slots


def test_the_slot_setting_wins_over_cuda_visible_devices():
    assert configured_slots({"LLM_BENCH_GPU_SLOTS": "2,5", "CUDA_VISIBLE_DEVICES": "0"}) == ["2", "5"]
    assert configured_slots({"LLM_BENCH_GPU_SLOTS": "3", "CUDA_VISIBLE_DEVICES": "7"}) == ["0", "1", "2"]
    # set to blanks it is unset: CUDA_VISIBLE_DEVICES decides
    assert configured_slots({"LLM_BENCH_GPU_SLOTS": " ", "CUDA_VISIBLE_DEVICES": "3"}) == ["3"]


def test_without_either_variable_the_slots_are_the_gpus_nvidia_smi_lists(monkeypatch):
    listing = (
        "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-11111111-aaaa-4aaa-8aaa-aaaaaaaaaaaa)\n"
        "  MIG 1g.10gb     Device  0: (UUID: MIG-5c2d9f10-aaaa-5bbb-8ccc-0123456789ab)\n"
        "GPU 1: NVIDIA H200 (UUID: GPU-22222222-bbbb-4bbb-8bbb-bbbbbbbbbbbb)\n"
    )
    monkeypatch.setattr("pipeline.run.gpu_slots.shutil.which", lambda name: f"/fake/bin/{name}")
    monkeypatch.setattr(
        "pipeline.run.gpu_slots.subprocess.run",
        lambda command, **_: subprocess.CompletedProcess(command, 0, stdout=listing, stderr=""),
    )
    assert configured_slots({}) == ["0", "1"]
    monkeypatch.setattr("pipeline.run.gpu_slots.shutil.which", lambda _: None)
    assert configured_slots({}) == []  # no driver: no slots, whatever this machine has


def test_more_gpus_than_slots_is_a_clear_error(tmp_path):
    with pytest.raises(NoGpuSlots, match="2 GPU\\(s\\) asked per job but this machine has 1 GPU slot"):
        acquire(2, ["0"], tmp_path)


def test_slurm_assigned_gpus_are_used_as_given():
    assert scheduler_devices({"SLURM_JOB_ID": "7", "SLURM_JOB_GPUS": "1", "CUDA_VISIBLE_DEVICES": "1"}) == "1"
    assert scheduler_devices({"SLURM_JOB_ID": "7"}) is None  # a SLURM job without GPUs: slots apply
    assert scheduler_devices({"CUDA_VISIBLE_DEVICES": "0"}) is None


@pytest.mark.engine
def test_an_instance_exports_its_slot_to_the_engine(tmp_path, models_dir):
    """pipeline.run.supervisor --gpus 1 takes the free slot and records it; a busy machine makes it wait."""
    env = {**os.environ, "LLM_BENCH_GPU_SLOTS": "2,3", "LLM_BENCH_GPU_LOCK_DIR": str(tmp_path / "slots")}
    with acquire(1, ["2", "3"], tmp_path / "slots") as taken:  # another job holds device 2
        assert taken.devices == ["2"]
        summary = tmp_path / "r/hf/tiny-llama/int4/bs1/summary.json"
        command = [sys.executable, "-m", "pipeline.run.supervisor", "--engine", "hf", "--model", "tiny-llama"]
        command += ["--precision", "int4", "--batch-sizes", "1", "--summaries", str(summary), "--gpus", "1"]
        run = subprocess.run(
            [*command, "--", f"models_dir={models_dir}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
        )
    assert run.returncode == 0, run.stderr
    assert "GPU slot(s) taken: CUDA_VISIBLE_DEVICES=3" in run.stderr
    assert json.loads(summary.read_text())["gpu_devices"] == "3"
    assert json.loads((summary.parent.parent / "instance.json").read_text())["gpu_devices"] == "3"
    # no slot free: a clear message, no result written
    too_many = subprocess.run(
        [*command[:-1], "3", "--", f"models_dir={models_dir}"], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert too_many.returncode != 0
    assert "3 GPU(s) asked per job but this machine has 2 GPU slot(s) (2, 3); set LLM_BENCH_GPU_SLOTS" in (
        too_many.stderr
    )


def test_the_lock_dir_is_shared_by_default():
    from pipeline.run.gpu_slots import lock_dir

    assert lock_dir({}) == Path(tempfile.gettempdir()) / "llm-infer-bench-gpu-slots"
    assert lock_dir({"LLM_BENCH_GPU_LOCK_DIR": "/x"}) == Path("/x")
