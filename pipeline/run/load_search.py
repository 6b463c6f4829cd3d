"""The most load that meets the SLO (workload.search), inside one running engine instance.

Method: each probe sends `requests` requests at one load (concurrency: that many in flight,
closed loop; rate: Poisson arrivals, open loop) and meets the SLO when, for every target, at
least `percentile`% of its requests are within it and none failed (pipeline.stats.slo_figures,
the rule collect applies to cells).
1. Bracket: probe `min`; if it misses, there is no answer. Then double the load until a probe
   misses or `max` holds.
2. Bisect between the largest load that met and the smallest that missed, until they are one
   `step` apart.
3. Re-measure the boundary: the largest load that met is probed again. If it misses now, the
   first probe was luck: it becomes the smallest miss and the bisection resumes below it (at
   most twice). The answer is a load that met the SLO every time it was probed.
No probe ever goes above a load that missed or failed, so an overloaded engine is not pushed
further. The boundary's figures come with their 95% interval (bootstrap: its probes, then the
requests within each, resampled); every probe is recorded (`points`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np

from pipeline.config import SLO_TARGETS, SearchConfig, SloConfig
from pipeline.stats import bootstrap_interval, by_repeat, count_within, slo_figures, target_holds

REMEASURES = 2


def probe_requests(search: SearchConfig, load: float, num_requests: int) -> int:
    """Requests per probe: enough that most of them arrive with the load already in flight."""
    return search.requests or max(num_requests, math.ceil(3 * load))


def judge(records: list[dict], slo: SloConfig) -> dict:
    """One probe's (or one load's pooled) figures against the SLO."""
    ok = [r for r in records if r["success"]]
    figures = slo_figures(records, slo)
    failed = len(records) - len(ok)
    point = {
        "requests": len(records),
        "failed": failed,
        "met": bool(figures["slo_met"]) and failed == 0,
        "attainment": figures["slo_attainment"],
        "goodput_req_s": figures["goodput_req_s"],
        "goodput_tok_s": figures["goodput_tok_s"],
    }
    misses = [f"{failed} of {len(records)} requests failed"] if failed else []
    point["errors"] = "; ".join(dict.fromkeys(str(r.get("error"))[:200] for r in records if not r["success"])) or None
    for key in SLO_TARGETS:
        values = [r[key] for r in ok if r[key] is not None]
        point[f"{key}_p50"] = float(np.percentile(values, 50)) if values else None
        point[f"{key}_slo_pct"] = float(np.percentile(values, slo.percentile)) if values else None
        if key in slo.targets:
            probes = by_repeat([r for r in ok if r[key] is not None])  # pooled probes at one load: two levels
            groups = [[r[key] for r in rows] for rows in probes.values()]
            interval = bootstrap_interval(groups, slo.percentile) if values else None
            point[f"{key}_slo_pct_low"], point[f"{key}_slo_pct_high"] = interval[1:] if interval else (None, None)
            target = slo.targets[key]
            if not target_holds(records, key, target, slo.percentile):
                within = count_within(records, key, target)
                misses.append(f"{within} of {len(records)} within {key} <= {target * 1e3:.4g} ms")
    point["why"] = "; ".join(misses) or None
    return point


def search_load(
    probe: Callable[[float, int], list[dict]], search: SearchConfig, slo: SloConfig, progress=print
) -> dict:
    """probe(load, index) -> that probe's request records. The result: the largest load that met
    the SLO (None with a reason when even `min` misses), the smallest that missed, every probe."""
    integer = search.over == "concurrency"
    snap = int if integer else float  # concurrency counts requests
    step, lowest, highest = search.resolution, snap(search.lowest), snap(search.max)
    points: list[dict] = []
    records_at: dict[float, list[dict]] = {}
    started = time.perf_counter()
    stop: str | None = None

    def can_probe() -> bool:
        nonlocal stop
        if len(points) >= search.max_probes:
            stop = f"the probe cap (search.max_probes = {search.max_probes}) was reached"
        elif time.perf_counter() - started >= search.budget_s:
            stop = f"the search's time budget (search.budget_s = {search.budget_s:g} s) ran out"
        return stop is None

    def at(load: float, phase: str) -> bool:
        load = snap(load)
        probe_started = time.perf_counter()
        records = probe(load, len(points))
        for record in records:  # each probe is its own window, like a repeat
            record["repeat"] = len(points)
        records_at.setdefault(load, []).extend(records)
        point = {"probe": len(points), "load": load, "phase": phase, **judge(records, slo)}
        point["wall_s"] = time.perf_counter() - probe_started
        points.append(point)
        verdict = "meets the SLO" if point["met"] else f"misses ({point['why']})"
        progress(f"search probe {len(points)} ({phase}): {search.over} {load:g} {verdict}")
        return point["met"]

    def always_met(load: float) -> bool:
        return all(p["met"] for p in points if p["load"] == load)

    def bracket_and_bisect() -> tuple[float | None, float | None]:
        good: float | None = None
        bad: float | None = None
        if at(lowest, "bracket"):
            good = lowest
        while good is not None and bad is None and good < highest and can_probe():
            load = min(highest, good * 2)
            if at(load, "bracket"):
                good = load
            else:
                bad = load
        remeasured = 0
        while good is not None and bad is not None:
            while bad - good > step * (1 + 1e-9) and can_probe():
                middle = (good + bad) // 2 if integer else (good + bad) / 2
                if at(middle, "bisect"):
                    good = middle
                else:
                    bad = middle
            if stop is not None or remeasured >= REMEASURES or not can_probe():
                break
            remeasured += 1
            if at(good, "remeasure"):
                break
            bad = good
            held = [load for load in records_at if load < good and always_met(load)]
            good = max(held) if held else None
        return good, bad

    failure = None
    try:
        good, bad = bracket_and_bisect()
    except Exception as exc:  # a server that dies mid-search costs the search, not the cell's repeats
        good = bad = None
        failure = f"the search failed at probe {len(points) + 1}: {type(exc).__name__}: {exc}"

    if failure is not None:
        reason = failure
    elif good is None:
        first = points[0]
        reason = (
            f"even the smallest load ({search.over} {lowest:g}) misses the SLO: {first['why']}"
            if not first["met"]
            else f"the smallest load ({search.over} {lowest:g}) met the SLO once, then missed it when re-measured"
        )
    elif bad is None:
        reason = stop or f"the SLO held up to search.max ({highest:g}): the limit is higher"
    else:
        reason = stop  # None: found to within one step
    result = {
        "over": search.over,
        "slo": slo.describe(),
        "targets": slo.targets,
        "percentile": slo.percentile,
        "search": search.describe(),
        "result": good,
        "missed_at": bad,
        "missed_why": next((p["why"] for p in reversed(points) if p["load"] == bad), None),
        "reason": reason,
        "probes": len(points),
        "wall_s": time.perf_counter() - started,
        "points": points,
        "boundary": {"load": good, **judge(records_at[good], slo)} if good is not None else None,
    }
    found = f"{search.over} {good:g}" if good is not None else "none"
    note = f"; {reason}" if reason else ""
    progress(f"search: the most load meeting {slo.describe()} is {found} ({len(points)} probes){note}")
    return result
