"""The load search (pipeline.run.load_search): against a stand-in server with a known load law
(tests/fake_openai_server.py --itl-per-other), and its rules on constructed probes."""

import re

import pytest

from pipeline.config import ConfigError, SearchConfig, SloConfig, WorkloadConfig
from pipeline.engines.client import Load, Target, parse_response, run_load
from pipeline.run.load_search import judge, search_load
from pipeline.run.measure import request_record
from tests.test_client import completion, start_fake_server

# The stand-in's law: TPOT = 10 ms + 2 ms per other request in flight when a request arrives. At
# concurrency c every request after the first wave arrives with c - 1 others in flight: TPOT
# 10 + 2 (c - 1) ms, so a p90 TPOT SLO of 31 ms holds up to c = 11 (30 ms) and not at 12 (32 ms).
LAW = ("--ttft", "0.02", "--itl", "0.010", "--itl-per-other", "0.002")
SLO = SloConfig(tpot_s=0.031, percentile=90)
OUTPUT_TOKENS = 8


def probe_through_the_client(url: str, search: SearchConfig):
    target = Target.from_base_url(url + "/v1")

    def probe(load: float, index: int) -> list[dict]:
        count = max(8, 3 * int(load))
        prompts = [completion(OUTPUT_TOKENS, prompt=[index, i, *range(4, 20)]) for i in range(count)]
        run = run_load(target, [target.request_bytes(p) for p in prompts], Load(concurrency=int(load)))
        return [request_record(parse_response(raw).result, lambda text: 0, 18) for raw in run.responses]

    return probe


def test_search_finds_the_stand_in_servers_limit():
    search = SearchConfig(over="concurrency", max=64)
    process, url = start_fake_server(*LAW)
    try:
        messages = []
        found = search_load(probe_through_the_client(url, search), search, SLO, messages.append)
    finally:
        process.kill()
        process.wait()
    loads = [p["load"] for p in found["points"]]
    assert found["result"] == 11 and found["missed_at"] == 12 and found["reason"] is None, messages
    # bracketing 1, 2, 4, 8, 16; bisection 12, 10, 11; the boundary once more
    assert loads == [1, 2, 4, 8, 16, 12, 10, 11, 11] and found["probes"] == 9
    assert [p["phase"] for p in found["points"]][-1] == "remeasure"
    boundary = found["boundary"]
    assert boundary["met"] and boundary["requests"] == 2 * 33  # both probes at 11, pooled
    # the boundary's p90 TPOT is the law's 30 ms, with its interval
    assert boundary["tpot_s_slo_pct"] == pytest.approx(0.030, abs=0.001)
    assert boundary["tpot_s_slo_pct_low"] <= boundary["tpot_s_slo_pct"] <= boundary["tpot_s_slo_pct_high"]
    missed = [p for p in found["points"] if p["load"] == 12][0]
    assert not missed["met"] and "within tpot_s <= 31 ms" in missed["why"]


def records(tpot_s: float, count: int = 20, failed: int = 0) -> list[dict]:
    ok = [{"success": True, "ttft_s": 0.01, "tpot_s": tpot_s, "e2e_s": 0.1, "output_tokens": 8,
           "t_send": i * 0.1, "t_end": i * 0.1 + 0.1, "repeat": 0} for i in range(count - failed)]  # fmt: skip
    return ok + [{"success": False, "ttft_s": None, "tpot_s": None, "e2e_s": None, "output_tokens": 0,
                  "t_send": 0.0, "t_end": None, "repeat": 0, "error": "HTTP 500: boom"}] * failed  # fmt: skip


def law(limit: float, flaky: dict | None = None):
    """A probe whose SLO holds up to `limit`; flaky: {load: [met?, ...]} in probe order."""
    flaky = {k: list(v) for k, v in (flaky or {}).items()}

    def probe(load: float, index: int) -> list[dict]:
        met = flaky[load].pop(0) if flaky.get(load) else load <= limit
        return records(0.020 if met else 0.040)

    return probe


def run(search: SearchConfig, probe) -> dict:
    return search_load(probe, search, SloConfig(tpot_s=0.031), progress=lambda message: None)


def test_a_load_that_meets_once_and_misses_when_remeasured_is_not_the_answer():
    found = run(SearchConfig(max=64), law(11, flaky={11: [True, False]}))
    assert found["result"] == 10 and found["missed_at"] == 11
    assert [p["load"] for p in found["points"]][-3:] == [11, 11, 10]  # 11 again (missed), then 10 again (met)


def test_no_answer_when_even_the_smallest_load_misses():
    found = run(SearchConfig(max=64, min=2), law(1))
    assert found["result"] is None and found["probes"] == 1
    assert found["reason"].startswith("even the smallest load (concurrency 2) misses the SLO: 0 of 20 within")


def test_a_limit_above_max_is_reported_as_such():
    found = run(SearchConfig(max=8), law(100))
    assert found["result"] == 8 and found["missed_at"] is None
    assert "held up to search.max (8)" in found["reason"]
    assert [p["load"] for p in found["points"]] == [1, 2, 4, 8]


def test_rate_search_ends_within_one_step():
    found = run(SearchConfig(over="rate", max=40, step=1), law(13.3))
    assert found["missed_at"] - found["result"] <= 1 and found["result"] <= 13.3 < found["missed_at"]
    assert found["points"][0]["load"] == 1.0  # min defaults to one step


def test_failed_requests_miss_the_slo_and_the_search_goes_no_higher():
    def probe(load: float, index: int) -> list[dict]:
        return records(0.020, failed=1 if load >= 4 else 0)

    found = run(SearchConfig(max=64), probe)
    assert found["result"] == 3 and max(p["load"] for p in found["points"]) == 4
    assert found["missed_at"] == 4 and found["missed_why"] == "1 of 20 requests failed"
    assert [p for p in found["points"] if p["load"] == 4][0]["errors"] == "HTTP 500: boom"  # what the client saw


def test_the_probe_cap_stops_the_search_and_says_so():
    found = run(SearchConfig(max=1024, max_probes=5), law(700))
    assert found["probes"] == 5 and found["result"] == 16 and "search.max_probes = 5" in found["reason"]


def test_attainment_and_the_percentile_rule():
    point = judge(records(0.020, count=9) + records(0.040, count=1), SloConfig(tpot_s=0.031, percentile=90))
    assert point["met"] and point["attainment"] == pytest.approx(0.9)  # 9 of 10 within: p90 holds
    point = judge(records(0.020, count=8) + records(0.040, count=2), SloConfig(tpot_s=0.031, percentile=90))
    assert not point["met"] and point["why"] == "8 of 10 within tpot_s <= 31 ms"


@pytest.mark.parametrize(
    "search, slo, message",
    [
        ({"over": "concurrency"}, None, "workload.search looks for the most load that meets an SLO"),
        ({"over": "throughput"}, {"tpot_s": 0.05}, "workload.search.over must be concurrency or rate"),
        ({"max": 10.5}, {"tpot_s": 0.05}, "counts requests in flight: a whole number"),
        ({"min": 20, "max": 10}, {"tpot_s": 0.05}, "min (20) must be <= max (10)"),
        ({"max": -1}, {"tpot_s": 0.05}, "workload.search.max must be a number > 0"),
        ({"maximum": 10}, {"tpot_s": 0.05}, "maximum"),
    ],
)
def test_bad_search_settings_are_refused_with_a_clear_message(search, slo, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        WorkloadConfig(search=search, slo=slo)
