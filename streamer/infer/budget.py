"""The wall-clock budget: measured costs, projected finish, and the tier each file gets.

Tiers, from best to cheapest:

* ``full``: Perch + both students + ProtoSSM folds (the model-card ensemble);
* ``no_students``: Perch + ProtoSSM folds (the blend renormalises to Perch alone);
* ``prior_only``: the site/hour prior alone, written for files that could not be scored in time
  (and for unreadable files).

The budget counts from the start of the command. Rows must be written by ``stop_at`` =
``start + budget − reserve``; the reserve covers closing the CSV and stopping the children.
While files remain, the monitor projects the finish at the current tier from the measured cost
per file and the number of live consumers, and steps down a tier for the files not yet sent to
a consumer only when the projection, with a safety factor, does not fit. It never steps back up
(a run whose tier flips back and forth is hard to reason about). The clock is injected, so
tests drive it by hand.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

TIER_FULL = "full"
TIER_NO_STUDENTS = "no_students"
TIER_PRIOR_ONLY = "prior_only"
MODEL_TIERS = (TIER_FULL, TIER_NO_STUDENTS)

#: The projection must fit into this share of the time left (noise on shared machines).
PROJECTION_SAFETY = 0.85
#: Reserve before the deadline: a share of the budget, clamped (seconds).
RESERVE_FRACTION = 0.03
RESERVE_MIN_S = 2.0
RESERVE_MAX_S = 90.0
#: Files measured before the first projection is trusted (the very first file may still pay
#: for lazy initialisation inside the libraries).
MIN_OBSERVATIONS = 2


@dataclass
class CostModel:
    """Running means of the measured costs of one file (seconds).

    ``perch_s`` and ``students_s`` are the consumer's compute time per file; ``overhead_s`` is
    the rest of a consumer's time per file (receiving work, mapping, sending the result);
    ``reduce_s`` is the parent's ProtoSSM + post-processing per file.
    """

    n: int = 0
    perch_s: float = 0.0
    students_s: float = 0.0
    overhead_s: float = 0.0
    n_reduce: int = 0
    reduce_s: float = 0.0

    def observe_model(self, perch_s: float, students_s: float, overhead_s: float = 0.0) -> None:
        self.n += 1
        self.perch_s += (perch_s - self.perch_s) / self.n
        self.students_s += (students_s - self.students_s) / self.n
        self.overhead_s += (overhead_s - self.overhead_s) / self.n

    def observe_reduce(self, seconds: float) -> None:
        self.n_reduce += 1
        self.reduce_s += (seconds - self.reduce_s) / self.n_reduce

    def consumer_seconds(self, tier: str) -> float:
        """Consumer time of one file at ``tier`` (students' share removed for ``no_students``)."""
        base = self.perch_s + self.overhead_s
        return base + self.students_s if tier == TIER_FULL else base


@dataclass
class Budget:
    """Deadline bookkeeping and the tier decision.

    Args:
        budget_s: the whole budget in seconds, counted from ``start``.
        start: the clock reading at the start of the command.
        clock: a monotonic clock (seconds); injected in tests.
    """

    budget_s: float
    start: float
    clock: Callable[[], float] = time.monotonic
    tier: str = TIER_FULL
    costs: CostModel = field(default_factory=CostModel)
    decisions: list[str] = field(default_factory=list)

    @property
    def reserve_s(self) -> float:
        return min(RESERVE_MAX_S, max(RESERVE_MIN_S, RESERVE_FRACTION * self.budget_s))

    @property
    def deadline(self) -> float:
        return self.start + self.budget_s

    @property
    def stop_at(self) -> float:
        """When the run must stop scoring and write what it has."""
        return self.deadline - self.reserve_s

    def time_left(self) -> float:
        return self.stop_at - self.clock()

    def must_stop(self) -> bool:
        return self.clock() >= self.stop_at

    def projected_seconds(self, tier: str, n_remaining: int, n_consumers: int) -> float:
        """Projected wall time for ``n_remaining`` files at ``tier`` with ``n_consumers``."""
        n_consumers = max(1, n_consumers)
        model = n_remaining * self.costs.consumer_seconds(tier) / n_consumers
        reduce = n_remaining * self.costs.reduce_s  # the parent reduces while consumers compute
        return max(model, reduce)

    def choose_tier(self, n_remaining: int, n_consumers: int) -> str:
        """The tier for the next file sent to a consumer (never better than the current one).

        Args:
            n_remaining: files not yet sent to a consumer, including the next one.
            n_consumers: live consumers.
        """
        if self.tier != TIER_FULL or self.costs.n < MIN_OBSERVATIONS or n_remaining <= 0:
            return self.tier
        if self.costs.students_s <= 0.0:
            return self.tier  # no students run: a lighter model tier would save nothing
        left = self.time_left()
        full = self.projected_seconds(TIER_FULL, n_remaining, n_consumers)
        if full <= PROJECTION_SAFETY * left:
            return self.tier
        lighter = self.projected_seconds(TIER_NO_STUDENTS, n_remaining, n_consumers)
        self.tier = TIER_NO_STUDENTS
        self.decisions.append(
            f"at {self.clock() - self.start:.1f} s: {n_remaining} files left, {left:.1f} s to the stop; "
            f"projected {full:.1f} s with the students, {lighter:.1f} s without: dropping the students"
            + ("" if lighter <= PROJECTION_SAFETY * left else "; files still unscored at the stop get prior-only rows")
        )
        return self.tier
