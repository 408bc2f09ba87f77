"""The supervisor of the multiprocess engine: the only place that creates processes, pipes and
shared buffers.

Protocol
--------
* Every child (decoder or consumer) has its own duplex pipe to the parent. Nothing is shared
  between children, so a child that dies, even by SIGKILL in the middle of a message, can only
  break its own pipe; the parent notices through the pipe or the process sentinel.
* Window samples live in a fixed pool of *slots* in a shared-memory file (one file's 12 windows
  per slot). The pool's size bounds memory: decoders cannot run ahead of the models by more
  than the free slots.
* Parent → decoder: ``DecodeTask(file, slot)``; decoder → parent: ``Decoded`` or
  ``DecodeFailed``. Parent → consumer: ``ModelTask(slot, windows, tier)``; consumer → parent:
  ``ModelDone(outputs)``. Each child holds at most :data:`PREFETCH` tasks, so it never idles
  and never hoards work. Decoding starts as soon as the decoders are up, while the consumers
  are still loading their models.
* **The end of a run.** A model task is a whole file, except at the end: once every file has
  gone to the decoders, each file still waiting for a consumer is cut into parts (one per
  consumer, at least :data:`MIN_PART_WINDOWS` windows), and a consumer gets the next part only
  when it is idle. Without that, one consumer finishes its last file while another still holds
  one or two whole files, and the run's last second or so uses one consumer of several.
  Perch and the students see each window on its own, so parts give the same numbers.
* The parent reduces the files as their outputs arrive (prior, ProtoSSM folds,
  post-processing): :data:`REDUCE_BATCH` files at once while every consumer is busy (the
  folds' many small operators then run once per batch), whatever has arrived as soon as a
  consumer is idle (its CPU is free, as at the end of a run). Files already modelled when a
  run stops early (budget, error, Ctrl-C) are still reduced before fallback rows are written.
  The rows stream to the submission writer, which keeps sorted file order.
* A child that dies is named in the log; its tasks go back to the front of the line (a dead
  consumer's slots are still intact, so those files are not decoded again) and a replacement
  starts. A file in flight during :data:`MAX_FILE_ATTEMPTS` deaths gets fallback rows; a child
  slot that dies more than :data:`MAX_RESTARTS` times stops the run with an error, after the
  CSV is written with fallback rows.
* The budget monitor stops scoring at ``budget.stop_at``; every file without rows then gets
  prior-only rows, and the CSV is complete before the deadline.
* Shutdown order: Stop message → join with timeout → terminate → kill. Every wait is bounded.
"""

from __future__ import annotations

import collections
import logging
import multiprocessing as mp
import os
import resource
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import wait as wait_any
from pathlib import Path

from streamer.audio import WINDOW_SAMPLES
from streamer.budget import TIER_FULL, TIER_PRIOR_ONLY, Budget
from streamer.errors import StreamerError
from streamer.metadata import N_WINDOWS_PER_FILE
from streamer.pipeline.layout import Layout
from streamer.pipeline.messages import ChildError, DecodeFailed, Decoded, DecodeTask, ModelDone, ModelTask, Ready, Stop
from streamer.pipeline.workers import Fault, SlotBuffer, consumer_main, decoder_main, exit_hint, with_threads
from streamer.report import RunReport
from streamer.stages import ModelOutputs, Reducer, RunPlan, prior_fallback
from streamer.submission import SubmissionWriter

log = logging.getLogger(__name__)

#: Tasks a child may hold at once: one running, one waiting, so it never idles between tasks.
PREFETCH = 2
#: Smallest part a file is cut into at the end of a run (windows).
MIN_PART_WINDOWS = 3
#: Most files the parent reduces at once.
REDUCE_BATCH = 8
#: Deaths of a child slot before the run is stopped ("keeps dying").
MAX_RESTARTS = 3
#: Child deaths a file may be in flight for before it gets fallback rows instead of a retry.
MAX_FILE_ATTEMPTS = 3
#: Longest single wait of the event loop (seconds); it also bounds how late a deadline is seen.
EVENT_WAIT_S = 0.2
#: Shutdown: time for children to exit after Stop, then after SIGTERM (seconds).
JOIN_TIMEOUT_S = 3.0
TERMINATE_TIMEOUT_S = 2.0
#: Seconds a child may take to start and load its models before it is declared hung.
STARTUP_TIMEOUT_S = 600.0


class PipelineError(StreamerError):
    """The pipeline could not go on (a child failed or keeps dying).

    ``report`` is the run's report when scoring had begun: the CSV was then written, complete,
    with fallback rows, before this was raised. It is ``None`` for a failure while the children
    were starting (a configuration problem: no audio was read and no CSV written).
    """

    def __init__(self, message: str, report: RunReport | None = None) -> None:
        super().__init__(message)
        self.report = report


def _shm_dir(needed_bytes: int) -> str:
    """/dev/shm when it has room for the slots, else the temporary folder.

    Containers often mount a small /dev/shm (Docker's default is 64 MB); touching a page of a
    file there beyond its size kills the process with SIGBUS, so the space is checked first. A
    file in the temporary folder works the same way through the page cache.
    """
    shm = "/dev/shm"
    try:
        if os.path.isdir(shm) and os.access(shm, os.W_OK):
            st = os.statvfs(shm)
            if st.f_bavail * st.f_frsize >= 1.25 * needed_bytes:
                return shm
            log.info("/dev/shm has %.0f MB free, %.0f MB needed: window slots go to %s instead",
                     st.f_bavail * st.f_frsize / 2**20, needed_bytes / 2**20, tempfile.gettempdir())
    except OSError:
        pass
    return tempfile.gettempdir()


@dataclass(frozen=True)
class Unit:
    """A piece of work: windows ``start .. start + n`` of file ``index``."""

    index: int
    start: int = 0
    n: int = N_WINDOWS_PER_FILE


@dataclass
class Child:
    role: str
    wid: int
    generation: int
    process: mp.process.BaseProcess
    conn: object
    ready: bool = False
    tasks: dict[int, Unit] = field(default_factory=dict)  # task id → its unit
    maxrss_kb: int = 0

    @property
    def name(self) -> str:
        return f"{self.role} {self.wid} (pid {self.process.pid})"


class PipelineRunner:
    """Runs one plan through the pipeline.

    Args:
        plan: the checked run plan.
        layout: processes and threads.
        budget: the wall-clock budget.
        progress: show a tqdm progress bar.
        model_delay_s, students_delay_s, faults: test hooks (a slower model, slower students,
            injected child deaths).
    """

    def __init__(
        self,
        plan: RunPlan,
        layout: Layout,
        budget: Budget,
        *,
        progress: bool = False,
        model_delay_s: float = 0.0,
        students_delay_s: float = 0.0,
        faults: tuple[str, ...] = (),
        reduce_in_consumers: bool = False,
    ) -> None:
        self.plan = plan
        self.layout = layout
        self.budget = budget
        self.progress = progress
        self.delays = (model_delay_s, students_delay_s)
        self.reduce_in_consumers = reduce_in_consumers
        self.faults = tuple(Fault.parse(f) for f in faults)
        self.ctx = mp.get_context("spawn")
        self.spec = with_threads(plan.model, layout.threads)
        self.children: list[Child] = []
        self.restarts: collections.Counter = collections.Counter()
        self.next_task = 0
        n_jobs = len(plan.jobs)
        self.pending: collections.deque[int] = collections.deque(range(n_jobs))  # to decode
        self.decoded: collections.deque[Unit] = collections.deque()  # windows in a slot, waiting
        self.slot_of: dict[int, int] = {}
        self.parts: dict[int, dict[int, object]] = {}  # file index → {start: outputs} of its parts done
        self.to_reduce: list[tuple[int, object]] = []  # (file index, outputs) waiting for the reducer
        self.deferred: list[tuple[int, str]] = []  # files that failed to decode before the writer existed
        self.attempts: collections.Counter = collections.Counter()
        self.seconds = collections.defaultdict(float)
        self.fatal: str | None = None

    # ------------------------------------------------------------------ children

    def _start_child(self, role: str, wid: int, generation: int) -> Child:
        parent_conn, child_conn = self.ctx.Pipe(duplex=True)
        if role == "consumer":
            target = consumer_main
            args = (
                wid, generation, child_conn, os.getpid(), self.spec,
                self.plan.reducer if self.reduce_in_consumers else None, self.slots,
                self.layout.worker_cpus[wid], self.delays, self.faults,
            )
        else:
            target = decoder_main
            args = (wid, generation, child_conn, os.getpid(), self.slots, self.faults)
        process = self.ctx.Process(target=target, args=args, name=f"streamer-{role}-{wid}", daemon=True)
        process.start()
        child_conn.close()  # the parent keeps only its own end, so a dead child reads as EOF
        child = Child(role, wid, generation, process, parent_conn)
        self.children.append(child)
        log.debug("started %s", child.name)
        return child

    def _live(self, role: str) -> list[Child]:
        return [c for c in self.children if c.role == role]

    def _ready(self, role: str) -> list[Child]:
        return [c for c in self.children if c.role == role and c.ready]

    def _send(self, child: Child, msg) -> bool:
        try:
            child.conn.send(msg)
            return True
        except (OSError, EOFError):
            return False  # it died; the sentinel will tell

    # ------------------------------------------------------------------ rows

    def _done(self, index: int) -> bool:
        return self.writer is not None and self.writer.has(index)

    def _set_rows(self, index: int, probs, tier: str, reason: str | None) -> None:
        if self.writer.has(index):
            return  # a duplicate after a retry: the first result stands
        self.writer.set_file(index, probs)
        self.report.set_tier(self.plan.jobs[index].stem, tier, reason)
        if self.bar is not None:
            self.bar.update(1)

    def _fallback(self, index: int, reason: str) -> None:
        if self.writer is None:  # still starting: the rows are written once the writer exists
            self.deferred.append((index, reason))
            return
        self._release_slot(index)
        self.parts.pop(index, None)
        stem = self.plan.jobs[index].stem
        self._set_rows(index, prior_fallback(self.plan.reducer.prior, stem), TIER_PRIOR_ONLY, reason)

    # ------------------------------------------------------------------ dispatch

    def _n_remaining(self, also: int) -> int:
        """Files not yet sent (whole or in part) to a consumer, file ``also`` included."""
        waiting = {u.index for u in self.decoded} | {also}
        decoding = sum(len(c.tasks) for c in self.children if c.role == "decoder")
        return len(self.pending) + decoding + len(waiting - self.tier_of.keys())

    def _dispatch_decodes(self) -> None:
        decoders = self._ready("decoder")
        while self.pending and self.free_slots and decoders:
            child = min(decoders, key=lambda c: len(c.tasks))
            if len(child.tasks) >= PREFETCH:
                break
            index = self.pending.popleft()
            if self._done(index):
                continue
            slot = self.free_slots.pop()
            self.slot_of[index] = slot
            task_id = self._task_id()
            child.tasks[task_id] = Unit(index)
            if not self._send(child, DecodeTask(task_id, self.plan.jobs[index], slot)):
                break

    def _in_end_game(self) -> bool:
        """Every file has gone to the decoders: cut what is left into parts (see the notes)."""
        return not self.pending and not self.reduce_in_consumers and len(self._ready("consumer")) > 1

    def _split(self, unit: Unit, n_consumers: int) -> list[Unit]:
        size = max(MIN_PART_WINDOWS, -(-unit.n // n_consumers))
        return [Unit(unit.index, start, min(size, unit.start + unit.n - start)) for start in range(unit.start, unit.start + unit.n, size)]

    def _dispatch(self) -> None:
        self._dispatch_decodes()
        consumers = self._ready("consumer")
        end_game = self._in_end_game()
        prefetch = 1 if end_game else PREFETCH
        while self.decoded and consumers:
            child = min(consumers, key=lambda c: len(c.tasks))
            if len(child.tasks) >= prefetch:
                break
            unit = self.decoded.popleft()
            index = unit.index
            if self.writer.has(index):
                continue  # its slot went back to the pool when its rows were set
            if end_game and unit.n == N_WINDOWS_PER_FILE:
                parts = self._split(unit, len(consumers))
                self.report.n_files_in_parts += len(parts) > 1
                unit = parts[0]
                self.decoded.extendleft(reversed(parts[1:]))
            if index not in self.tier_of:  # one tier per file, whatever its parts
                self.tier_of[index] = self.budget.choose_tier(self._n_remaining(index), len(consumers))
            task_id = self._task_id()
            child.tasks[task_id] = unit
            task = ModelTask(task_id, self.slot_of[index], unit.n, self.tier_of[index] == TIER_FULL, self.plan.jobs[index].stem, unit.start)
            if not self._send(child, task):
                break

    def _task_id(self) -> int:
        self.next_task += 1
        return self.next_task

    # ------------------------------------------------------------------ events

    def _handle(self, child: Child, msg) -> None:
        if isinstance(msg, Ready):
            child.ready = True
            self.seconds[f"{msg.role}_startup_max"] = max(self.seconds[f"{msg.role}_startup_max"], msg.setup_s)
            log.debug("%s ready after %.1f s", child.name, msg.setup_s)
        elif isinstance(msg, Decoded):
            index = child.tasks.pop(msg.task_id).index
            self.seconds["decode"] += msg.seconds
            self.seconds["decode_cpu"] += msg.cpu_seconds
            child.maxrss_kb = max(child.maxrss_kb, msg.maxrss_kb)
            if msg.notes:
                log.info("%s: %s", self.plan.jobs[index].path.name, "; ".join(msg.notes))
            if self._done(index):
                self.free_slots.append(self.slot_of.pop(index))
            else:
                self.decoded.append(Unit(index))
        elif isinstance(msg, DecodeFailed):
            index = child.tasks.pop(msg.task_id).index
            self.seconds["decode"] += msg.seconds
            log.warning("%s: %s; writing prior-only fallback rows", self.plan.jobs[index].path, msg.error)
            self._fallback(index, f"unreadable: {msg.error}")
        elif isinstance(msg, ModelDone):
            unit = child.tasks.pop(msg.task_id)
            index = unit.index
            child.maxrss_kb = max(child.maxrss_kb, msg.maxrss_kb)
            self.seconds["perch"] += msg.perch_s
            self.seconds["students"] += msg.students_s
            self.seconds["protossm"] += msg.protossm_s
            self.seconds["postprocess"] += msg.postprocess_s
            self.seconds["consumers_busy"] += msg.busy_s
            # Costs per whole file (a part is scaled up); a consumer's own reduction is part of
            # its time per file (busy_s includes it).
            scale = N_WINDOWS_PER_FILE / unit.n
            self.budget.costs.observe_model(
                msg.perch_s * scale, msg.students_s * scale, max(0.0, msg.busy_s - msg.perch_s - msg.students_s) * scale
            )
            if self.writer.has(index):
                return
            if msg.probs is not None:  # the consumer reduced the whole file itself
                self._release_slot(index)
                self._file_scored(index, msg.probs)
                return
            parts = self.parts.setdefault(index, {})
            parts[unit.start] = msg.outputs
            if sum(p.embedding.shape[0] for p in parts.values()) < N_WINDOWS_PER_FILE:
                return  # other parts are still out
            del self.parts[index]
            self._release_slot(index)  # every window is modelled: the slot can take another file
            outputs = parts[0] if len(parts) == 1 else ModelOutputs.concat([parts[k] for k in sorted(parts)])
            self.to_reduce.append((index, outputs))
        elif isinstance(msg, ChildError):
            self.fatal = f"{child.name} failed during {msg.during}: {msg.error_type}: {msg.message}"
            log.error("%s\n%s", self.fatal, msg.traceback.rstrip())
            if msg.during == "setup":
                self.setup_error = msg
        else:
            raise TypeError(f"unexpected message from {child.name}: {type(msg).__name__}")

    def _release_slot(self, index: int) -> None:
        """Give file ``index``'s slot back to the pool, if it still holds one."""
        slot = self.slot_of.pop(index, None)
        if slot is not None:
            self.free_slots.append(slot)

    def _file_scored(self, index: int, probs) -> None:
        tier = self.tier_of.pop(index, TIER_FULL)
        self._set_rows(index, probs, tier, None if tier == TIER_FULL else "students dropped to meet the budget")

    def _reduce_waiting(self, force: bool = False) -> None:
        """Reduce the files whose outputs are all in: in batches of :data:`REDUCE_BATCH`, or
        whatever has arrived when ``force`` (a consumer is idle, or the run is ending)."""
        while self.to_reduce and (force or len(self.to_reduce) >= REDUCE_BATCH):
            batch, self.to_reduce = self.to_reduce[:REDUCE_BATCH], self.to_reduce[REDUCE_BATCH:]
            batch = [(i, o) for i, o in batch if not self.writer.has(i)]
            if not batch:
                continue
            t0 = time.perf_counter()
            probs = self.reducer.reduce_files([(self.plan.jobs[i].stem, o) for i, o in batch])
            per_file = (time.perf_counter() - t0) / len(batch)
            for (index, _), p in zip(batch, probs):
                self.budget.costs.observe_reduce(per_file)
                self._file_scored(index, p)

    def _drain(self, child: Child) -> bool:
        """Read every message waiting from a child. Returns False at EOF (the child is gone)."""
        try:
            while child.conn.poll(0):
                self._handle(child, child.conn.recv())
        except (EOFError, OSError):
            return False
        return True

    def _on_death(self, child: Child) -> None:
        child.process.join(timeout=1.0)
        code = child.process.exitcode
        self.children.remove(child)
        try:
            child.conn.close()
        except OSError:
            pass
        if self.fatal is not None or self.stopping:
            return
        log.error("%s died: %s; %d task(s) in flight go back to the queue", child.name, exit_hint(code), len(child.tasks))
        for unit in child.tasks.values():
            index = unit.index
            if self._done(index):
                continue
            self.attempts[index] += 1
            if self.attempts[index] >= MAX_FILE_ATTEMPTS:
                log.error("%s: in flight during %d crashes; writing fallback rows", self.plan.jobs[index].stem, self.attempts[index])
                self._fallback(index, f"{child.role} crashed {self.attempts[index]} times while handling this file")
            elif child.role == "consumer":
                self.decoded.appendleft(unit)  # the slot still holds its windows
            else:
                self.free_slots.append(self.slot_of.pop(index))
                self.pending.appendleft(index)
        key = (child.role, child.wid)
        self.restarts[key] += 1
        if self.restarts[key] > MAX_RESTARTS:
            self.fatal = f"{child.role} {child.wid} keeps dying ({self.restarts[key]} deaths, last: {exit_hint(code)})"
            log.error("%s; stopping the run", self.fatal)
            return
        self._start_child(child.role, child.wid, child.generation + 1)

    def _pump(self, timeout: float) -> None:
        """Wait for messages or deaths (bounded) and handle them."""
        by_conn = {c.conn: c for c in self.children}
        by_sentinel = {c.process.sentinel: c for c in self.children}
        ready = wait_any(list(by_conn) + list(by_sentinel), timeout=max(0.0, timeout))
        dead: list[Child] = []
        for obj in ready:
            child = by_conn.get(obj) or by_sentinel.get(obj)
            if child is None or child in dead:
                continue
            if not self._drain(child) or not child.process.is_alive():
                self._drain(child)  # anything it sent before it died still counts
                dead.append(child)
        for child in dead:
            self._on_death(child)

    # ------------------------------------------------------------------ run

    def run(self) -> RunReport:
        plan, budget = self.plan, self.budget
        t_start = time.perf_counter()
        out = Path(plan.config.out)
        self.report = RunReport(
            out=out, n_files=len(plan.jobs), source=plan.source, engine=f"pipeline: {self.layout.describe()}"
        )
        self.reducer = Reducer(plan.reducer)  # load the folds before any child starts
        self.tier_of: dict[int, str] = {}
        self.stopping = False
        self.setup_error: ChildError | None = None
        self.bar = None
        n_slots = (self.layout.n_workers + self.layout.n_decoders) * PREFETCH + 1
        slot_bytes = n_slots * N_WINDOWS_PER_FILE * WINDOW_SAMPLES * 4
        fd, slot_path = tempfile.mkstemp(prefix="streamer-slots-", suffix=".f32", dir=_shm_dir(slot_bytes))
        os.ftruncate(fd, slot_bytes)
        os.close(fd)
        self.slots = SlotBuffer(slot_path, n_slots, N_WINDOWS_PER_FILE * WINDOW_SAMPLES)
        self.free_slots = list(range(n_slots))
        self.writer = None
        reason = None
        try:
            if plan.jobs:
                for wid in range(self.layout.n_workers):
                    self._start_child("consumer", wid, 0)
                for wid in range(self.layout.n_decoders):
                    self._start_child("decoder", wid, 0)
                reason = self._wait_until_ready()
            t_ready = time.perf_counter()
            self.seconds["setup"] = t_ready - t_start
            self.writer = SubmissionWriter(out, [j.stem for j in plan.jobs], plan.competition.classes)
            for index, why in self.deferred:
                self._fallback(index, why)
            if reason is None and plan.jobs:
                self.bar = self._make_bar()
                reason = self._loop()
                self.seconds["scoring"] = time.perf_counter() - t_ready
        except KeyboardInterrupt:
            self.report.interrupted = True
            reason = "interrupted"
            log.warning("interrupted: stopping the children and writing prior-only rows for unfinished files")
        finally:
            # Finish writing whatever happens: a second Ctrl-C must not interrupt the write.
            in_main = threading.current_thread() is threading.main_thread()
            previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if in_main else None
            try:
                self.stopping = True
                try:
                    # The CSV first (the deadline is about the CSV), then the children.
                    if self.writer is not None:
                        self._finish(reason or "not scored")
                finally:
                    self._shutdown()
                    if self.bar is not None:
                        self.bar.close()
                    try:
                        os.unlink(slot_path)
                    except FileNotFoundError:
                        pass
            finally:
                if in_main:
                    signal.signal(signal.SIGINT, previous)
        self.seconds["total"] = time.perf_counter() - t_start
        for key, value in self.reducer.seconds.items():  # the parent's own reductions, if any
            self.seconds[key] += value
        self.report.seconds = {k: v for k, v in self.seconds.items() if not k.endswith("_startup_max")}
        self.report.budget_notes = list(budget.decisions)
        self._memory()
        if self.fatal is not None:
            self.report.error = self.fatal
        return self.report

    def _wait_until_ready(self) -> str | None:
        """Wait (bounded) until every consumer has loaded and checked its models.

        Returns None when ready, or the reason scoring cannot start (budget or fatal error).
        Raises PipelineError when a child fails in set-up: a configuration problem, reported
        before any audio is read and without writing a CSV.
        """
        t_limit = time.monotonic() + STARTUP_TIMEOUT_S
        while len(self._ready("consumer")) < self.layout.n_workers or len(self._ready("decoder")) < self.layout.n_decoders:
            if self.setup_error is not None:
                msg = self.setup_error
                raise PipelineError(f"{msg.role} {msg.wid} could not start: {msg.error_type}: {msg.message}")
            if self.fatal is not None:
                return "run stopped by an error"
            if self.budget.must_stop():
                return "the budget ran out before the models were ready"
            if time.monotonic() > t_limit:
                raise PipelineError(f"the children did not start within {STARTUP_TIMEOUT_S:.0f} s")
            self._dispatch_decodes()  # decoding overlaps the consumers' start-up
            self._pump(min(EVENT_WAIT_S, max(0.0, self.budget.time_left())))
        return None

    def _loop(self) -> str | None:
        """The event loop. Returns the reason files may still lack rows, or None."""
        n_jobs = len(self.plan.jobs)
        last = time.perf_counter()
        while self.writer.n_done < n_jobs:
            if self.fatal is not None:
                return "run stopped by an error"
            if self.budget.must_stop():
                left = n_jobs - self.writer.n_done
                log.warning("budget: the stop time has come with %d file(s) unscored; writing prior-only rows", left)
                return "not scored before the budget's stop"
            self._dispatch()
            # Idle consumers: a ready consumer with no work at all. "Starved" is the part of it
            # while files were still waiting to be decoded (decoding does not keep up); the rest
            # is the end of the run.
            idle = sum(1 for c in self._ready("consumer") if not c.tasks)
            starved = idle if self.pending else 0
            self._pump(min(EVENT_WAIT_S, max(0.0, self.budget.time_left())))
            self._dispatch()  # before reducing, so no consumer waits for the reducer
            now = time.perf_counter()
            self.seconds["consumers_starved"] += starved * (now - last)
            self.seconds["consumers_idle"] += idle * (now - last)
            last = now
            # Batches while the consumers are busy; at once when one is idle (its CPU is free).
            self._reduce_waiting(force=any(not c.tasks for c in self._ready("consumer")))
            self._update_bar()
        return None

    def _finish(self, reason: str) -> None:
        if self.to_reduce:
            try:
                self._reduce_waiting(force=True)  # files already modelled keep their scores
            except Exception as exc:  # noqa: BLE001 - the rows below are written whatever happened
                log.error("reducing the last %d modelled file(s) failed (%s: %s); they get fallback rows",
                          len(self.to_reduce), type(exc).__name__, exc)
        for index in self.writer.missing():
            self._fallback(index, reason)
        t0 = time.perf_counter()
        self.writer.close()
        self.seconds["write"] += time.perf_counter() - t0

    def _shutdown(self) -> None:
        """Stop → join with timeout → terminate → kill. Bounded in time.

        Idle children get a Stop message and exit at once. A child still holding tasks is busy
        with work whose result is no longer wanted (the rows are written), and one still loading
        its models cannot read the message: both are terminated straight away.
        """
        for child in self.children:
            if child.tasks or not child.ready:
                child.process.terminate()  # busy, or still loading: it cannot read Stop soon
            else:
                self._send(child, Stop())
        deadline = time.monotonic() + (0.5 if self.report.interrupted else JOIN_TIMEOUT_S)
        for child in self.children:
            child.process.join(timeout=max(0.0, deadline - time.monotonic()))
        for child in self.children:
            if child.process.is_alive():
                child.process.terminate()
        deadline = time.monotonic() + TERMINATE_TIMEOUT_S
        for child in self.children:
            child.process.join(timeout=max(0.0, deadline - time.monotonic()))
            if child.process.is_alive():
                log.warning("%s ignored SIGTERM; killing it", child.name)
                child.process.kill()
                child.process.join(timeout=1.0)
            try:
                child.conn.close()
            except OSError:
                pass
        self.children.clear()

    # ------------------------------------------------------------------ reporting

    def _make_bar(self):
        if not self.progress:
            return None
        from tqdm import tqdm

        return tqdm(total=len(self.plan.jobs), unit="file", desc="streamer", dynamic_ncols=True, leave=True)

    def _update_bar(self) -> None:
        if self.bar is None:
            return
        elapsed = time.monotonic() - self.budget.start
        done = self.writer.n_done
        rate = done * N_WINDOWS_PER_FILE / elapsed if elapsed > 0 else 0.0
        left = len(self.plan.jobs) - done
        projected = self.budget.projected_seconds(self.budget.tier, left, len(self._ready("consumer")))
        self.bar.set_postfix_str(
            f"{rate:.1f} win/s, RTF {rate * 5:.0f}x, finish ~{(elapsed + projected) / 60:.1f}"
            f"/{self.budget.budget_s / 60:.1f} min, tier {self.budget.tier}",
            refresh=False,
        )

    def _memory(self) -> None:
        parent_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        children_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        self.report.peak_rss_mb = {"parent": parent_kb / 1024.0, "largest child": children_kb / 1024.0}


def run_pipeline(plan: RunPlan, layout: Layout, budget: Budget, **kwargs) -> RunReport:
    """Run the plan through the multiprocess engine; raises :class:`PipelineError` after writing
    the CSV when the run could not be completed normally."""
    report = PipelineRunner(plan, layout, budget, **kwargs).run()
    if report.error is not None:
        raise PipelineError(report.error, report)
    return report
