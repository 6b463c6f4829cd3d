"""The report's verdict, in plain words, from cells.csv alone (pure functions: a DataFrame in, words out).

Candidates are compared within one model, and a ranking is only claimed when the 95%
intervals separate (pipeline.report.ranking states the rule); every figure ranked is shown
with its interval.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import pandas as pd

from pipeline.analysis.metrics import as_number
from pipeline.report.ranking import LATENCY, THROUGHPUT, Candidate, Ranking, candidates, indistinguishable, rank
from pipeline.stats import trending

ROOFLINE_FLAG = "roofline_flag"
FLAGS_NAMED = 5  # the verdict names this many flagged cells; the table lists them all
DEFAULT_BUDGET = 0.99  # workload.fidelity.min_top1's default, for a cells.csv that does not say


@dataclass
class ModelVerdict:
    model: str
    latency: Ranking | None = None  # lowest TPOT p50 at batch 1
    throughput: Ranking | None = None  # most output tok/s, any batch size
    by_batch: dict[int, Ranking] = field(default_factory=dict)  # lowest TPOT p50 at each batch size
    sentences: list[str] = field(default_factory=list)


@dataclass
class Verdict:
    overall: list[str] = field(default_factory=list)
    models: list[ModelVerdict] = field(default_factory=list)

    @property
    def sentences(self) -> list[str]:
        return self.overall + [s for m in self.models for s in m.sentences]


def flag_text(value) -> str:
    """A roofline flag as text; empty (None, NaN, blank) means not flagged."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).strip()


def significant(value: float) -> str:
    """Three significant digits, without exponents: 0.0123, 4.56, 789, 1235."""
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _ms(seconds: float) -> str:
    return f"{significant(seconds * 1000)} ms"


def _tok_s(value: float) -> str:
    return f"{significant(value)} tok/s"


def _percent(value: float, decimals: int = 0) -> str:
    return f"{value * 100:.{decimals}f}%"


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _unknown_noise_note(ranking: Ranking) -> str:
    if ranking.noise_known or not ranking.contested:
        return ""
    return " Only one repeat ran, so run-to-run noise is unknown and this ranking is unchecked."


INTERVALS_NOTE = " Brackets: 95% intervals."


def with_interval(candidate: Candidate, show) -> str:
    """'23.4 ms [23.1-23.8 ms]': a value with its 95% interval, where known."""
    if not candidate.interval_known:
        return show(candidate.value)
    return f"{show(candidate.value)} [{show(candidate.low).split()[0]}-{show(candidate.high)}]"


def _intervals_note(*shown: Candidate) -> str:
    return INTERVALS_NOTE if any(c.interval_known for c in shown) else ""


def _tie_clause(ranking: Ranking, show, name) -> str:
    group = (ranking.best, *ranking.tied)
    names = _and([f"{name(c)} ({with_interval(c, show)})" for c in group])
    gap = abs(ranking.tied[-1].value - ranking.best.value) / ranking.best.value
    return (
        f"cannot be ranked between {names}: they differ by {_percent(gap, 1)}, "
        "but their 95% intervals overlap, so at this noise they cannot be told apart."
    ) + _intervals_note(*group)


def _roofline_note(cells: pd.DataFrame, cell_id: str) -> str:
    row = cells[cells["cell_id"] == cell_id].iloc[0]
    if flag_text(row.get(ROOFLINE_FLAG)):
        return " Its bandwidth figures are flagged as wrong by the roofline check (see the table)."
    parts = []
    for column, against in (("mbu_measured", "the measured"), ("mbu", "the datasheet")):
        mbu = as_number(row.get(column))
        if mbu is None:
            continue
        low, high = as_number(row.get(f"{column}_low")), as_number(row.get(f"{column}_high"))
        shown = f"{_percent(mbu)} [{_percent(low)[:-1]}-{_percent(high)}]" if low and high else _percent(mbu)
        parts.append(f"{shown} of {against} peak")
    return f" Memory bandwidth utilization: {', '.join(parts)}." if parts else ""


# The notebook's recipe, per bound (pipeline.analysis.diagnosis labels the cells).
RECIPE = {
    "overhead": "compiling away the per-step overhead (operator fusion, torch.compile, CUDA graphs) or an engine "
    "with less of it would help; fewer bytes would not",
    "bandwidth": "fewer bytes per step would help (a lower precision, fused kernels that read the weights once); "
    "more FLOP/s would not",
    "slow kernels": "kernels that read the weights closer to the peak bandwidth would help (another engine or "
    "backend); removing fixed overhead would gain little",
    "compute": "more FLOP/s would help (a faster chip, lower-precision math); a larger batch would add little "
    "throughput",
}


def bound_note(cells: pd.DataFrame, cell_id: str) -> str:
    """What bounds this cell and what would help, where the diagnosis says."""
    if "bound" not in cells:
        return ""
    row = cells[cells["cell_id"] == cell_id].iloc[0]
    bound, evidence = row.get("bound"), row.get("bound_evidence")
    if not isinstance(bound, str) or bound not in RECIPE:
        return ""
    recipe = RECIPE["slow kernels" if "slow kernels" in str(evidence) else bound]
    return f" It is {bound} bound ({evidence}): {recipe}."


def latency_sentence(ranking: Ranking | None, cells: pd.DataFrame) -> str:
    if ranking is None:
        return "No batch-1 cell succeeded, so single-stream latency (TPOT at batch 1) was not measured."
    best = ranking.best
    if not ranking.contested:
        text = f"Single stream (batch 1): only {best.config} was measured, {_ms(best.value)} per output token."
    elif ranking.decisive:
        other = ranking.runner_up
        text = (
            f"Fastest single stream (lowest TPOT p50 at batch 1): {best.config}, {with_interval(best, _ms)} per "
            f"output token, {_percent(1 - best.value / other.value)} less than the next, {other.config} "
            f"({with_interval(other, _ms)})."
        ) + _intervals_note(best, other)
    else:
        text = "Fastest single stream (TPOT p50 at batch 1) " + _tie_clause(ranking, _ms, lambda c: c.config)
    # The roofline figures describe the winner: with a tie there is none.
    roofline = _roofline_note(cells, best.cell_id) + bound_note(cells, best.cell_id) if ranking.decisive else ""
    return text + _unknown_noise_note(ranking) + roofline


def throughput_sentence(ranking: Ranking | None) -> str | None:
    if ranking is None:
        return None
    best = ranking.best
    if not ranking.contested:
        text = f"Throughput: only {best.label} was measured, {_tok_s(best.value)} of output."
    elif ranking.decisive:
        other = ranking.runner_up
        text = (
            f"Most throughput: {best.label}, {with_interval(best, _tok_s)} of output, "
            f"{_percent(best.value / other.value - 1)} more than the next, {other.label} "
            f"({with_interval(other, _tok_s)})."
        ) + _intervals_note(best, other)
    else:
        text = "Most throughput " + _tie_clause(ranking, _tok_s, lambda c: c.label)
    return text + _unknown_noise_note(ranking)


def _where(batches: list[int], open_ended: bool) -> str:
    if open_ended:
        return f"from batch {batches[0]}"
    return f"at batch {batches[0]}" if len(batches) == 1 else f"at batch {batches[0]}-{batches[-1]}"


def batch_sentence(by_batch: dict[int, Ranking]) -> str | None:
    """Whether the fastest configuration (lowest TPOT p50) changes with batch size; None when nothing is contested."""
    # A batch size where only one configuration succeeded compares nothing: it is left out.
    contested = {b: r for b, r in sorted(by_batch.items()) if r.contested}
    if len(contested) < 2:
        return None
    winners = {r.best.config for r in contested.values() if r.decisive}
    if not winners:
        return (
            "At no batch size can the configurations be ranked by TPOT p50: their 95% intervals overlap, "
            "so at this noise they cannot be told apart."
        )
    if len(winners) == 1 and all(r.decisive for r in contested.values()):
        batches = ", ".join(map(str, contested))
        return f"{winners.pop()} has the lowest TPOT p50 at every batch size compared ({batches})."
    # Runs of consecutive batch sizes with the same outcome: one winner, or "" when it cannot be ranked.
    segments: list[tuple[str, list[int]]] = []
    for batch, ranking in contested.items():
        outcome = ranking.best.config if ranking.decisive else ""
        if segments and segments[-1][0] == outcome:
            segments[-1][1].append(batch)
        else:
            segments.append((outcome, [batch]))
    parts = []
    for index, (outcome, batches) in enumerate(segments):
        open_ended = bool(outcome) and index == len(segments) - 1
        where = _where(batches, open_ended)
        parts.append(f"{outcome} {where}" if outcome else f"no clear winner {where}")
    changes = len(winners) > 1
    lead = "The fastest configuration (lowest TPOT p50) changes with batch size" if changes else "Fastest by TPOT p50"
    return f"{lead}: {', '.join(parts)}."


def model_verdict(model: str, cells: pd.DataFrame) -> ModelVerdict:
    verdict = ModelVerdict(model)
    latency = candidates(cells, LATENCY)
    verdict.latency = rank([c for c in latency if c.batch_size == 1], lower_is_better=True)
    verdict.throughput = rank(candidates(cells, THROUGHPUT), lower_is_better=False)
    for batch in sorted({c.batch_size for c in latency}):
        verdict.by_batch[batch] = rank([c for c in latency if c.batch_size == batch], lower_is_better=True)
    if verdict.throughput is None and verdict.latency is None:
        return verdict
    sentences = [
        latency_sentence(verdict.latency, cells),
        throughput_sentence(verdict.throughput),
        batch_sentence(verdict.by_batch),
        *precision_sentences(cells),
        slo_sentence(cells),
        search_sentence(cells),
        *fidelity_sentences(cells),
    ]
    verdict.sentences = [s for s in sentences if s]
    return verdict


def slo_sentence(cells: pd.DataFrame) -> str | None:
    """Which cells of one model meet the SLO, and the most goodput among them. Goodput has no
    interval yet, so the sentence reports the figures and claims no ranking."""
    if "slo" not in cells or not cells["slo"].notna().any():
        return None
    ok = cells[(cells["status"] == "ok") & cells["slo_met"].notna()]
    if ok.empty:
        return None
    slo = str(ok["slo"].dropna().iloc[0])
    met = ok[ok["slo_met"].astype(str).str.lower() == "true"]
    if met.empty:
        return f"SLO ({slo}): no cell meets it (best attainment {_percent(ok['slo_attainment'].max())})."
    best = met.loc[met["goodput_tok_s"].astype(float).idxmax()]
    label = f"{best['engine']} {best['precision']} at batch {int(best['batch_size'])}"
    return (
        f"SLO ({slo}): met by {len(met)} of {len(ok)} cells; the most goodput among them: {label}, "
        f"{_tok_s(float(best['goodput_tok_s']))} of output within the targets "
        f"({_percent(float(best['slo_attainment']))} of its requests). Goodput carries no interval yet: "
        "close figures are not a ranking."
    )


SEARCH_RESULTS = {"slo_max_concurrency": ("requests in flight", "{:g}"), "slo_max_rate": ("req/s", "{:.3g}")}


def searched_instances(cells: pd.DataFrame) -> pd.DataFrame:
    """One row per engine instance that ran a load search (every cell of it carries the result)."""
    if "slo_search_cell" not in cells or not cells["slo_search_cell"].notna().any():
        return cells.iloc[0:0]
    return cells[cells["slo_search_cell"].notna()].drop_duplicates("slo_search_cell")


def search_sentence(cells: pd.DataFrame) -> str | None:
    """Which configuration carries the most load within the SLO. A search knows its answer to
    within one step: the largest load that met the SLO and the smallest that missed it. One
    configuration carries more than another only when it met the SLO at a load where the
    other missed it; otherwise they cannot be told apart at the search's step."""
    searched = searched_instances(cells)
    if searched.empty:
        return None
    slo = str(searched["slo"].dropna().iloc[0]) if "slo" in searched and searched["slo"].notna().any() else "the SLO"
    reasons = searched["slo_search_reason"].astype(str)
    for column, (unit, shown) in SEARCH_RESULTS.items():
        over = "concurrency" if column == "slo_max_concurrency" else "rate"
        found = searched[column] if column in searched else pd.Series(float("nan"), index=searched.index)
        rows = searched[found.notna()]
        none = searched[found.isna() & reasons.str.contains(f"load \\({over} ")]  # searched, no answer
        if rows.empty and none.empty:
            continue
        if rows.empty:
            return f"Load within the SLO ({slo}): no configuration meets it even at the smallest load searched."
        ordered = rows.sort_values(column, ascending=False)
        best, label = ordered.iloc[0], lambda r: f"{r['engine']} {r['precision']}"
        head = f"Load within the SLO ({slo}): {label(best)} carries the most, {shown.format(best[column])} {unit}"
        if len(ordered) == 1 and none.empty:
            return head + "."
        runner = ordered.iloc[1] if len(ordered) > 1 else None
        if runner is None:
            return head + f"; {', '.join(label(r) for _, r in none.iterrows())} met it at no load searched."
        missed = as_number(runner.get("slo_search_missed_at"))
        if missed is not None and best[column] >= missed:
            why = runner.get("slo_search_missed_why")
            how = f" ({why})" if isinstance(why, str) and why else ""
            return (
                head + f", against {shown.format(runner[column])} for {label(runner)}, which missed the SLO at "
                f"{shown.format(missed)}{how}."
            )
        return (
            f"Load within the SLO ({slo}): {label(best)} ({shown.format(best[column])} {unit}) and {label(runner)} "
            f"({shown.format(runner[column])}) cannot be told apart at the search's step: neither met the SLO at "
            "a load where the other missed it."
        )
    return None


def precision_sentences(cells: pd.DataFrame) -> list[str]:
    """The notebook's precision argument, per engine at batch 1: fewer bytes per decode step
    should mean a lower TPOT when decode is bandwidth bound. Said only when the data says it."""
    if "bytes_per_step" not in cells:
        return []
    sentences = []
    ok = cells[(cells["status"] == "ok") & (cells["batch_size"] == 1)].dropna(subset=[LATENCY, "bytes_per_step"])
    for engine, group in ok.groupby("engine", sort=True):
        if group["precision"].nunique() < 2:
            continue
        wide = group.loc[group["bytes_per_step"].idxmax()]
        narrow = group.loc[group["bytes_per_step"].idxmin()]
        fewer = wide["bytes_per_step"] / narrow["bytes_per_step"]
        speedup = wide[LATENCY] / narrow[LATENCY]
        pair = {c.cell_id: c for c in candidates(group, LATENCY)}
        same = indistinguishable(pair[wide["cell_id"]], pair[narrow["cell_id"]])
        head = (
            f"Precision ({engine}, batch 1): {narrow['precision']} reads {fewer:.1f}x fewer bytes per decode step "
            f"than {wide['precision']}"
        )
        if same:
            sentences.append(f"{head}, but their TPOT cannot be told apart (their 95% intervals overlap).")
        elif speedup > 1:
            sentences.append(
                f"{head} and its TPOT is {speedup:.1f}x lower: decode moves bytes, fewer bytes are faster."
            )
        else:
            sentences.append(
                f"{head}, yet its TPOT is {1 / speedup:.1f}x higher: here decode is not limited by bytes "
                "(dequantization or kernel overhead dominates)."
            )
    return sentences


def fidelity_instances(cells: pd.DataFrame) -> pd.DataFrame:
    """One row per engine instance whose fidelity pass was judged (its smallest batch size's cell)."""
    if "fidelity_status" not in cells:
        return cells.iloc[0:0]
    judged = cells[(cells["status"] == "ok") & cells["fidelity_status"].isin(["ok", "failed"])]
    return judged.sort_values("batch_size", kind="stable").drop_duplicates(["model", "engine", "precision"])


def _agreement(row) -> str:
    low, high = as_number(row.get("fidelity_top1_low")), as_number(row.get("fidelity_top1_high"))
    shown = _percent(row["fidelity_top1"], 1)
    return f"{shown} [{_percent(low, 1)[:-1]}-{_percent(high, 1)}]" if low is not None and high is not None else shown


def fidelity_sentences(cells: pd.DataFrame) -> list[str]:
    """One model's fidelity: failed checks, the fp32 cross-check, and the fastest configuration
    within the budget (top-1 agreement with hf fp32 >= workload.fidelity.min_top1)."""
    instances = fidelity_instances(cells)
    if instances.empty:
        return []
    sentences = [
        f"Fidelity check failed for {row.engine} {row.precision}: {row.fidelity_reason}"
        for row in instances[instances["fidelity_status"] == "failed"].itertuples()
    ]
    fp32 = instances[(instances["precision"] == "fp32") & (instances["engine"] != "hf")]
    if not fp32.empty:
        agree = _and([f"{row['engine']} {_agreement(row)}" for _, row in fp32.iterrows()])
        sentences.append(
            f"Correctness: the same model at fp32 through other engines agrees with hf fp32 on the top-1 token at "
            f"{agree} of positions (teacher-forced), a check of their model files and prompt paths."
        )
    judged = instances[instances["fidelity_status"] == "ok"]
    if not judged.empty:
        sentences.append(budget_sentence(cells, judged))
    return sentences


def budget_sentence(cells: pd.DataFrame, judged: pd.DataFrame) -> str:
    """The fastest configuration within the fidelity budget, ranked only where the TPOT intervals
    separate; faster ones outside it are named with their agreement."""
    budget = as_number(judged["fidelity_budget_top1"].iloc[0])
    budget = DEFAULT_BUDGET if budget is None else budget
    batch = int(judged["batch_size"].min())
    # every cell of an instance carries its pass: compare them at one batch size, the smallest
    at = cells[(cells["status"] == "ok") & (cells["batch_size"] == batch) & (cells["fidelity_status"] == "ok")]
    agreement = at["fidelity_top1"].astype(float)
    within, outside = at[agreement >= budget], at[agreement < budget]
    budget_text = f"the fidelity budget (top-1 agreement with hf fp32 at least {_percent(budget, 1)})"
    ranking = rank(candidates(within, LATENCY), lower_is_better=True)
    if ranking is None:
        closest = at.loc[agreement.idxmax()]
        return (
            f"No configuration stays within {budget_text}; the closest is {closest['engine']} "
            f"{closest['precision']} ({_agreement(closest)})."
        )
    best, head = ranking.best, f"Within {budget_text}"
    if not ranking.contested:
        text = f"{head} only {best.config} qualifies at batch {batch} ({with_interval(best, _ms)} per token)."
    elif ranking.decisive:
        other = ranking.runner_up
        text = (
            f"{head} the fastest at batch {batch} is {best.config} ({with_interval(best, _ms)} per token), "
            f"ahead of {other.config} ({with_interval(other, _ms)})."
        ) + _intervals_note(best, other)
    else:
        text = f"{head} the fastest at batch {batch} " + _tie_clause(ranking, _ms, lambda c: c.config)
    faster = outside[outside[LATENCY].astype(float) < best.value]
    if not faster.empty:
        named = _and([f"{row['engine']} {row['precision']} ({_agreement(row)})" for _, row in faster.iterrows()])
        text += f" Faster but outside the budget: {named}."
    return text


def failure_sentence(cells: pd.DataFrame) -> str | None:
    failed = cells[cells["status"] != "ok"]
    if failed.empty:
        return None
    counts = failed["status"].value_counts()
    kinds = ", ".join(f"{n} {status}" for status, n in counts.items())
    if len(failed) == len(cells):
        return f"No cell succeeded ({kinds}): there is nothing to compare. The reasons are listed below."
    return f"{len(failed)} of {len(cells)} cells produced no numbers ({kinds}); the reasons are listed below."


def _named(ids: list[str]) -> str:
    """The first few ids, and how many more."""
    return ", ".join(ids[:FLAGS_NAMED]) + (f" and {len(ids) - FLAGS_NAMED} more" if len(ids) > FLAGS_NAMED else "")


def flag_sentence(cells: pd.DataFrame) -> str | None:
    flagged = flagged_cells(cells)
    if flagged.empty:
        return None
    ids = flagged["cell_id"].astype(str).tolist()
    shown = _named(ids)
    return (
        f"{len(ids)} cell(s) are flagged by the roofline check (memory bandwidth utilization above 1.0 against "
        f"the measured peak, which means a bytes count or a peak is wrong): {shown}. "
        "Their timings stand; their bandwidth figures do not."
    )


def cache_sentence(cells: pd.DataFrame) -> str | None:
    """Server cells that were served from a prefix cache that should have been off."""
    if "prefix_cache_flag" not in cells or not cells["prefix_cache_flag"].notna().any():
        return None
    ids = cells.loc[cells["prefix_cache_flag"].notna(), "cell_id"].astype(str).tolist()
    return (
        f"{len(ids)} cell(s) were partly served from the server's prefix cache although workload.prefix_cache "
        f"is off: {_named(ids)}. Their latency and throughput may be flattered; see prefix_cache_hits in cells.csv."
    )


def client_sentence(cells: pd.DataFrame) -> str | None:
    """Server cells whose client process was nearly always busy: their speed may be the client's."""
    if "client_saturated" not in cells:
        return None
    busy = cells[cells["client_saturated"].map(lambda v: v is True or str(v).lower() == "true")]
    if busy.empty:
        return None
    ids = busy["cell_id"].astype(str).tolist()
    shown = _named(ids)
    return (
        f"{len(ids)} server cell(s) were measured by a client busy over 90% of the time ({shown}): their "
        "throughput may be the client's limit, not the server's. Measure them again with more "
        "workload.client_processes."
    )


def flagged_cells(cells: pd.DataFrame) -> pd.DataFrame:
    if ROOFLINE_FLAG not in cells:
        return cells.iloc[0:0]
    return cells[cells[ROOFLINE_FLAG].map(flag_text) != ""]


def verdict(cells: pd.DataFrame) -> Verdict:
    """The whole verdict: failures and flags first, then one paragraph per model."""
    result = Verdict()
    if cells.empty:
        result.overall.append("The table has no cells.")
        return result
    overall = (failure_sentence(cells), flag_sentence(cells), cache_sentence(cells), client_sentence(cells))
    result.overall = [s for s in overall if s]
    for model, group in cells.groupby("model", sort=True):
        mv = model_verdict(str(model), group)
        if mv.sentences:
            result.models.append(mv)
    return result


@dataclass(frozen=True)
class NoiseWarning:
    model: str
    batch_size: int
    a: Candidate
    b: Candidate

    @property
    def text(self) -> str:
        gap = abs(self.a.value - self.b.value) / max(self.a.value, self.b.value)
        return (
            f"{self.model}, batch {self.batch_size}: {self.a.config} ({with_interval(self.a, _tok_s)}) and "
            f"{self.b.config} ({with_interval(self.b, _tok_s)}) differ by {_percent(gap)}, but their 95% intervals "
            "overlap: they cannot be ranked."
        )


def noise_warnings(cells: pd.DataFrame) -> list[NoiseWarning]:
    """Neighbours in throughput order, per model and batch size, that cannot be told apart."""
    warnings = []
    for (model, batch), group in cells.groupby(["model", "batch_size"], sort=True):
        ordered = sorted(candidates(group, THROUGHPUT), key=lambda c: -c.value)
        for a, b in zip(ordered, ordered[1:], strict=False):
            if indistinguishable(a, b):
                warnings.append(NoiseWarning(str(model), int(batch), a, b))
    return warnings


def cell_trend(row) -> tuple[float, float] | None:
    """(change, p) of a cells.csv row's TPOT trend over its repeats; None where it was not tested."""
    change, p = as_number(row.get("tpot_s_p50_trend")), as_number(row.get("tpot_s_p50_trend_p"))
    return None if change is None or p is None else (change, p)


def drift_warnings(cells: pd.DataFrame) -> list[str]:
    """Cells whose TPOT drifted over their repeats (pipeline.stats.trending)."""
    warnings = []
    for row in cells[cells["status"] == "ok"].to_dict("records"):
        found = cell_trend(row)
        if not trending(found):
            continue
        change, p = found
        repeats = len(json.loads(row["tpot_s_p50_repeats"])) if isinstance(row.get("tpot_s_p50_repeats"), str) else 0
        warnings.append(
            f"{row['cell_id']}: TPOT p50 {'rose' if change > 0 else 'fell'} by {_percent(abs(change))} over its "
            f"{repeats} repeats in time order (Mann-Kendall p = {p:.2g}): the host or the engine changed speed "
            "while it was measured. Its interval covers the drift; a re-run may not reproduce it."
        )
    return warnings


def pareto_front(throughput: pd.Series, latency: pd.Series) -> pd.Series:
    """True for the points no other point beats: none has at least their throughput at a lower latency, or more
    throughput at the same latency (of exact duplicates, one is marked)."""
    order = sorted(range(len(throughput)), key=lambda i: (-throughput.iloc[i], latency.iloc[i]))
    on_front = [False] * len(throughput)
    best_latency = math.inf
    for i in order:
        if latency.iloc[i] < best_latency:
            on_front[i] = True
            best_latency = latency.iloc[i]
    return pd.Series(on_front, index=throughput.index)
