"""The pipeline's decisions, without processes.

:class:`Scheduler` holds the state of a run (files to decode, decoded files waiting for a
consumer, the shared window slots, files scored in parts, attempts per file, tiers, the child
slots) and turns *events* (a child is ready, a file was decoded, a model task is done, a child
died, the clock ticked) into *actions* (start a child, send a task, hand a file to the reducer,
give a file fallback rows, kill a hung child, finish the run). It starts no process and reads
no clock but the budget's, so its rules are tested as tables in milliseconds
(``tests/test_scheduler.py``); the runner is a thin loop between the child processes, this
object and the row sink.

The rules
---------
* **Dispatch.** A child holds at most :data:`PREFETCH` tasks (one running, one waiting, so it
  never idles and never hoards work). Decoding starts as soon as a decoder is up, while the
  consumers are still loading. A decoded file waits in its slot for a consumer; the slot pool
  bounds how far decoding runs ahead.
* **The end of a run.** Once every file has gone to the decoders, each file still waiting for
  a consumer is cut into parts (one per ready consumer, at least :data:`MIN_PART_WINDOWS`
  windows), and a consumer gets the next part only when idle, so the consumers finish together.
  Perch and the students see each window on its own, so parts give the same numbers.
* **Tiers.** Each file's tier is chosen by the budget when it is first sent to a consumer; a
  file keeps it whatever happens to its parts.
* **Deaths.** When a child dies, the task it was working on (its oldest) counts an attempt for
  that file; a file with :data:`~streamer.pipeline.attempts.MAX_FILE_ATTEMPTS` attempts (the
  rule ``archive`` shares, :class:`~streamer.pipeline.attempts.Attempts`) gets prior-only rows
  and the rest of the child's tasks, never started, go back to the front of the line uncounted
  (a dead consumer's windows are still in their slots, a dead decoder's files are decoded
  again). The
  slot is restarted unless its :class:`~streamer.pipeline.children.SlotHealth` gives it up:
  deaths in a row without progress (a set-up error at once). The run stops with an error only
  when every consumer slot, or every decoder slot, has been given up.
* **Hangs.** A child that does not become ready within ``startup_timeout_s``, or does not
  answer a task within its limit (``task_timeout_s``, or :data:`HANG_FACTOR` times the
  measured cost of a file if that is longer), is killed; its death then follows the rules above.
* **The budget.** At the budget's stop time the run finishes: every file without rows gets
  prior-only rows.
"""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass, field
from typing import Sequence

from streamer.config import DEFAULT_TASK_TIMEOUT_S
from streamer.infer.budget import TIER_FULL, Budget
from streamer.metadata import N_WINDOWS_PER_FILE
from streamer.pipeline.attempts import MAX_FILE_ATTEMPTS, Attempts  # noqa: F401 - the limit, read by the tests
from streamer.pipeline.children import STARTUP_TIMEOUT_S, SlotHealth, hang_reason

log = logging.getLogger(__name__)

CONSUMER = "consumer"
DECODER = "decoder"

#: Tasks a child may hold at once: one running, one waiting, so it never idles between tasks.
PREFETCH = 2
#: Smallest part a file is cut into at the end of a run (windows).
MIN_PART_WINDOWS = 3
#: A task unanswered for TASK_TIMEOUT_S is hung, unless HANG_FACTOR x the measured cost of a
#: file is longer.
TASK_TIMEOUT_S = DEFAULT_TASK_TIMEOUT_S
HANG_FACTOR = 20.0


@dataclass(frozen=True)
class Unit:
    """A piece of work: windows ``start .. start + n`` of file ``index``."""

    index: int
    start: int = 0
    n: int = N_WINDOWS_PER_FILE


# ---------------------------------------------------------------------------- actions


@dataclass(frozen=True)
class StartChild:
    role: str
    wid: int


@dataclass(frozen=True)
class KillChild:
    role: str
    wid: int
    reason: str


@dataclass(frozen=True)
class SendDecode:
    wid: int
    task_id: int
    index: int
    slot: int


@dataclass(frozen=True)
class SendModel:
    wid: int
    task_id: int
    unit: Unit
    slot: int
    dropped: frozenset


@dataclass(frozen=True)
class Modelled:
    """Every window of file ``index`` is modelled: reduce ``outputs`` (tier ``tier``)."""

    index: int
    outputs: object
    tier: str


@dataclass(frozen=True)
class Scored:
    """File ``index`` was modelled and reduced by a consumer: ``probs`` are its rows."""

    index: int
    probs: object
    tier: str


@dataclass(frozen=True)
class Fallback:
    """File ``index`` gets prior-only rows."""

    index: int
    reason: str


@dataclass(frozen=True)
class Finish:
    """Stop scoring: files without rows get prior-only rows for ``reason``; ``error`` is set
    when the run could not go on (exit code 1)."""

    reason: str
    error: str | None = None


# ---------------------------------------------------------------------------- state


@dataclass
class SlotState:
    """One child slot as the scheduler sees it (its process comes and goes)."""

    role: str
    wid: int
    health: SlotHealth = field(default_factory=SlotHealth)
    running: bool = False
    ready: bool = False
    started_at: float = 0.0
    tasks: dict[int, Unit] = field(default_factory=dict)  # task id → unit, in the order sent
    busy_since: float | None = None  # when its oldest task started
    kill_reason: str | None = None

    @property
    def name(self) -> str:
        return f"{self.role} {self.wid}"


class Scheduler:
    """See the module notes.

    Args:
        names: the files' names (stems) in output order, for messages.
        n_consumers, n_decoders: child slots.
        n_slots: window slots in the shared buffer.
        budget: the run's budget (its clock is the scheduler's clock).
        split_end: cut the last files into parts (off when the consumers reduce whole files).
        task_timeout_s, startup_timeout_s: hang limits (see the module notes).
    """

    def __init__(
        self,
        names: Sequence[str],
        *,
        n_consumers: int,
        n_decoders: int,
        n_slots: int,
        budget: Budget,
        split_end: bool = True,
        task_timeout_s: float = TASK_TIMEOUT_S,
        startup_timeout_s: float = STARTUP_TIMEOUT_S,
    ) -> None:
        self.names = tuple(names)
        self.budget = budget
        self.clock = budget.clock
        self.split_end = split_end
        self.task_timeout_s = task_timeout_s
        self.startup_timeout_s = startup_timeout_s
        self.pending: collections.deque[int] = collections.deque(range(len(self.names)))
        self.decoded: collections.deque[Unit] = collections.deque()
        self.free_slots = list(range(n_slots))
        self.slot_of: dict[int, int] = {}
        self.parts: dict[int, dict[int, object]] = {}
        self.tier_of: dict[int, str] = {}
        self.attempts = Attempts()
        self.resolved: set[int] = set()
        self.slots: dict[tuple[str, int], SlotState] = {}
        for wid in range(n_consumers):
            self.slots[(CONSUMER, wid)] = SlotState(CONSUMER, wid)
        for wid in range(n_decoders):
            self.slots[(DECODER, wid)] = SlotState(DECODER, wid)
        self.next_task = 0
        self.finish: Finish | None = None
        self.n_files_in_parts = 0

    # ------------------------------------------------------------------ queries

    @property
    def n_files(self) -> int:
        return len(self.names)

    @property
    def all_resolved(self) -> bool:
        return len(self.resolved) == self.n_files

    def _of_role(self, role: str) -> list[SlotState]:
        return [s for s in self.slots.values() if s.role == role]

    def ready_consumers(self) -> list[SlotState]:
        return [s for s in self._of_role(CONSUMER) if s.ready]

    def idle_consumers(self) -> int:
        """Ready consumers holding no task."""
        return sum(1 for s in self.ready_consumers() if not s.tasks)

    def busy_slots(self) -> set[tuple[str, int]]:
        return {k for k, s in self.slots.items() if s.tasks}

    def wait_timeout(self, longest: float) -> float:
        """How long the runner may wait for events before the next tick."""
        return max(0.0, min(longest, self.budget.time_left()))

    # ------------------------------------------------------------------ events

    def start(self) -> list:
        """The first actions: start every child (nothing when there are no files)."""
        if not self.names:
            self.finish = Finish("no files")
            return []
        actions = []
        for slot in self.slots.values():
            actions.append(self._start(slot))
        return actions

    def on_ready(self, role: str, wid: int) -> list:
        slot = self.slots[(role, wid)]
        slot.ready = True
        return self._dispatch()

    def on_decoded(self, wid: int, task_id: int) -> list:
        slot = self.slots[(DECODER, wid)]
        unit = self._task_done(slot, task_id)
        if unit.index in self.resolved:
            self._release(unit.index)
        else:
            self.decoded.append(Unit(unit.index))
        return self._dispatch()

    def on_decode_failed(self, wid: int, task_id: int, error: str) -> list:
        slot = self.slots[(DECODER, wid)]
        unit = self._task_done(slot, task_id)
        actions = [] if unit.index in self.resolved else self._fallback(unit.index, f"unreadable: {error}")
        self._release(unit.index)
        return actions + self._dispatch()

    def on_model_done(self, wid: int, task_id: int, *, outputs=None, probs=None,
                      perch_s: float = 0.0, member_s: dict | None = None, busy_s: float = 0.0) -> list:
        """A consumer finished a task: raw ``outputs`` of its windows, or the file's ``probs``
        when the consumer reduced it too."""
        slot = self.slots[(CONSUMER, wid)]
        unit = self._task_done(slot, task_id)
        # Costs per whole file (a part is scaled up); a consumer's own reduction is part of its
        # time per file (busy_s includes it).
        scale = N_WINDOWS_PER_FILE / unit.n
        member_s = member_s or {}
        members = sum(member_s.values())
        self.budget.costs.observe_model(perch_s * scale, {k: v * scale for k, v in member_s.items()},
                                        max(0.0, busy_s - perch_s - members) * scale)
        index = unit.index
        actions: list = []
        if index not in self.resolved:
            if probs is not None:
                self._release(index)
                self.resolved.add(index)
                actions.append(Scored(index, probs, self.tier_of.pop(index, TIER_FULL)))
            else:
                parts = self.parts.setdefault(index, {})
                parts[unit.start] = outputs
                if sum(_n_windows(p) for p in parts.values()) >= N_WINDOWS_PER_FILE:
                    del self.parts[index]
                    self._release(index)  # every window is modelled: the slot can take another file
                    self.resolved.add(index)
                    joined = parts[0] if len(parts) == 1 else _concat([parts[k] for k in sorted(parts)])
                    actions.append(Modelled(index, joined, self.tier_of.pop(index, TIER_FULL)))
        return actions + self._dispatch()

    def on_death(self, role: str, wid: int, cause: str, *, setup_error: bool = False) -> list:
        """A child died (``cause`` in words); ``setup_error`` when it reported an exception
        while starting."""
        slot = self.slots[(role, wid)]
        cause = slot.kill_reason or cause
        was_ready = slot.ready
        tasks = list(slot.tasks.values())
        slot.tasks.clear()
        slot.running = slot.ready = False
        slot.busy_since = None
        slot.kill_reason = None
        actions: list = []
        settled = False
        back: list[Unit] = []
        for position, unit in enumerate(tasks):
            index = unit.index
            if index in self.resolved:
                continue
            if position == 0:  # the task it was working on: this file may be the cause
                n, last = self.attempts.fail(index)
                if last:
                    log.error("%s: its %s died on it %d times; writing prior-only rows", self.names[index], role, n)
                    actions += self._fallback(index, f"the {role} died {n} times on this file (last: {cause})")
                    self._release(index)
                    self.parts.pop(index, None)
                    settled = True
                    continue
            back.append(unit)
        for unit in reversed(back):  # to the front of the line, in their order
            if role == CONSUMER:
                self.decoded.appendleft(unit)  # the windows are still in their slot
            else:
                self._release(unit.index)
                self.pending.appendleft(unit.index)
        if back:
            log.warning("%s died (%s); %d task(s) go back to the queue", slot.name, cause, len(back))
        if settled:
            slot.health.progressed()  # the death is explained: that file is settled
        elif slot.health.died(setup_error=setup_error and not was_ready):
            log.error("%s: giving up on this slot (%s)", slot.name,
                      "its set-up failed" if setup_error and not was_ready else "it keeps dying without progress")
            if all(s.health.given_up for s in self._of_role(role)):
                self.finish = Finish("run stopped by an error", f"every {role} keeps dying (last: {slot.name}: {cause})")
                return actions + [self.finish]
            return actions + self._dispatch()
        actions.append(self._start(slot))
        return actions + self._dispatch()

    def on_tick(self) -> list:
        """Deadlines: the budget's stop time, children that hang at start-up or on a task."""
        if self.finish is not None:
            return []
        now = self.clock()
        if self.budget.must_stop():
            left = self.n_files - len(self.resolved)
            if left:
                log.warning("budget: the stop time has come with %d file(s) unscored; writing prior-only rows", left)
            self.finish = Finish("not scored before the budget's stop")
            return [self.finish]
        actions = []
        for slot in self.slots.values():
            if not slot.running or slot.kill_reason is not None:
                continue
            working_on = self.names[next(iter(slot.tasks.values())).index] if slot.tasks else ""
            slot.kill_reason = hang_reason(
                now=now, ready=slot.ready, started=slot.started_at, busy_since=slot.busy_since if slot.tasks else None,
                startup_timeout_s=self.startup_timeout_s, task_limit_s=self._task_limit(slot.role), working_on=working_on,
            )
            if slot.kill_reason is not None:
                log.error("%s %s; killing it", slot.name, slot.kill_reason)
                actions.append(KillChild(slot.role, slot.wid, slot.kill_reason))
        return actions

    # ------------------------------------------------------------------ helpers

    def _task_limit(self, role: str) -> float:
        if role == CONSUMER and self.budget.costs.n:
            return max(self.task_timeout_s, HANG_FACTOR * self.budget.costs.consumer_seconds())
        return self.task_timeout_s

    def _start(self, slot: SlotState) -> StartChild:
        slot.running = True
        slot.ready = False
        slot.started_at = self.clock()
        return StartChild(slot.role, slot.wid)

    def _task_id(self) -> int:
        self.next_task += 1
        return self.next_task

    def _give(self, slot: SlotState, task_id: int, unit: Unit) -> None:
        if not slot.tasks:
            slot.busy_since = self.clock()
        slot.tasks[task_id] = unit

    def _task_done(self, slot: SlotState, task_id: int) -> Unit:
        unit = slot.tasks.pop(task_id)
        slot.health.progressed()
        slot.busy_since = self.clock() if slot.tasks else None  # the next one starts now
        return unit

    def _release(self, index: int) -> None:
        """Give file ``index``'s window slot back to the pool, if it holds one."""
        slot = self.slot_of.pop(index, None)
        if slot is not None:
            self.free_slots.append(slot)

    def _fallback(self, index: int, reason: str) -> list:
        self.resolved.add(index)
        self.tier_of.pop(index, None)
        return [Fallback(index, reason)]

    def _n_remaining(self, also: int) -> int:
        """Files not yet sent (whole or in part) to a consumer, file ``also`` included."""
        waiting = {u.index for u in self.decoded} | {also}
        decoding = sum(len(s.tasks) for s in self._of_role(DECODER))
        return len(self.pending) + decoding + len(waiting - self.tier_of.keys())

    def _dispatch(self) -> list:
        if self.finish is not None:
            return []
        return self._dispatch_decodes() + self._dispatch_models()

    def _dispatch_decodes(self) -> list:
        actions = []
        decoders = [s for s in self._of_role(DECODER) if s.ready]
        while self.pending and self.free_slots and decoders:
            slot = min(decoders, key=lambda s: len(s.tasks))
            if len(slot.tasks) >= PREFETCH:
                break
            index = self.pending.popleft()
            if index in self.resolved:
                continue
            window_slot = self.free_slots.pop()
            self.slot_of[index] = window_slot
            task_id = self._task_id()
            self._give(slot, task_id, Unit(index))
            actions.append(SendDecode(slot.wid, task_id, index, window_slot))
        return actions

    def _in_end_game(self, n_consumers: int) -> bool:
        """Every file has gone to the decoders: cut what is left into parts (see the notes)."""
        return self.split_end and not self.pending and n_consumers > 1

    def _split(self, unit: Unit, n_consumers: int) -> list[Unit]:
        size = max(MIN_PART_WINDOWS, -(-unit.n // n_consumers))
        stop = unit.start + unit.n
        return [Unit(unit.index, start, min(size, stop - start)) for start in range(unit.start, stop, size)]

    def _dispatch_models(self) -> list:
        actions = []
        consumers = self.ready_consumers()
        end_game = self._in_end_game(len(consumers))
        prefetch = 1 if end_game else PREFETCH
        while self.decoded and consumers:
            slot = min(consumers, key=lambda s: len(s.tasks))
            if len(slot.tasks) >= prefetch:
                break
            unit = self.decoded.popleft()
            index = unit.index
            if index in self.resolved:
                continue
            if end_game and unit.n == N_WINDOWS_PER_FILE:
                parts = self._split(unit, len(consumers))
                self.n_files_in_parts += len(parts) > 1
                unit = parts[0]
                self.decoded.extendleft(reversed(parts[1:]))
            if index not in self.tier_of:  # one tier per file, whatever its parts
                self.tier_of[index] = self.budget.choose_tier(self._n_remaining(index), len(consumers))
            task_id = self._task_id()
            self._give(slot, task_id, unit)
            actions.append(SendModel(slot.wid, task_id, unit, self.slot_of[index], self.budget.dropped(self.tier_of[index])))
        return actions


def _n_windows(outputs) -> int:
    return int(outputs.embedding.shape[0])


def _concat(parts: list):
    from streamer.stages import ModelOutputs

    return ModelOutputs.concat(parts)
