"""The prepared GPU validation script (tests/gpu_validation.py) end to end in its CPU mode, as
it runs on a machine without a GPU: both phases, the results folder, the exit status."""

import subprocess
import sys

import pandas as pd
import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.workflow


def test_the_validation_script_runs_both_phases_and_keeps_everything_in_one_folder(tmp_path):
    out = tmp_path / "validation"
    run = subprocess.run(
        [sys.executable, str(REPO / "tests/gpu_validation.py"), str(out), "--mode", "cpu", "--cores", "2"],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    cells = pd.read_csv(out / "cells.csv").set_index("cell_id")
    assert sorted(cells.index) == [
        "hf/tiny-llama/bf16/bs1",
        "hf/tiny-llama/bf16/bs2",
        "hf_compiled/tiny-llama/bf16/bs1",
        "hf_compiled/tiny-llama/bf16/bs2",
    ]
    assert (cells.status == "ok").all() and (cells.engine_device == "cpu").all()
    assert (cells.peak_mem_kind == "rss").all() and (cells.peak_bandwidth_measured_gbs > 0).all()
    assert (cells.loc[cells.index.str.startswith("hf_compiled"), "compile_s"] > 0).all()
    assert (out / "report" / "index.html").is_file() and (out / "logs" / "hf_compiled/tiny-llama/bf16.log").is_file()
    log = (out / "validation.log").read_text()
    assert "mode: cpu" in log and "phase hf: done" in log and "phase hf_compiled: done" in log
    assert "hf_compiled/tiny-llama/bf16/bs2" in (out / "summary.txt").read_text()
