"""What bounds a cell, on constructed cells: every label reachable, with its evidence."""

import pandas as pd
import pytest

from pipeline.analysis import diagnosis
from pipeline.analysis.diagnosis import diagnose, fit_fixed_and_bandwidth, label

GB = 1e9


def cell(engine="hf", model="m", precision="bf16", batch_size=1, tpot=0.01, bytes_per_step=0.1 * GB, **extra):
    return {
        "cell_id": f"{engine}/{model}/{precision}/bs{batch_size}",
        "engine": engine,
        "model": model,
        "precision": precision,
        "batch_size": batch_size,
        "status": "ok",
        "tpot_s_p50": tpot,
        "bytes_per_step": bytes_per_step,
        "tpot_floor_measured_s": bytes_per_step / (30 * GB),  # a 30 GB/s machine
        "flops_per_token": 2 * bytes_per_step / 2,  # bf16: 2 FLOPs per 2-byte weight
        "peak_tflops_measured": 1.0,
        **extra,
    }


def test_a_cell_near_the_bandwidth_roof_is_bandwidth_bound():
    (row,) = diagnose(pd.DataFrame([cell(tpot=0.1 * GB / (24 * GB))])).to_dict("records")  # 80% of 30 GB/s
    assert row["bound"] == "bandwidth" and "MBU 80%" in row["bound_evidence"]
    assert row["overhead_per_step_s"] == pytest.approx(0.1 / 24 - 0.1 / 30)


def test_far_above_the_floor_with_one_model_size_is_overhead_and_says_what_it_cannot_tell():
    (row,) = diagnose(pd.DataFrame([cell(tpot=0.030)])).to_dict("records")  # floor 3.3 ms: MBU 11%
    assert row["bound"] == "overhead" and "MBU 11%" in row["bound_evidence"]
    assert "cannot be told apart" in row["bound_evidence"]


def test_tpot_growing_with_the_batch_is_compute_bound():
    cells = pd.DataFrame([cell(batch_size=8, tpot=0.040), cell(batch_size=16, tpot=0.078)])
    first, second = diagnose(cells).to_dict("records")
    assert first["bound"] == "compute" and first["batch_scaling"] == pytest.approx(1.95)
    assert "x1.95 for x2 the batch" in first["bound_evidence"]
    assert second["batch_scaling"] is None  # no larger batch to compare with


def test_high_decode_flops_are_compute_bound():
    (row,) = diagnose(pd.DataFrame([cell(batch_size=64, tpot=0.010)])).to_dict("records")
    # 64 x 0.1e9 FLOPs / 10 ms = 0.64 TFLOP/s of a 1 TFLOP/s peak
    assert row["decode_mfu"] == pytest.approx(0.64) and row["bound"] == "compute"


def test_a_fixed_cost_across_model_sizes_is_overhead_and_a_slow_kernel_is_not():
    # TPOT = 3.5 ms + bytes at 8.5 GB/s, the shape of hf on the CPU (tiny vs small llama)
    fixed, rate = 0.0035, 8.5 * GB
    tiny, small = 0.008 * GB, 0.19 * GB
    cells = pd.DataFrame(
        [
            cell(model="tiny", tpot=fixed + tiny / rate, bytes_per_step=tiny),
            cell(model="small", tpot=fixed + small / rate, bytes_per_step=small),
        ]
    )
    tiny_row, small_row = diagnose(cells).to_dict("records")
    assert tiny_row["fixed_step_s"] == pytest.approx(fixed) and tiny_row["effective_bandwidth_gbs"] == pytest.approx(
        8.5
    )
    assert tiny_row["bound"] == "overhead" and "3.5 ms fixed per step" in tiny_row["bound_evidence"]
    assert small_row["bound"] == "bandwidth" and "slow kernels, not overhead" in small_row["bound_evidence"]


def test_the_fit_needs_sizes_that_differ():
    assert fit_fixed_and_bandwidth([0.01, 0.011], [1e8, 1.2e8]) is None
    assert fit_fixed_and_bandwidth([0.01], [1e8]) is None
    assert fit_fixed_and_bandwidth([0.02, 0.01], [1e8, 3e8]) is None  # more bytes, less time: no physics


def test_without_a_floor_there_is_no_label():
    assert label(0.01, None, None, None, None, None, None)[0] is None


def test_unmeasured_cells_get_empty_columns():
    cells = pd.DataFrame([cell(), {**cell(batch_size=2), "status": "error", "tpot_s_p50": None}])
    rows = diagnose(cells).to_dict("records")
    assert rows[0]["bound"] == "overhead" and pd.isna(rows[1]["bound"]) and pd.isna(rows[1]["bound_evidence"])


def test_the_thresholds_are_stated_once_in_the_module_docstring():
    for name in ("COMPUTE_MFU", "COMPUTE_SCALING", "BANDWIDTH_MBU", "OVERHEAD_SHARE"):
        assert name in diagnosis.__doc__


def test_the_verdict_names_the_bound_of_the_fastest_cell_and_the_recipe():
    from pipeline.report.verdict import bound_note, model_verdict

    fixed, rate = 0.0035, 8.5 * GB
    cells = pd.DataFrame(
        [
            cell(model="tiny", tpot=fixed + 0.008 * GB / rate, bytes_per_step=0.008 * GB),
            cell(model="small", tpot=fixed + 0.19 * GB / rate, bytes_per_step=0.19 * GB),
        ]
    )
    cells[list(diagnose(cells).columns)] = diagnose(cells)
    assert "overhead bound" in bound_note(cells, "hf/tiny/bf16/bs1")
    assert "compiling away the per-step overhead" in bound_note(cells, "hf/tiny/bf16/bs1")
    assert "kernels that read the weights closer to the peak" in bound_note(cells, "hf/small/bf16/bs1")
    (sentence, *_) = model_verdict("tiny", cells[cells.model == "tiny"]).sentences
    assert "It is overhead bound (MBU" in sentence
    assert bound_note(cells.drop(columns=["bound"]), "hf/tiny/bf16/bs1") == ""
