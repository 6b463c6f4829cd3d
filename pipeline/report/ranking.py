"""Which configuration is faster, only where the data can tell (pure functions on cells.csv).

Rule (README, "What the numbers mean"): two cells are ranked when the 95% intervals of the
figure compared (cells.csv `<figure>_low` / `<figure>_high`, pipeline.stats) do not overlap.
Overlapping intervals cannot be told apart at this noise. A cell without an interval (one
repeat, for throughput) makes the comparison unchecked: it is ranked by value and the
verdict says that the noise is unknown.

Candidates are compared within one model (comparing a 4M model with a 7B one says nothing).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import pandas as pd

from pipeline.analysis.metrics import as_number
from pipeline.stats import separated

LATENCY, THROUGHPUT = "tpot_s_p50", "output_tok_s"


@dataclass(frozen=True)
class Candidate:
    cell_id: str
    engine: str
    precision: str
    batch_size: int
    value: float
    low: float | None  # the 95% interval; None when unknown
    high: float | None

    @property
    def config(self) -> str:
        return f"{self.engine} {self.precision}"

    @property
    def label(self) -> str:
        return f"{self.config} at batch {self.batch_size}"

    @property
    def interval_known(self) -> bool:
        return self.low is not None and self.high is not None


@dataclass(frozen=True)
class Ranking:
    """The best candidate, those it cannot be told apart from, and the first it clearly beats."""

    best: Candidate
    tied: tuple[Candidate, ...] = ()
    runner_up: Candidate | None = None
    noise_known: bool = True

    @property
    def decisive(self) -> bool:
        return not self.tied

    @property
    def contested(self) -> bool:
        return bool(self.tied) or self.runner_up is not None


def indistinguishable(a: Candidate, b: Candidate) -> bool | None:
    """True when a's and b's intervals overlap; None when either interval is unknown."""
    if not (a.interval_known and b.interval_known):
        return None
    return separated((a.low, a.high), (b.low, b.high)) == 0


def candidates(cells: pd.DataFrame, metric: str) -> list[Candidate]:
    ok = cells[cells["status"] == "ok"]
    found = []
    for row in ok.to_dict("records"):
        value = as_number(row.get(metric))
        if value is None:
            continue
        found.append(
            Candidate(
                cell_id=str(row["cell_id"]),
                engine=str(row["engine"]),
                precision=str(row["precision"]),
                batch_size=int(row["batch_size"]),
                value=value,
                low=as_number(row.get(f"{metric}_low")),
                high=as_number(row.get(f"{metric}_high")),
            )
        )
    return found


def rank(found: list[Candidate], lower_is_better: bool) -> Ranking | None:
    if not found:
        return None
    ordered = sorted(found, key=lambda c: (c.value if lower_is_better else -c.value, c.cell_id))
    best, rest = ordered[0], ordered[1:]
    verdicts = [indistinguishable(best, other) for other in rest]
    tied = tuple(other for other, same in zip(rest, verdicts, strict=True) if same)
    runner_up = next((other for other, same in zip(rest, verdicts, strict=True) if not same), None)
    return Ranking(best, tied, runner_up, noise_known=all(v is not None for v in verdicts))


@dataclass(frozen=True)
class Comparison:
    """One pair of cells of a model at one batch size, on one figure."""

    model: str
    batch_size: int
    figure: str
    a: Candidate  # a.cell_id < b.cell_id
    b: Candidate
    order: int  # -1: a better, 1: b better, 0: cannot be told apart (or unknown)

    @property
    def key(self) -> tuple:
        return (self.model, self.batch_size, self.figure, self.a.cell_id, self.b.cell_id)

    @property
    def gap(self) -> float:
        """Relative difference of the two values (to the larger)."""
        return abs(self.a.value - self.b.value) / max(abs(self.a.value), abs(self.b.value))


def comparisons(cells: pd.DataFrame) -> list[Comparison]:
    """Every pair of configurations of a model at one batch size, by TPOT p50 and by output
    tok/s, ranked by the interval rule (order 0 where it cannot rank)."""
    found = []
    for figure, lower_is_better in ((LATENCY, True), (THROUGHPUT, False)):
        for (model, batch), group in cells.groupby(["model", "batch_size"], sort=True):
            pool = sorted(candidates(group, figure), key=lambda c: c.cell_id)
            for a, b in combinations(pool, 2):
                same = indistinguishable(a, b)
                order = 0
                if same is False:
                    better_a = a.value < b.value if lower_is_better else a.value > b.value
                    order = -1 if better_a else 1
                found.append(Comparison(str(model), int(batch), figure, a, b, order))
    return found
