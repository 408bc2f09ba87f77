"""The wall-clock budget: measured costs, projected finish, and the tier each file gets.

Tiers, from best to cheapest:

* ``full``: every member of the recipe;
* ``without A``, ``without A+B``, …: the members of the recipe's ``[budget] drop_order`` left
  out one more at a time (the blend renormalises over the others; heads and Perch stay). The
  model-card recipe drops ``crnn``, then ``cnn``;
* ``prior_only``: the site/hour prior alone, written for files that could not be scored in time
  (and for unreadable files).

The budget counts from the start of the command. Rows must be written by ``stop_at`` =
``start + budget − reserve``; the reserve covers closing the CSV and stopping the children.
While files remain, the monitor projects the finish at the current tier from the measured cost
per file (each member's own cost, measured on the files it ran on) and the number of live
consumers, and steps down to the first tier whose projection, with a safety factor, fits, for
the files not yet sent to a consumer. It never steps back up
(a run whose tier flips back and forth is hard to reason about). The clock is injected, so
tests drive it by hand.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

TIER_FULL = "full"
TIER_PRIOR_ONLY = "prior_only"


def tier_name(dropped) -> str:
    """The tier that leaves out ``dropped`` (member names, in drop order)."""
    return TIER_FULL if not dropped else "without " + "+".join(dropped)

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

    ``perch_s`` is the consumer's Perch time per file and ``member_s`` each member's (its own
    model and its share of the front-ends it alone needs), counted over the files it ran on;
    ``overhead_s`` is the rest of a consumer's time per file (receiving work, mapping, sending
    the result); ``reduce_s`` is the parent's reduction (heads + steps) per file.
    """

    n: int = 0
    perch_s: float = 0.0
    member_s: dict = field(default_factory=dict)
    member_n: dict = field(default_factory=dict)
    overhead_s: float = 0.0
    n_reduce: int = 0
    reduce_s: float = 0.0

    def observe_model(self, perch_s: float, member_s: dict, overhead_s: float = 0.0) -> None:
        self.n += 1
        self.perch_s += (perch_s - self.perch_s) / self.n
        for name, seconds in member_s.items():
            n = self.member_n.get(name, 0) + 1
            self.member_n[name] = n
            mean = self.member_s.get(name, 0.0)
            self.member_s[name] = mean + (seconds - mean) / n
        self.overhead_s += (overhead_s - self.overhead_s) / self.n

    def observe_reduce(self, seconds: float) -> None:
        self.n_reduce += 1
        self.reduce_s += (seconds - self.reduce_s) / self.n_reduce

    @property
    def members_s(self) -> float:
        """Every member's time per file together."""
        return sum(self.member_s.values())

    def consumer_seconds(self, dropped=()) -> float:
        """Consumer time of one file with the members ``dropped`` left out."""
        return self.perch_s + self.overhead_s + sum(s for name, s in self.member_s.items() if name not in dropped)


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
    drop_order: tuple[str, ...] = ()
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

    @property
    def tiers(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """``(tier, members left out)`` from the best to the cheapest model tier."""
        return tuple((tier_name(self.drop_order[:k]), self.drop_order[:k]) for k in range(len(self.drop_order) + 1))

    def dropped(self, tier: str | None = None) -> frozenset[str]:
        """The members ``tier`` (default: the current one) leaves out."""
        tier = self.tier if tier is None else tier
        return frozenset(dict(self.tiers).get(tier, ()))

    def projected_seconds(self, tier: str, n_remaining: int, n_consumers: int) -> float:
        """Projected wall time for ``n_remaining`` files at ``tier`` with ``n_consumers``."""
        n_consumers = max(1, n_consumers)
        model = n_remaining * self.costs.consumer_seconds(self.dropped(tier)) / n_consumers
        reduce = n_remaining * self.costs.reduce_s  # the parent reduces while consumers compute
        return max(model, reduce)

    def choose_tier(self, n_remaining: int, n_consumers: int) -> str:
        """The tier for the next file sent to a consumer (never better than the current one).

        Args:
            n_remaining: files not yet sent to a consumer, including the next one.
            n_consumers: live consumers.
        """
        if self.costs.n < MIN_OBSERVATIONS or n_remaining <= 0:
            return self.tier
        tiers = [name for name, _ in self.tiers]
        current = tiers.index(self.tier) if self.tier in tiers else len(tiers) - 1
        if current == len(tiers) - 1:
            return self.tier
        left = self.time_left()
        now = self.projected_seconds(self.tier, n_remaining, n_consumers)
        if now <= PROJECTION_SAFETY * left:
            return self.tier
        choice = tiers[-1]
        for name in tiers[current + 1:]:
            if self.projected_seconds(name, n_remaining, n_consumers) <= PROJECTION_SAFETY * left:
                choice = name
                break
        if self.dropped(choice) == self.dropped(self.tier) or self.costs.consumer_seconds(self.dropped(choice)) >= \
                self.costs.consumer_seconds(self.dropped(self.tier)):
            return self.tier  # the members to drop cost nothing measurable: nothing to gain
        lighter = self.projected_seconds(choice, n_remaining, n_consumers)
        left_out = sorted(self.dropped(choice) - self.dropped(self.tier), key=self.drop_order.index)
        self.decisions.append(
            f"at {self.clock() - self.start:.1f} s: {n_remaining} files left, {left:.1f} s to the stop; "
            f"projected {now:.1f} s at tier {self.tier}, {lighter:.1f} s without {', '.join(left_out)}: "
            f"dropping {', '.join(left_out)}"
            + ("" if lighter <= PROJECTION_SAFETY * left else "; files still unscored at the stop get prior-only rows")
        )
        self.tier = choice
        return self.tier
