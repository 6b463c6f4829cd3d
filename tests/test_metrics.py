import json

import pytest

from pipeline.analysis.metrics import summarize
from pipeline.engines.base import RequestResult
from pipeline.run.measure import request_record
from pipeline.run.prompts import make_prompts, waves


def count_words_as_tokens(text):
    return len(text.split())


def test_request_record_follows_the_glossary():
    # sent at 10.0; chunks at 10.5, 10.6, 10.8 carrying 1, 2 and 1 tokens
    result = RequestResult(
        t_send=10.0, chunk_times=[10.5, 10.6, 10.8], chunk_tokens=[1, 2, 1], output_tokens=4, text="one two three"
    )
    record = request_record(result, count_words_as_tokens, input_tokens=7)
    assert record["ttft_s"] == pytest.approx(0.5)
    assert record["e2e_s"] == pytest.approx(0.8)
    assert record["tpot_s"] == pytest.approx((0.8 - 0.5) / 3)
    assert json.loads(record["itl_s"]) == pytest.approx([0.1, 0.2])
    assert record["chunks"] == 3 and record["tokens_per_chunk"] == pytest.approx(4 / 3)
    assert record["output_tokens"] == 4 and record["output_tokens_retok"] == 3
    assert record["words"] == 3 and record["input_tokens"] == 7


def test_engine_count_is_used_over_chunk_count():
    result = RequestResult(t_send=0.0, chunk_times=[1.0, 2.0], chunk_tokens=[1, 1], output_tokens=9, text="x")
    assert request_record(result, count_words_as_tokens, 1)["output_tokens"] == 9


def test_a_failed_request_keeps_its_metrics_unmeasured():
    record = request_record(RequestResult(t_send=0.0, success=False, error="HTTP 500"), count_words_as_tokens, 1)
    assert record["success"] is False and record["error"] == "HTTP 500"
    assert record["ttft_s"] is None and record["tpot_s"] is None and record["e2e_s"] is None


def test_no_tokens_is_a_failure_not_a_zero():
    record = request_record(RequestResult(t_send=0.0), count_words_as_tokens, 1)
    assert record["success"] is False and record["ttft_s"] is None


def _record(repeat, t_send, ttft, e2e, tokens=5, words=2):
    return {
        "success": True,
        "repeat": repeat,
        "t_send": t_send,
        "t_end": t_send + e2e,
        "ttft_s": ttft,
        "e2e_s": e2e,
        "tpot_s": (e2e - ttft) / (tokens - 1),
        "itl_s": json.dumps([0.1] * (tokens - 1)),
        "output_tokens": tokens,
        "output_tokens_retok": tokens,
        "tokens_per_chunk": 1.0,
        "words": words,
    }


def test_summary_throughput_and_percentiles():
    records = [
        _record(0, 0.0, 0.1, 1.0),
        _record(0, 1.0, 0.3, 1.0),  # repeat 0: window 0..2 s, 10 tokens
        _record(1, 5.0, 0.2, 0.5),
    ]  # repeat 1: window 0.5 s, 5 tokens
    records.append({**_record(1, 5.0, 0, 0), "success": False, "ttft_s": None, "e2e_s": None})
    figures = summarize(records)
    assert figures["requests"] == 4 and figures["requests_ok"] == 3 and figures["requests_failed"] == 1
    assert figures["output_tok_s"] == pytest.approx(15 / 2.5)
    assert figures["req_s"] == pytest.approx(3 / 2.5)
    assert json.loads(figures["output_tok_s_repeats"]) == pytest.approx([5.0, 10.0])
    assert figures["output_tok_s_spread"] == pytest.approx((10 - 5) / 7.5)
    assert figures["ttft_s_p50"] == pytest.approx(0.2)
    assert figures["ttft_s_mean"] == pytest.approx(0.2)
    assert figures["e2e_s_p90"] == pytest.approx(1.0)
    assert figures["ms_per_10_words"] == pytest.approx(10_000 * 2.5 / 6)
    assert figures["itl_s_p50"] == pytest.approx(0.1)


def test_summary_of_nothing_measured_is_empty_not_zero():
    figures = summarize([{**_record(0, 0, 0, 0), "success": False}])
    assert figures["output_tok_s"] is None and figures["ttft_s_p50"] is None and figures["ms_per_10_words"] is None


def test_prompts_have_exact_length_and_differ_per_stream():
    a = make_prompts(3, 17, vocab_size=100, seed=0, stream="x")
    assert [len(p) for p in a] == [17, 17, 17]
    assert all(4 <= t < 100 for p in a for t in p)
    assert a == make_prompts(3, 17, vocab_size=100, seed=0, stream="x")
    assert a != make_prompts(3, 17, vocab_size=100, seed=0, stream="y")


@pytest.mark.parametrize(("requests", "batch", "expected"), [(8, 1, 8), (8, 4, 2), (8, 3, 3), (2, 16, 1)])
def test_waves_send_at_least_the_requested_number(requests, batch, expected):
    assert waves(requests, batch) == expected


def _failed(repeat, t_send):
    return {**_record(repeat, t_send, 0.1, 0.5), "success": False, "ttft_s": None, "e2e_s": None, "tpot_s": None}


def test_goodput_counts_only_the_requests_that_meet_every_target():
    from pipeline.config import SloConfig
    from pipeline.stats import slo_figures

    # one repeat, window 0.0 -> 2.0 s; 5 tokens each, TPOT = (e2e - ttft) / 4
    records = [
        _record(0, 0.0, ttft=0.2, e2e=1.0),  # TPOT 0.2: good
        _record(0, 0.5, ttft=0.3, e2e=1.5),  # TPOT 0.3: good
        _record(0, 1.0, ttft=0.9, e2e=1.0),  # TTFT 0.9 misses the TTFT target
        _record(0, 1.0, ttft=0.1, e2e=1.0),  # TPOT 0.225: good; ends at 2.0
        _failed(0, 1.5),  # a failed request meets nothing
    ]
    slo = SloConfig(ttft_s=0.5, tpot_s=0.3, percentile=50)
    figures = slo_figures(records, slo)
    assert figures["slo"] == "p50 TTFT <= 500 ms, TPOT <= 300 ms"
    assert figures["slo_attainment"] == pytest.approx(3 / 5)
    assert figures["goodput_req_s"] == pytest.approx(3 / 2.0) and figures["goodput_tok_s"] == pytest.approx(15 / 2.0)
    # 3 of 5 within the TTFT target, 4 of 5 within the TPOT one: at least 50% each
    assert figures["slo_met"] is True
    assert slo_figures(records, SloConfig(ttft_s=0.5, percentile=90))["slo_met"] is False  # 60% < 90%
    assert slo_figures(records, None) == {}
    # a discarded repeat (an outlier first repeat) is out of the SLO figures as of every other
    discarded = [{**r, "discarded": True} for r in records[:2]]
    assert slo_figures(discarded + records[2:], slo)["slo_attainment"] == pytest.approx(1 / 3)
