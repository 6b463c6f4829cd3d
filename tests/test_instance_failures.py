"""A hung, crashed or unstartable engine ends its cell with a clear status; the others go on.

Runs the real `python -m pipeline.run.supervisor` with the real hf engine; the test kills the
engine process itself where a crash is needed.
"""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import cell_figures

pytestmark = pytest.mark.engine


def instance_command(results: Path, models_dir: Path, sizes: str, *overrides: str, precision="fp32") -> list[str]:
    summaries = [str(results / f"hf/tiny-llama/{precision}/bs{bs}/summary.json") for bs in sizes.split(",")]
    command = [sys.executable, "-m", "pipeline.run.supervisor", "--engine", "hf", "--model", "tiny-llama"]
    command += ["--precision", precision, "--batch-sizes", sizes, "--summaries", *summaries, "--threads", "1"]
    return [*command, "--", f"models_dir={models_dir}", *overrides]


FAST = ("workload.input_tokens=8", "workload.output_tokens=4", "workload.num_requests=2", "workload.repeats=1")


def summary(results: Path, bs: int) -> dict:
    return json.loads((results / f"hf/tiny-llama/fp32/bs{bs}/summary.json").read_text())


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purposes
    return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()


def engine_pids(log: str) -> list[int]:
    return [int(pid) for pid in re.findall(r"starting engine process (\d+)", log)]


def test_a_cell_past_its_timeout_is_killed_and_the_next_gets_a_fresh_engine(tmp_path, models_dir):
    results = tmp_path / "results"
    run = subprocess.run(
        instance_command(
            results,
            models_dir,
            "1,2",
            "workload.output_tokens=1500",
            "workload.input_tokens=8",
            "workload.timeout_s=1.5",
            "workload.warmup_requests=0",
        ),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    for bs in (1, 2):
        result = summary(results, bs)
        assert result["status"] == "timeout"
        assert "exceeded its timeout of 1.5s; the engine was killed" in result["error"]
    instance = json.loads((results / "hf/tiny-llama/fp32/instance.json").read_text())
    assert instance["engine_starts"] == 2
    assert all(not alive(pid) for pid in engine_pids(run.stderr))


def test_an_engine_killed_mid_cell_costs_that_cell_only(tmp_path, models_dir):
    results = tmp_path / "results"
    log_path = tmp_path / "instance.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            instance_command(
                results,
                models_dir,
                "1,2",
                "workload.output_tokens=400",
                "workload.num_requests=2",
                "workload.repeats=1",
                "workload.warmup_requests=0",
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 120
        while "loaded tiny-llama" not in log_path.read_text():
            assert time.monotonic() < deadline and process.poll() is None, log_path.read_text()
            time.sleep(0.1)
        (victim,) = engine_pids(log_path.read_text())
        time.sleep(0.3)  # inside the first cell's generation
        os.kill(victim, 9)
        assert process.wait(timeout=300) == 0, log_path.read_text()
    first, second = summary(results, 1), summary(results, 2)
    assert first["status"] == "error"
    assert "the engine process died during cell hf/tiny-llama/fp32/bs1 (exit code -9)" in first["error"]
    assert second["status"] == "ok" and second["engine_start"] == 2
    assert cell_figures(results / "hf/tiny-llama/fp32/bs2/summary.json")["requests_ok"] == 2
    assert all(not alive(pid) for pid in engine_pids(log_path.read_text()))


def test_an_engine_that_cannot_start_fails_every_cell_with_its_reason(tmp_path, models_dir):
    results = tmp_path / "results"
    run = subprocess.run(
        instance_command(results, models_dir, "1,4", "engine.device=warp_drive"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    for bs in (1, 4):
        result = summary(results, bs)
        assert result["status"] == "error"
        assert result["error"].startswith("engine failed to start: RuntimeError:")
        assert "warp_drive" in result["error"]
        assert (results / f"hf/tiny-llama/fp32/bs{bs}/requests.csv").exists()
    # the start is not retried per batch size
    assert json.loads((results / "hf/tiny-llama/fp32/instance.json").read_text())["engine_starts"] == 1


def test_an_invalid_cell_config_is_an_error_row_not_a_crash(tmp_path, models_dir):
    results = tmp_path / "results"
    run = subprocess.run(
        instance_command(results, models_dir, "1", "workload.output_tokens=1"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    result = summary(results, 1)
    assert result["status"] == "error"
    assert "workload.output_tokens must be >= 2" in result["error"]


def test_unsupported_precision_starts_no_engine(tmp_path, models_dir):
    results = tmp_path / "results"
    command = instance_command(results, models_dir, "1,8", precision="int4")
    run = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    for bs in (1, 8):
        result = json.loads((results / f"hf/tiny-llama/int4/bs{bs}/summary.json").read_text())
        assert result["status"] == "unsupported"
        assert result["error"] == "precision int4 is not supported by engine hf (supported: fp32, bf16, fp16)"
    assert json.loads((results / "hf/tiny-llama/int4/instance.json").read_text())["engine_starts"] == 0


def test_a_failed_fidelity_pass_costs_the_pass_never_the_cells(tmp_path, models_dir, fidelity_reference):
    """A reference made with other settings (here: other prompts) is refused with how to rebuild it;
    the speed cells stand and say so."""
    results = tmp_path / "results"
    command = instance_command(results, models_dir, "1", "workload.fidelity.prompts=3", *FAST)
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    result = summary(results, 1)
    assert result["status"] == "ok", result["error"]
    assert result["fidelity"]["status"] == "error"
    assert "delete it and let the workflow rebuild it" in result["fidelity"]["reason"]
    assert not (results / "hf/tiny-llama/fp32/fidelity.json").exists()  # no record of a pass that did not run
