"""workload.instance_starts: one engine instance started several times, each start measuring
every batch size, its repeats pooled per cell (the real supervisor and hf engine)."""

import json
import re
import subprocess

import pandas as pd
import pytest

from pipeline.analysis.collect import collect
from tests.test_instance_failures import instance_command

pytestmark = pytest.mark.engine


def test_each_start_is_a_fresh_engine_and_every_cell_pools_its_starts(tmp_path, models_dir):
    results = tmp_path / "results"
    overrides = ["workload.instance_starts=2", "workload.output_tokens=4", "workload.input_tokens=8"]
    overrides += ["workload.num_requests=2", "workload.repeats=2", "workload.warmup_requests=1"]
    run = subprocess.run(
        instance_command(results, models_dir, "1,2", *overrides), capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    assert "engine start 2 of 2 (workload.instance_starts)" in run.stderr
    instance = json.loads((results / "hf/tiny-llama/fp32/instance.json").read_text())
    assert instance["engine_starts"] == 2
    # hf's starts are forked from one process that imported torch once; each is still its own
    # process that loads its own weights
    assert instance["engine_start_method"] == "forkserver"
    pids = re.findall(r"starting engine process (\d+) \(hf, tiny-llama, fp32; forkserver\)", run.stderr)
    assert len(pids) == len(set(pids)) == 2, run.stderr
    for bs in (1, 2):
        cell = results / f"hf/tiny-llama/fp32/bs{bs}"
        summary = json.loads((cell / "summary.json").read_text())
        assert summary["status"] == "ok" and len(summary["starts"]) == 2
        assert len(summary["cell_probes"]) == 4  # before and after, per start
        requests = pd.read_csv(cell / "requests.csv")
        assert requests.groupby("start").repeat.unique().map(list).to_dict() == {0: [0, 1], 1: [2, 3]}
        assert len(requests) == 2 * 2 * 2  # 2 starts x 2 repeats x 2 requests (2 waves of 1, or 1 of 2)
    cells, _, _ = collect(sorted(results.rglob("summary.json")))
    assert (cells.instance_starts == 2).all() and (cells.repeats_kept == 4).all()
    assert ((cells.tpot_s_p50_low < cells.tpot_s_p50) & (cells.tpot_s_p50 < cells.tpot_s_p50_high)).all()
