"""The comparison report: the verdict on tables where the answer is known, rendering from a real
smoke run, escaping of everything that comes from the data, and the page in a real browser."""

import base64
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.report.markdown import fenced, md_escape
from pipeline.report.plots import all_plots, box_stats
from pipeline.report.render import main as report_main
from pipeline.report.render import write_report
from pipeline.report.verdict import drift_warnings, noise_warnings, pareto_front, verdict
from tests.conftest import REPO, run_snakemake

CHROMIUM = Path("/usr/bin/chromium")


def cell(engine="A", precision="bf16", batch=1, tpot_ms=10.0, tok_s=100.0, noise=0.02, model="m", **extra):
    """One cells.csv row, with only the columns the report reads unless more are given; noise is
    the relative half-width of the 95% intervals (NaN: no interval, as after one repeat)."""
    row = {
        "cell_id": f"{engine}/{model}/{precision}/bs{batch}",
        "engine": engine,
        "model": model,
        "precision": precision,
        "batch_size": batch,
        "status": "ok",
        "error": None,
        "tpot_s_p50": tpot_ms / 1000,
        "output_tok_s": tok_s,
        **intervals(tpot_ms / 1000, tok_s, noise),
    }
    row.update(extra)
    return row


def intervals(tpot_s, tok_s, noise) -> dict:
    return {
        "tpot_s_p50_low": tpot_s * (1 - noise),
        "tpot_s_p50_high": tpot_s * (1 + noise),
        "output_tok_s_low": tok_s * (1 - noise),
        "output_tok_s_high": tok_s * (1 + noise),
    }


def failed(status="error", error="engine crashed", **kwargs):
    return cell(status=status, error=error, tpot_ms=np.nan, tok_s=np.nan, noise=np.nan, **kwargs)


def table(*rows) -> pd.DataFrame:
    return pd.DataFrame(list(rows))


# --- the verdict --------------------------------------------------------------------------


def test_fastest_single_stream_most_throughput_and_the_crossover():
    cells = table(
        cell("A", batch=1, tpot_ms=10, tok_s=100),
        cell("A", batch=8, tpot_ms=30, tok_s=260),
        cell("A", batch=32, tpot_ms=80, tok_s=400),
        cell("B", batch=1, tpot_ms=14, tok_s=70),
        cell("B", batch=8, tpot_ms=20, tok_s=400),
        cell("B", batch=32, tpot_ms=50, tok_s=640),
    )
    (model,) = verdict(cells).models
    assert model.latency.best.engine == "A" and model.latency.decisive
    assert model.latency.runner_up.engine == "B"
    assert (model.throughput.best.engine, model.throughput.best.batch_size) == ("B", 32)
    assert {b: r.best.engine for b, r in model.by_batch.items()} == {1: "A", 8: "B", 32: "B"}
    text = " ".join(model.sentences)
    assert "Fastest single stream (lowest TPOT p50 at batch 1): A bf16, 10 ms [9.8-10.2 ms] per output token" in text
    assert "29% less than the next, B bf16 (14 ms [13.7-14.3 ms]). Brackets: 95% intervals." in text
    assert "Most throughput: B bf16 at batch 32, 640 tok/s [627-653 tok/s] of output" in text
    assert "changes with batch size: A bf16 at batch 1, B bf16 from batch 8." in text
    assert "cannot be ranked" not in text


def test_overlapping_intervals_cannot_be_ranked():
    noisy = table(
        cell("A", tpot_ms=10.0, tok_s=100, noise=0.10),
        cell("B", tpot_ms=10.5, tok_s=96, noise=0.10),
    )
    (model,) = verdict(noisy).models
    assert not model.latency.decisive and [c.engine for c in model.latency.tied] == ["B"]
    assert not model.throughput.decisive
    text = " ".join(model.sentences)
    assert "cannot be ranked between A bf16 (10 ms [9-11 ms]) and B bf16 (10.5 ms [9.45-11.6 ms])" in text
    assert "their 95% intervals overlap" in text
    assert "Fastest single stream (lowest" not in text  # no winner is named
    (warning,) = noise_warnings(noisy)
    assert (warning.a.engine, warning.b.engine) == ("A", "B") and "cannot be ranked" in warning.text

    # The same gap with narrow intervals (A's wholly below B's) is a ranking.
    quiet = table(
        cell("A", tpot_ms=10.0, tok_s=100, noise=0.01),
        cell("B", tpot_ms=10.5, tok_s=96, noise=0.01),
    )
    (model,) = verdict(quiet).models
    assert model.latency.decisive and model.latency.best.engine == "A"
    assert model.throughput.decisive and model.throughput.best.engine == "A"
    assert noise_warnings(quiet) == []


def test_a_cell_whose_tpot_drifted_over_its_repeats_is_named():
    repeats = json.dumps([0.0489, 0.0437, 0.0399, 0.0352, 0.0310])
    drifting = cell("A", tpot_s_p50_trend=-0.447, tpot_s_p50_trend_p=0.027, tpot_s_p50_repeats=repeats)
    steady = cell("B", tpot_s_p50_trend=-0.02, tpot_s_p50_trend_p=0.6, tpot_s_p50_repeats=repeats)
    (warning,) = drift_warnings(table(drifting, steady))
    assert warning.startswith("A/m/bf16/bs1: TPOT p50 fell by 45% over its 5 repeats in time order")
    assert "p = 0.027" in warning
    assert drift_warnings(table(steady)) == []


def test_one_wide_interval_is_enough_to_prevent_a_ranking():
    # 5% apart; A is quiet (1%) but B is noisy (8%): their intervals overlap.
    cells = table(cell("A", tok_s=105, noise=0.01), cell("B", tok_s=100, noise=0.08))
    (model,) = verdict(cells).models
    assert not model.throughput.decisive


def test_only_failed_cells_give_no_ranking():
    cells = table(
        failed("error", "CUDA out of memory", engine="A"),
        failed("unsupported", "precision int4 is not supported", engine="B"),
        failed("timeout", "past 600 s", engine="C", batch=4),
    )
    result = verdict(cells)
    assert result.models == []
    assert result.overall == [
        "No cell succeeded (1 error, 1 unsupported, 1 timeout): there is nothing to compare. "
        "The reasons are listed below."
    ]
    assert not any("Fastest" in s or "throughput" in s for s in result.sentences)


def test_a_single_cell_is_reported_without_a_comparison():
    (model,) = verdict(table(cell("A", tpot_ms=12.5, tok_s=80))).models
    assert model.latency.best.engine == "A" and not model.latency.contested
    assert model.sentences == [
        "Single stream (batch 1): only A bf16 was measured, 12.5 ms per output token.",
        "Throughput: only A bf16 at batch 1 was measured, 80 tok/s of output.",
    ]


@pytest.mark.parametrize("batch_1", ["absent", "failed"])
def test_no_successful_batch_1_means_no_single_stream_claim(batch_1):
    rows = [cell("A", batch=4, tpot_ms=20, tok_s=200), cell("B", batch=4, tpot_ms=30, tok_s=120)]
    if batch_1 == "failed":
        rows += [failed(engine="A", batch=1), failed(engine="B", batch=1)]
    (model,) = verdict(table(*rows)).models
    assert model.latency is None
    assert model.sentences[0].startswith("No batch-1 cell succeeded, so single-stream latency")
    assert model.throughput.best.engine == "A" and model.throughput.decisive
    assert not any("single stream" in s.lower() and "Fastest" in s for s in model.sentences)


def test_one_engine_one_precision_makes_no_comparative_claim():
    cells = table(
        cell("A", batch=1, tpot_ms=10, tok_s=100),
        cell("A", batch=4, tpot_ms=12, tok_s=330),
        cell("A", batch=16, tpot_ms=20, tok_s=800),
    )
    (model,) = verdict(cells).models
    assert not any(r.contested for r in model.by_batch.values())
    text = " ".join(model.sentences)
    assert "changes with batch size" not in text and "Fastest" not in text
    assert "only A bf16 was measured" in text
    # Throughput still ranks the batch sizes of the one configuration.
    assert "Most throughput: A bf16 at batch 16" in text


def test_one_engine_two_precisions_compares_precisions_only():
    cells = table(
        cell("hf", "fp32", batch=1, tpot_ms=8, tok_s=120),
        cell("hf", "bf16", batch=1, tpot_ms=12, tok_s=80),
        cell("hf", "fp32", batch=8, tpot_ms=40, tok_s=200),
        cell("hf", "bf16", batch=8, tpot_ms=25, tok_s=320),
    )
    (model,) = verdict(cells).models
    assert "changes with batch size: hf fp32 at batch 1, hf bf16 from batch 8." in " ".join(model.sentences)


def test_the_same_winner_at_every_batch_size_is_said_once():
    cells = table(
        cell("A", batch=1, tpot_ms=10, tok_s=100),
        cell("B", batch=1, tpot_ms=15, tok_s=66),
        cell("A", batch=4, tpot_ms=12, tok_s=330),
        cell("B", batch=4, tpot_ms=18, tok_s=220),
    )
    (model,) = verdict(cells).models
    assert model.sentences[-1] == "A bf16 has the lowest TPOT p50 at every batch size compared (1, 4)."


def test_a_tie_at_one_batch_size_breaks_the_run_of_winners():
    cells = table(
        cell("A", batch=1, tpot_ms=10, tok_s=100),
        cell("B", batch=1, tpot_ms=15, tok_s=66),
        cell("A", batch=4, tpot_ms=12, tok_s=330, noise=0.2),
        cell("B", batch=4, tpot_ms=12.5, tok_s=320, noise=0.2),
        cell("A", batch=16, tpot_ms=30, tok_s=530),
        cell("B", batch=16, tpot_ms=20, tok_s=800),
    )
    (model,) = verdict(cells).models
    assert model.sentences[-1] == (
        "The fastest configuration (lowest TPOT p50) changes with batch size: "
        "A bf16 at batch 1, no clear winner at batch 4, B bf16 from batch 16."
    )


def test_one_repeat_ranks_but_says_the_noise_is_unknown():
    cells = table(cell("A", tpot_ms=10, tok_s=100, noise=np.nan), cell("B", tpot_ms=10.2, tok_s=98, noise=np.nan))
    (model,) = verdict(cells).models
    assert model.latency.decisive and not model.latency.noise_known
    assert "Only one repeat ran, so run-to-run noise is unknown" in model.sentences[0]


def test_models_are_judged_separately():
    cells = table(
        cell("A", tpot_ms=5, tok_s=200, model="tiny"),
        cell("B", tpot_ms=7, tok_s=140, model="tiny"),
        cell("A", tpot_ms=90, tok_s=11, model="big"),
        cell("B", tpot_ms=60, tok_s=16, model="big"),
    )
    result = verdict(cells)
    winners = {m.model: m.latency.best.engine for m in result.models}
    assert winners == {"big": "B", "tiny": "A"}


def test_failures_and_roofline_flags_lead_the_verdict():
    cells = table(
        cell("A", tpot_ms=5, tok_s=200, mbu_measured=0.62, mbu=0.55, roofline_flag=None),
        cell("B", tpot_ms=7, tok_s=140, mbu_measured=1.4, mbu=1.2, roofline_flag="MBU 1.40 > 1.0 vs measured peak"),
        failed(engine="C"),
    )
    result = verdict(cells)
    assert result.overall[0] == "1 of 3 cells produced no numbers (1 error); the reasons are listed below."
    assert "1 cell(s) are flagged by the roofline check" in result.overall[1] and "B/m/bf16/bs1" in result.overall[1]
    assert "A/m/bf16/bs1" not in result.overall[1]
    latency = result.models[0].sentences[0]
    assert "Memory bandwidth utilization: 62% of the measured peak, 55% of the datasheet peak." in latency


def test_the_verdict_names_a_few_flagged_cells_and_counts_the_rest():
    rows = [cell("A", batch=b, tok_s=100 + b, roofline_flag="MBU 1.2") for b in range(1, 9)]
    flags = verdict(table(*rows)).overall[0]
    assert flags.startswith("8 cell(s) are flagged") and "A/m/bf16/bs5 and 3 more." in flags
    assert "bs6" not in flags


def test_a_saturated_client_is_named_in_the_verdict():
    cells = table(
        cell("vllm_server", tok_s=900, client_saturated=True),
        cell("vllm", tok_s=800),
        cell("llama_cpp_server", tok_s=700, client_saturated=False),
    )
    notes = [s for s in verdict(cells).overall if "client" in s]
    assert len(notes) == 1 and notes[0].startswith("1 server cell(s) were measured by a client busy over 90%")
    assert "vllm_server/m/bf16/bs1" in notes[0] and "llama_cpp_server" not in notes[0]
    assert not [s for s in verdict(table(cell("A"), cell("B"))).overall if "client" in s]


def searched(engine, found, missed, over="concurrency", reason=None, why=None):
    column = "slo_max_concurrency" if over == "concurrency" else "slo_max_rate"
    return cell(engine=engine, slo="p90 TPOT <= 31 ms", slo_met=True, slo_attainment=1.0, goodput_tok_s=100.0,
                slo_search_cell=f"{engine}/m/bf16/bs1", **{column: found}, slo_search_missed_at=missed,
                slo_search_probes=9, slo_search_reason=reason, slo_search_missed_why=why)  # fmt: skip


def search_sentences(*rows) -> list[str]:
    return [s for m in verdict(table(*rows)).models for s in m.sentences if s.startswith("Load within")]


def test_more_load_within_the_slo_is_claimed_only_where_the_other_missed():
    # A met the SLO at 11 in flight, where B had missed it (B missed at 8): a ranking
    (ranked,) = search_sentences(searched("A", 11, 12), searched("B", 7, 8, why="1 of 24 requests failed"))
    assert ranked == (
        "Load within the SLO (p90 TPOT <= 31 ms): A bf16 carries the most, 11 requests in flight, against 7 for "
        "B bf16, which missed the SLO at 8 (1 of 24 requests failed)."
    )
    # rates known to within a step: A's answer (13.2) is below where B missed (13.5): no ranking
    (tie,) = search_sentences(searched("A", 13.2, 14, over="rate"), searched("B", 13.0, 13.5, over="rate"))
    assert "cannot be told apart at the search's step" in tie and "carries the most" not in tie
    (none,) = search_sentences(searched("A", np.nan, 1, reason="even the smallest load (concurrency 1) misses"))
    assert none.endswith("no configuration meets it even at the smallest load searched.")


def test_box_stats_follow_tukey():
    stats = box_stats([1, 2, 3, 4, 5, 6, 7, 8, 100])
    assert (stats.q1, stats.median, stats.q3) == (3, 5, 7)
    assert (stats.low, stats.high, stats.outliers) == (1, 8, [100])  # 100 is past q3 + 1.5 IQR = 13


def test_pareto_front_keeps_only_undominated_points():
    throughput = pd.Series([100, 200, 150, 300, 300, 50])
    latency = pd.Series([10, 20, 30, 40, 45, 5])
    # 150 tok/s at 30 ms is beaten by 200 at 20; 300 at 45 by 300 at 40.
    assert pareto_front(throughput, latency).tolist() == [True, True, False, True, False, True]


# --- rendering ----------------------------------------------------------------------------


def plot_keys(page: str) -> set[str]:
    return set(re.findall(r'<figure id="plot-([a-z_]+)">', page))


def expected_plots(cells: pd.DataFrame) -> set[str]:
    """The four plots of every run with measured cells, and the roofline two where cells.csv has their columns."""
    keys = {"tpot_vs_batch", "throughput_vs_batch", "ttft_distribution", "latency_vs_throughput"}
    if "flops_per_token" in cells and cells["flops_per_token"].notna().any():
        keys |= {"roofline"}
    if "achieved_bandwidth_gbs" in cells and cells["achieved_bandwidth_gbs"].notna().any():
        keys |= {"bandwidth"}
    if "fidelity_status" in cells and (cells["fidelity_status"] == "ok").any():
        keys |= {"fidelity"}
    return keys


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory, models_dir):
    """The smoke matrix, really run: its cells.csv and requests.csv."""
    workdir = tmp_path_factory.mktemp("report-smoke")
    run = run_snakemake(
        workdir, "--cores", "2", "--config", "matrix=smoke", f"models_dir={models_dir}", "tracking=false"
    )
    assert run.returncode == 0, run.stderr[-3000:]
    results = workdir / "results/smoke"
    return results / "cells.csv", results / "requests.csv"


@pytest.fixture(scope="session")
def smoke_report(smoke_run, tmp_path_factory):
    cells_csv, requests_csv = smoke_run
    out = tmp_path_factory.mktemp("report") / "smoke"
    args = ["--cells", str(cells_csv), "--requests", str(requests_csv)]
    assert report_main([*args, "--matrix-file", str(REPO / "conf/matrix/smoke.yaml"), "--out", str(out)]) == 0
    return out, pd.read_csv(cells_csv)


@pytest.mark.workflow
def test_report_from_a_real_smoke_run(smoke_report):
    out, cells = smoke_report
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "report.md"]  # no temp file left behind
    page = (out / "index.html").read_text()
    markdown = (out / "report.md").read_text()
    ok = cells[cells.status == "ok"]
    assert len(ok) == 2, f"the smoke run must measure its cells to test the report: {cells.error.tolist()}"
    for row in cells.itertuples():
        assert f'data-cell-id="{row.cell_id}"' in page and row.cell_id in markdown
    # The numbers in the table are the cells' own.
    for row in ok.itertuples():
        assert f"{row.tpot_s_p50 * 1000:.3g}" in page
    assert plot_keys(page) == expected_plots(cells)
    plots = re.findall(r'<img class="plot" src="data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(plots) == len(expected_plots(cells))
    for plot in plots:
        assert base64.b64decode(plot).startswith(b"<?xml")
    # Self-contained: nothing is fetched from anywhere.
    assert not re.search(r'(src|href)="(https?:)?//', page) and "@import" not in page
    assert "Single stream (batch 1): only hf bf16 was measured" in page
    assert "Most throughput: hf bf16 at batch 2" in page or "Most throughput: hf bf16 at batch 1" in page
    assert "Only one repeat ran" in page  # the smoke matrix runs one repeat
    assert "workload.output_tokens: 8" in page and "workload.output_tokens: 8" in markdown
    assert markdown.startswith("# llm-infer-bench report: smoke") and "## Verdict" in markdown
    # the smoke run's hf bf16 instance ran its fidelity pass against hf fp32
    assert "fidelity" in plot_keys(page) and 'id="fidelity-table"' in page and "## Precision fidelity" in markdown


def test_a_sweep_where_every_cell_failed_still_renders(tmp_path):
    cells_csv = tmp_path / "cells.csv"
    table(failed("error", "CUDA out of memory at batch 64"), failed("timeout", "past 600 s", batch=2)).to_csv(
        cells_csv, index=False
    )
    write_report(cells_csv, None, cells_csv, tmp_path / "out")
    page = (tmp_path / "out/index.html").read_text()
    assert "No cell succeeded (1 error, 1 timeout)" in page
    assert '<table id="failures-table">' in page and "CUDA out of memory at batch 64" in page
    assert 'id="plots"' not in page  # nothing measured, nothing plotted
    assert "past 600 s" in (tmp_path / "out/report.md").read_text()


def test_cli_help_and_a_bad_table(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        report_main(["--help"])
    assert exit_info.value.code == 0
    assert "--matrix-file" in capsys.readouterr().out
    bad = tmp_path / "cells.csv"
    bad.write_text("a,b\n1,2\n")
    matrix = tmp_path / "m.yaml"
    matrix.write_text("engine: [hf]\n")
    assert report_main(["--cells", str(bad), "--matrix-file", str(matrix), "--out", str(tmp_path / "r")]) == 1
    assert "missing columns: cell_id, engine" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_the_roofline_plots_appear_only_with_roofline_columns():
    plain = table(cell("A"), cell("B", tpot_ms=12))
    assert not {"roofline", "bandwidth"} & {p.key for p in all_plots(plain, pd.DataFrame())}
    bars = plain.assign(achieved_bandwidth_gbs=[40.0, 33.0], peak_bandwidth_measured_gbs=[50.0, 50.0])
    assert {p.key for p in all_plots(bars, pd.DataFrame())} >= {"bandwidth"}
    roofline = bars.assign(flops_per_token=[2e8, 2e8], bytes_per_step=[2e8, 2e8], peak_tflops_measured=[1.0, 1.0])
    assert {p.key for p in all_plots(roofline, pd.DataFrame())} >= {"roofline", "bandwidth"}


def test_the_roofline_plot_has_one_point_per_ok_cell_on_log_axes():
    from pipeline.report.plots import roofline_plot

    cells = table(cell("A", batch=1), cell("A", batch=4, tpot_ms=12), cell("B", tpot_ms=6)).assign(
        flops_per_token=2e8, bytes_per_step=2e8, peak_bandwidth_measured_gbs=30.0, peak_tflops_measured=1.0
    )
    cells.loc[2, "status"] = "error"
    axis = roofline_plot(cells).axes[0]
    points = [c for c in axis.collections if c.get_label().endswith("(decode)")]
    assert sum(len(c.get_offsets()) for c in points) == 2  # the error cell is no point
    assert axis.get_xscale() == axis.get_yscale() == "log"
    assert any("measured peak, bf16: 30 GB/s, 1 TFLOP/s" in line.get_label() for line in axis.lines)


def test_a_flagged_cell_is_shown_as_flagged_not_as_a_success(tmp_path):
    cells = table(
        cell("A", mbu_measured=0.7, achieved_bandwidth_gbs=35.0, roofline_flag=None),
        cell("B", tpot_ms=4, mbu_measured=1.6, achieved_bandwidth_gbs=80.0, roofline_flag="MBU 1.60 > 1.0"),
    )
    cells.to_csv(tmp_path / "cells.csv", index=False)
    write_report(tmp_path / "cells.csv", None, tmp_path / "cells.csv", tmp_path / "out")
    page = (tmp_path / "out/index.html").read_text()
    flagged_row = re.search(r'<tr class="([^"]*)" data-cell-id="B/m/bf16/bs1">(.*?)</tr>', page, re.S)
    assert flagged_row and flagged_row.group(1) == "status-ok flagged"
    assert "<td>ok, flagged</td>" in flagged_row.group(2) and "roofline: MBU 1.60 &gt; 1.0" in flagged_row.group(2)
    assert re.search(r'<tr class="status-ok" data-cell-id="A/m/bf16/bs1">', page)
    assert '<table id="flagged-table">' in page and "MBU (measured peak)" in page and "160.0%" in page
    # B is the fastest single stream: its MBU is not quoted as an achievement.
    assert "Fastest single stream (lowest TPOT p50 at batch 1): B bf16" in page
    assert "Its bandwidth figures are flagged as wrong by the roofline check" in page and "160% of" not in page
    markdown = (tmp_path / "out/report.md").read_text()
    assert "| ok, flagged |" in markdown and "### Flagged by the roofline check" in markdown


# --- escaping -----------------------------------------------------------------------------

HOSTILE_MODEL = '<script>alert("model")</script>$x$'
HOSTILE_ERROR = "<img src=x onerror=alert(1)> | `rm -rf` *bold*"


@pytest.fixture
def hostile_report(tmp_path):
    cells = table(
        cell("A", model=HOSTILE_MODEL, tpot_ms=10, tok_s=100, roofline_flag=None, achieved_bandwidth_gbs=10.0),
        cell('e&"', model=HOSTILE_MODEL, tpot_ms=12, tok_s=90, roofline_flag="<b>MBU</b>", achieved_bandwidth_gbs=9.0),
        failed(engine="C", model=HOSTILE_MODEL, error=HOSTILE_ERROR),
    )
    cells_csv = tmp_path / "cells.csv"
    cells.to_csv(cells_csv, index=False)
    requests = pd.DataFrame({"cell_id": [cells.cell_id[0]] * 3, "success": [True] * 3, "ttft_s": [0.01, 0.02, 0.03]})
    requests.to_csv(tmp_path / "requests.csv", index=False)
    matrix = tmp_path / "hostile.yaml"
    matrix.write_text("engine: [hf]\n# </pre><script>alert('matrix')</script>\n# ```\n")
    write_report(cells_csv, tmp_path / "requests.csv", matrix, tmp_path / "out")
    return tmp_path / "out"


def test_everything_from_the_data_is_escaped(hostile_report):
    page = (hostile_report / "index.html").read_text()
    assert "<script" not in page.lower() and "<img src=x" not in page and "<b>MBU" not in page
    assert "&lt;script&gt;alert(&#34;model&#34;)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page and "&lt;b&gt;MBU&lt;/b&gt;" in page
    assert "e&amp;&#34;/" in page
    assert "&lt;/pre&gt;&lt;script&gt;alert(&#39;matrix&#39;)" in page
    # The model name reaches the plots as text, escaped inside the SVG too.
    svgs = [base64.b64decode(s).decode() for s in re.findall(r"base64,([A-Za-z0-9+/=]+)", page)]
    assert svgs and all("<script" not in svg for svg in svgs)
    assert any("&lt;script&gt;" in svg for svg in svgs)


def test_markdown_escapes_html_and_table_syntax(hostile_report):
    markdown = (hostile_report / "report.md").read_text()
    # The matrix file is shown verbatim, in a fence that its own ``` cannot close (code is not rendered as HTML).
    fence = "````\nengine: [hf]\n# </pre><script>alert('matrix')</script>\n# ```\n````"
    assert fence in markdown
    outside = markdown.replace(fence, "")
    assert "<script" not in outside and "<img" not in outside and "<b>" not in outside
    assert "&lt;img src=x onerror=alert(1)&gt; \\| \\`rm -rf\\` \\*bold\\*" in outside


def test_md_escape_and_fence_helpers():
    assert md_escape("a|b\nc <d> _e_") == "a\\|b c &lt;d&gt; \\_e\\_"
    assert fenced("x") == "```\nx\n```"
    assert fenced("a ```` b") == "`````\na ```` b\n`````"


# --- the page in a real browser -----------------------------------------------------------


def chromium(*args: str, user_data: Path) -> subprocess.CompletedProcess:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={user_data}",
    ]
    return subprocess.run([str(CHROMIUM), *flags, *args], capture_output=True, text=True, timeout=120)


def near(pixels: np.ndarray, rgb: tuple[int, int, int], tolerance: int = 12) -> int:
    return int((np.abs(pixels[..., :3].astype(int) - np.array(rgb)).max(axis=-1) <= tolerance).sum())


@pytest.mark.workflow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is absent (apt-get install chromium)")
def test_the_page_renders_in_chromium(smoke_report, tmp_path):
    from PIL import Image

    out, cells = smoke_report
    url = (out / "index.html").resolve().as_uri()
    dom = chromium("--dump-dom", url, user_data=tmp_path / "profile-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert '<table id="cells-table">' in html
    assert len(re.findall(r"<tr class=\"status-", html)) >= len(cells)
    assert plot_keys(html) == expected_plots(cells)
    assert len(re.findall(r'<img class="plot" src="data:image/svg\+xml', html)) == len(expected_plots(cells))
    assert "<h2>Verdict</h2>" in html

    png = tmp_path / "page.png"
    shot = chromium(f"--screenshot={png}", "--window-size=1280,2000", url, user_data=tmp_path / "profile-shot")
    assert shot.returncode == 0 and png.exists(), shot.stderr[-2000:]
    pixels = np.asarray(Image.open(png).convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # not a blank page
    # The plots drew: matplotlib's first line color (tab:blue) fills visible pixels; the page's CSS has none.
    assert near(pixels, (31, 119, 180)) > 200


@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is absent (apt-get install chromium)")
def test_hostile_data_runs_no_script_in_chromium(hostile_report, tmp_path):
    dom = chromium("--dump-dom", (hostile_report / "index.html").resolve().as_uri(), user_data=tmp_path / "p")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "<script" not in dom.stdout.lower()
    assert "&lt;script&gt;alert" in dom.stdout  # shown as text


def test_python_m_pipeline_report_runs(tmp_path):
    cells_csv = tmp_path / "cells.csv"
    table(cell("A"), cell("B", tpot_ms=20, tok_s=50)).to_csv(cells_csv, index=False)
    run = subprocess.run(
        [sys.executable, "-m", "pipeline.report", "--cells", str(cells_csv), "--matrix-file", str(cells_csv)]
        + ["--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert "Fastest single stream (lowest TPOT p50 at batch 1): A bf16" in (tmp_path / "out/index.html").read_text()


def _precision_cells(tpot_bf16: float, noise: float = 0.02) -> pd.DataFrame:
    rows = [
        {
            "cell_id": f"hf/m/{p}/bs1",
            "engine": "hf",
            "model": "m",
            "precision": p,
            "batch_size": 1,
            "status": "ok",
            "tpot_s_p50": t,
            "output_tok_s": 1 / t,
            **intervals(t, 1 / t, noise),
            "bytes_per_step": b,
        }
        for p, t, b in (("fp32", 0.040, 4e8), ("bf16", tpot_bf16, 2e8))
    ]
    return pd.DataFrame(rows)


def test_precision_sentence_states_the_bandwidth_argument_only_when_the_data_does():
    from pipeline.report.verdict import precision_sentences

    (faster,) = precision_sentences(_precision_cells(0.025))
    assert "bf16 reads 2.0x fewer bytes per decode step than fp32 and its TPOT is 1.6x lower" in faster
    (slower,) = precision_sentences(_precision_cells(0.060))
    assert "yet its TPOT is 1.5x higher" in slower
    (tied,) = precision_sentences(_precision_cells(0.039, noise=0.05))
    assert "cannot be told apart" in tied
    assert precision_sentences(_precision_cells(0.025).drop(columns="bytes_per_step")) == []


def test_the_slo_sentence_names_who_meets_it_and_claims_no_ranking():
    slo = {"slo": "p90 TPOT <= 50 ms"}
    cells = pd.DataFrame(
        [
            cell("A", batch=1, **slo, slo_met=True, slo_attainment=1.0, goodput_tok_s=90.0),
            cell("A", batch=8, **slo, slo_met=True, slo_attainment=0.95, goodput_tok_s=600.0),
            cell("B", batch=8, **slo, slo_met=False, slo_attainment=0.5, goodput_tok_s=700.0),
        ]
    )
    (model,) = verdict(cells).models
    (sentence,) = [s for s in model.sentences if s.startswith("SLO")]
    assert "SLO (p90 TPOT <= 50 ms): met by 2 of 3 cells; the most goodput among them: A bf16 at batch 8" in sentence
    assert "600 tok/s of output within the targets (95% of its requests)" in sentence and "not a ranking" in sentence
    nobody = cells.assign(slo_met=False)
    assert "no cell meets it (best attainment 100%)" in " ".join(verdict(nobody).models[0].sentences)
    assert not [s for s in verdict(pd.DataFrame([cell("A")])).models[0].sentences if s.startswith("SLO")]


def fidelity(top1: float, kl: float, status: str = "ok", noise: float = 0.1, **extra) -> dict:
    return {
        "fidelity_status": status,
        "fidelity_top1": top1,
        "fidelity_top1_low": max(top1 - 0.01, 0),
        "fidelity_top1_high": min(top1 + 0.01, 1),
        "fidelity_kl_mean": kl,
        "fidelity_kl_mean_low": kl * (1 - noise),
        "fidelity_kl_mean_high": kl * (1 + noise),
        "fidelity_budget_top1": 0.99,
        **extra,
    }


def test_the_fastest_precision_within_the_fidelity_budget():
    cells = table(
        cell("A", "fp32", tpot_ms=10.0, **fidelity(1.0, 1e-12)),
        cell("A", "bf16", tpot_ms=6.0, **fidelity(0.995, 1e-6)),
        cell("A", "int4", tpot_ms=3.0, **fidelity(0.6, 1e-2)),
        cell("B", "fp32", tpot_ms=12.0, **fidelity(0.999, 1e-11)),
    )
    sentences = verdict(cells).sentences
    within = next(s for s in sentences if s.startswith("Within the fidelity budget"))
    assert "(top-1 agreement with hf fp32 at least 99.0%) the fastest at batch 1 is A bf16" in within
    assert "ahead of A fp32" in within and "Faster but outside the budget: A int4 (60.0%" in within
    assert any(s.startswith("Correctness: the same model at fp32 through other engines") and "B 99.9%" in s
               for s in sentences)  # fmt: skip
    assert "fidelity" in {p.key for p in all_plots(cells, pd.DataFrame(columns=["cell_id"]))}


def test_fidelity_claims_nothing_the_data_does_not_support():
    overlapping = table(
        cell("A", "fp32", tpot_ms=10.0, noise=0.3, **fidelity(1.0, 1e-12)),
        cell("A", "bf16", tpot_ms=9.0, noise=0.3, **fidelity(0.995, 1e-6)),
    )
    within = next(s for s in verdict(overlapping).sentences if s.startswith("Within the fidelity budget"))
    assert "cannot be ranked between" in within and "is A" not in within
    none_within = table(cell("A", "int4", **fidelity(0.6, 1e-2)), cell("A", "int8", **fidelity(0.9, 1e-3)))
    (said,) = [s for s in verdict(none_within).sentences if "fidelity budget" in s]
    assert said.startswith("No configuration stays within the fidelity budget") and "closest is A int8 (90.0%" in said
    broken = table(cell("B", "fp32", **fidelity(0.4, 0.5, status="failed", fidelity_reason="the export is wrong")))
    assert any(s == "Fidelity check failed for B fp32: the export is wrong" for s in verdict(broken).sentences)
    unsupported = table(cell("C", "bf16", fidelity_status="unsupported", fidelity_reason="no logits"))
    assert not [s for s in verdict(unsupported).sentences if "fidelity" in s.lower()]
    assert "fidelity" not in {p.key for p in all_plots(unsupported, pd.DataFrame(columns=["cell_id"]))}
