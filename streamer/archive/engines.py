"""Engines of the archive mode: where the :class:`~streamer.archive.scorer.ArchiveScorer` runs.

- ``sequential``: one scorer in the calling process (the reference).
- ``local``: worker processes on this machine, each pinned to its own CPUs with its own thread
  count, each loading the models once and scoring units (inputs, or ranges of one), longest
  first, so the last long recording does not run alone at the end. The parent only hands out
  paths and collects outcomes; a worker that dies is restarted and its unit retried.
- ``ray``: the same scorer in Ray actors (one per worker process of the cluster), handed paths,
  never arrays. Every node must see the inputs, the model files and the output folder at the
  same paths (a shared file system).

Every engine takes a :class:`~streamer.archive.ranges.WorkQueue`: its units are whole inputs or
ranges of one (when there are fewer long inputs than workers), planned for the engine's worker
count. Every unit's files are written atomically by the process that scored it; outcomes go to
the queue (``work.report``), which joins an input's ranges and hands whole inputs to the driver,
which alone writes the journal. Progress goes to ``work.progress`` (per chunk, or per unit on
Ray).
"""

from __future__ import annotations

import collections
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from streamer import failpoints
from streamer.archive.ranges import WorkQueue
from streamer.archive.scorer import ArchiveScorer, ArchiveTask, TaskResult
from streamer.errors import DependencyError, StreamerError
from streamer.pipeline.layout import Layout
from streamer.config import DEFAULT_STARTUP_TIMEOUT_S, DEFAULT_TASK_TIMEOUT_S
from streamer.pipeline.children import (
    EVENT_WAIT_S, Body, ChildSpec, Death, Message, Ready, SlotHealth, Supervisor, hang_reason, thread_env,
)
from streamer.pipeline.attempts import Attempts, GaveUp, try_up_to
from streamer.metadata import ClassLabels
from streamer.stages import ModelSpec, ReducerSpec

log = logging.getLogger(__name__)

#: A Ray actor that Ray reports as restarting ("temporarily unavailable") is left alone this long
#: before it gets another task, and given up after this much waiting in all.
RAY_UNAVAILABLE_PAUSE_S = 1.0
RAY_UNAVAILABLE_LIMIT_S = 300.0

class ArchiveEngineError(StreamerError):
    """The engine could not go on; ``setup`` is true when it failed before scoring began (a
    configuration problem, nothing was written)."""

    def __init__(self, message: str, *, setup: bool = False) -> None:
        super().__init__(message)
        self.setup = setup


# ---------------------------------------------------------------------------- sequential


def run_sequential(work: WorkQueue, model_spec: ModelSpec, reducer_spec: ReducerSpec, classes: ClassLabels) -> None:
    try:
        scorer = ArchiveScorer(model_spec, reducer_spec, classes)
    except StreamerError as exc:
        raise ArchiveEngineError(str(exc), setup=True) from exc
    for task in work.plan(1):
        # An exception is as a worker's death in the local engine: retried, then failed.
        result = try_up_to(lambda: scorer.score(task, on_chunk=lambda audio_s: work.progress(task, audio_s)),
                           lambda cause: log.warning("%s: scoring it failed (%s); retrying it", task.label, cause))
        if isinstance(result, GaveUp):
            result = TaskResult(task.rel, False, f"scoring it failed {result.attempts} times (last: {result.cause})")
        work.report(task, result)


# ---------------------------------------------------------------------------- local processes


@dataclass(frozen=True)
class ChunkProgress:
    """Worker → parent: ``audio_s`` more seconds of the current input were scored."""

    audio_s: float


class ArchiveWorkerBody(Body):
    """A worker process: load the models once, then score the inputs the parent sends."""

    setup_point = "archive.worker_setup"

    def __init__(self, model_spec: ModelSpec, reducer_spec: ReducerSpec, classes: ClassLabels) -> None:
        self.model_spec = model_spec
        self.reducer_spec = reducer_spec
        self.classes = classes

    def setup(self, role: str, wid: int, generation: int) -> None:
        self.scorer = ArchiveScorer(self.model_spec, self.reducer_spec, self.classes)

    def handle(self, task: ArchiveTask, send) -> None:
        send(self.scorer.score(task, on_chunk=lambda audio_s: send(ChunkProgress(audio_s))))


@dataclass
class _Slot:
    health: SlotHealth = field(default_factory=SlotHealth)
    task: ArchiveTask | None = None
    since: float = 0.0  # when it last showed progress (task sent, or a chunk done)


class LocalEngine:
    """Worker processes on this machine (see the module notes).

    A worker that dies is restarted and its unit (input or range) retried, from the start for a
    one-chunk input, else after the chunks it kept; a unit in flight during
    :data:`~streamer.pipeline.attempts.MAX_FILE_ATTEMPTS` deaths with no chunk kept in between
    is reported failed. A worker slot is given up after deaths in a row without progress (a set-up error at
    once); when every slot is given up the run stops. A worker silent for ``task_timeout_s`` on an input (no chunk done), or not ready
    ``startup_timeout_s`` after it started, is declared hung and killed, which counts as a
    death."""

    def __init__(self, model_spec: ModelSpec, reducer_spec: ReducerSpec, classes, layout: Layout, *,
                 task_timeout_s: float = DEFAULT_TASK_TIMEOUT_S, startup_timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S) -> None:
        from streamer.pipeline.layout import with_threads

        self.model_spec = with_threads(model_spec, layout.threads)
        self.body = ArchiveWorkerBody(self.model_spec, reducer_spec, classes)
        self.layout = layout
        self.task_timeout_s = task_timeout_s
        self.startup_timeout_s = startup_timeout_s
        self.supervisor = Supervisor()
        self.slots: dict[int, _Slot] = {}
        self.attempts = Attempts()
        self.kill_reason: dict[int, str] = {}
        self.n_scored = 0
        self._setup_errors_only = True

    def _start(self, wid: int) -> None:
        self.supervisor.start(ChildSpec("worker", wid, self.body, cpus=self.layout.worker_cpus[wid],
                                        threads=self.model_spec.threads.intra_op_threads))

    def run(self, work: WorkQueue) -> None:
        """Score ``work.units`` (planned by the caller for this layout's workers)."""
        pending = collections.deque(work.units)
        n = min(self.layout.n_workers, max(1, len(pending)))
        sup = self.supervisor
        try:
            for wid in range(n):
                self.slots[wid] = _Slot()
                self._start(wid)
            while pending or any(s.task is not None for s in self.slots.values()):
                for wid, slot in self.slots.items():
                    child = sup.get("worker", wid)
                    while pending and not work.wanted(pending[0]):
                        pending.popleft()  # a range of an input that already failed
                    if child is not None and child.ready and slot.task is None and pending:
                        slot.task, slot.since = pending.popleft(), time.monotonic()
                        sup.send(child, slot.task)
                if all(s.health.given_up for s in self.slots.values()):
                    raise ArchiveEngineError(
                        f"every worker process kept dying; {len(pending)} input(s) or range(s) left unscored, rerun to resume",
                        setup=self.n_scored == 0 and self._setup_errors_only,
                    )
                for event in sup.wait(EVENT_WAIT_S):
                    if isinstance(event, Message):
                        self._on_message(event, work)
                    else:
                        self._on_death(event, pending, work)
                self._watch()
        finally:
            sup.shutdown(busy={("worker", w) for w, s in self.slots.items() if s.task is not None})

    def _on_message(self, event: Message, work: WorkQueue) -> None:
        slot, msg = self.slots[event.child.wid], event.msg
        if isinstance(msg, Ready):
            log.debug("%s ready in %.1f s", event.child.name, msg.setup_s)
        elif isinstance(msg, ChunkProgress):
            slot.since = time.monotonic()
            if slot.task is not None:
                if slot.task.span is not None:
                    # Its chunks are kept: a retry goes on after this one, so only deaths
                    # without a chunk kept in between count towards giving the unit up.
                    self.attempts.pop(slot.task.label, None)
                work.progress(slot.task, msg.audio_s)
        elif isinstance(msg, TaskResult):
            task, slot.task = slot.task, None
            slot.health.progressed()
            self.n_scored += 1
            work.report(task, msg)

    def _watch(self) -> None:
        now = time.monotonic()
        for wid, slot in self.slots.items():
            child = self.supervisor.get("worker", wid)
            if child is None or wid in self.kill_reason:
                continue
            reason = hang_reason(
                now=now, ready=child.ready, started=child.started, busy_since=slot.since if slot.task is not None else None,
                startup_timeout_s=self.startup_timeout_s, task_limit_s=self.task_timeout_s,
                working_on=slot.task.label if slot.task is not None else "",
            )
            if reason is None:
                continue
            self.kill_reason[wid] = reason
            log.error("%s %s; killing it", child.name, self.kill_reason[wid])
            self.supervisor.kill(child)

    def _on_death(self, death: Death, pending, work: WorkQueue) -> None:
        wid = death.child.wid
        slot = self.slots[wid]
        cause = self.kill_reason.pop(wid, None) or death.describe()
        setup_error = death.error is not None and death.error.during == "setup"
        if not setup_error:
            self._setup_errors_only = False
        if death.error is not None:
            log.debug("%s failed:\n%s", death.child.name, death.error.traceback)
        task, slot.task = slot.task, None
        settled = False
        if task is not None:
            work.discard(task)
            n, last = self.attempts.fail(task.label)
            if last:
                work.report(task, TaskResult(task.rel, False, f"the worker scoring it died {n} times (last: {cause})"))
                settled = True
            else:
                log.warning("%s died (%s) while scoring %s; retrying it", death.child.name, cause, task.label)
                pending.appendleft(task)
        else:
            log.warning("%s died (%s) while %s", death.child.name, cause, "idle" if death.child.ready else "starting")
        if settled:
            slot.health.progressed()
        elif slot.health.died(setup_error=setup_error):
            log.error("worker %d: giving up on it (%s)", wid, cause if setup_error else "it keeps dying without progress")
            return
        self._start(wid)  # Ready arrives through the event loop; tasks go out once it has


# ---------------------------------------------------------------------------- Ray


def import_ray():
    try:
        import ray
    except ImportError as exc:
        from streamer.install import install_hint
        raise DependencyError(f"the Ray engine needs Ray: {install_hint('ray')} (or pip install ray)") from exc
    return ray


class RayScorer:
    """The body of a Ray actor: an :class:`ArchiveScorer` loaded once per worker process.

    The students' ONNX exports travel as bytes and are written to the actor's own temporary
    folder, so nodes need no copy of the driver's temporary files."""

    def __init__(self, model_spec: ModelSpec, reducer_spec: ReducerSpec, classes, student_blobs) -> None:
        failpoints.hit("archive.worker_setup")
        # Thread counts: OMP_NUM_THREADS and kin come from the actor's runtime_env (set before
        # the process starts); onnxruntime's and torch's from model_spec.
        if student_blobs:
            self._tmp = tempfile.TemporaryDirectory(prefix="streamer-ray-")
            exported = []
            for name, blob in student_blobs:
                path = Path(self._tmp.name) / f"{name}.onnx"
                path.write_bytes(blob)
                exported.append((name, path))
            model_spec = replace(model_spec, exported=tuple(exported))
        self.scorer = ArchiveScorer(model_spec, reducer_spec, classes)
        self._progress = time.monotonic()

    def ping(self) -> int:
        return os.getpid()

    def score(self, task: ArchiveTask) -> TaskResult:
        self._progress = time.monotonic()
        return self.scorer.score(task, on_chunk=self._chunk_done)

    def _chunk_done(self, _seconds: float) -> None:
        self._progress = time.monotonic()

    def idle_s(self) -> float:
        """Seconds since the task in hand last finished a 60-s chunk (or began): the driver's
        hang check, answered from the actor's second thread while ``score`` runs."""
        return time.monotonic() - self._progress


def ray_layout(ray, workers: int | None, threads: int | str) -> tuple[int, int]:
    """(actors, threads per actor) from the cluster's CPUs: ``auto`` threads are 2 per actor
    (1 on a one-CPU cluster), the library default is not allowed (Ray sets OMP_NUM_THREADS)."""
    cluster_cpus = int(ray.cluster_resources().get("CPU", 1))
    if threads == "default":
        raise ArchiveEngineError("the Ray engine needs explicit threads (Ray sets OMP_NUM_THREADS itself): use --threads N or auto", setup=True)
    n_threads = int(threads) if threads != "auto" else (2 if cluster_cpus >= 2 else 1)
    n_actors = int(workers) if workers is not None else max(1, cluster_cpus // n_threads)
    return n_actors, n_threads


class RayEngine:
    """Ray actors scoring inputs and ranges of inputs (see the module notes)."""

    def __init__(self, model_spec: ModelSpec, reducer_spec: ReducerSpec, classes, *, address: str | None, workers: int | None,
                 threads: int | str, task_timeout_s: float = DEFAULT_TASK_TIMEOUT_S) -> None:
        self.task_timeout_s = task_timeout_s
        self.model_spec = model_spec
        self.reducer_spec = reducer_spec
        self.classes = classes
        self.address = address
        self.workers = workers
        self.threads = threads
        self.attempts = Attempts()

    def _student_blobs(self):
        """The exported members' ONNX files as bytes (an actor may run on another node)."""
        return tuple((name, Path(p).read_bytes()) for name, p in self.model_spec.exported) or None

    def run(self, work: WorkQueue) -> None:
        """Plan ``work`` for the cluster's actors and score it."""
        from streamer.pipeline.layout import with_threads

        ray = import_ray()
        from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError

        started_here = not ray.is_initialized()
        if started_here:
            ray.init(address=self.address, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=True)
        actors = []
        try:
            n_actors, n_threads = ray_layout(ray, self.workers, self.threads)
            units = work.plan(n_actors)
            n_actors = min(n_actors, max(1, len(units)))
            log.info("engine: ray, %d actor(s) x %d thread(s) on a cluster of %d CPU(s)", n_actors, n_threads,
                     int(ray.cluster_resources().get("CPU", 0)))
            spec = with_threads(self.model_spec, n_threads)
            actor_cls = ray.remote(RayScorer).options(
                num_cpus=n_threads, max_restarts=-1,  # the loop below decides when an actor is given up
                max_concurrency=2,  # a second thread answers the hang check (idle_s) while score runs
                runtime_env={"env_vars": {**thread_env(n_threads), **failpoints.environment()}},
            )
            blobs = self._student_blobs()
            actors = [actor_cls.remote(spec, self.reducer_spec, self.classes, blobs) for _ in range(n_actors)]
            try:
                ray.get([a.ping.remote() for a in actors])
            except (RayActorError, RayTaskError) as exc:
                raise ArchiveEngineError(f"Ray actors failed to start: {exc}", setup=True) from exc
            self._loop(ray, actors, collections.deque(units), work, (ActorUnavailableError, RayActorError, RayTaskError))
        finally:
            for actor in actors:
                ray.kill(actor)
            if started_here:
                ray.shutdown()

    def _retry_or_fail(self, task: ArchiveTask, what: str, cause: str, pending, work: WorkQueue) -> bool:
        """Count an attempt of ``task``: back to the queue, or reported failed after
        :data:`~streamer.pipeline.attempts.MAX_FILE_ATTEMPTS` (then True: the unit is settled)."""
        n, last = self.attempts.fail(task.label)
        if last:
            work.report(task, TaskResult(task.rel, False, f"{what} {n} times (last: {cause})"))
            return True
        log.warning("%s: %s (%s); retrying it", task.label, what, cause)
        pending.appendleft(task)
        return False

    def _kill_hung(self, ray, in_flight, checks: dict, started: dict) -> None:
        """The local engine's hang rule: an actor that finished no 60-s chunk for
        ``task_timeout_s``, or has not answered the check for that long (a call that holds the
        GIL), is killed; Ray restarts it, and its task comes back as a death below (counted,
        retried). Checks are sent without waiting for them (``checks``: actor -> (reference,
        when sent)), so one silent actor never holds up the others' results, and only to actors
        whose task began more than ``task_timeout_s`` ago (``started``): a younger one cannot
        be hung yet."""
        now = time.monotonic()
        busy = {actor: task for actor, task in in_flight.values() if now - started.get(actor, now) > self.task_timeout_s}
        for actor in list(checks):
            if actor not in busy:
                del checks[actor]
        for actor in busy:
            if actor not in checks:
                checks[actor] = (actor.idle_s.remote(), now)
        refs = [ref for ref, _ in checks.values()]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        ready = set(ready)
        for actor, (ref, sent) in list(checks.items()):
            if ref in ready:
                del checks[actor]
                try:
                    idle = ray.get(ref)
                except Exception as exc:  # the actor died meanwhile: its task reports that
                    log.debug("hang check of a Ray actor: %s", exc)
                    continue
            elif now - sent > self.task_timeout_s:
                del checks[actor]
                idle = now - sent
            else:
                continue
            if idle > self.task_timeout_s:
                log.warning("%s: the Ray actor scoring it finished no chunk for %.0f s (hung); killing it",
                            busy[actor].label, idle)
                ray.kill(actor, no_restart=False)

    def _loop(self, ray, actors, pending, work: WorkQueue, errors) -> None:
        ActorUnavailableError, RayActorError, RayTaskError = errors
        idle = list(actors)
        health: dict = collections.defaultdict(SlotHealth)
        in_flight = {}
        resting: dict = {}  # actor → when it may get a task again (Ray is restarting it)
        waited: collections.Counter = collections.Counter()  # actor → seconds rested in all
        restarting: set = set()  # actors whose death was counted and that have not answered since
        checks: dict = {}  # actor -> (its pending hang check, when it was sent)
        started: dict = {}  # actor -> when its task in hand was given
        while pending or in_flight:
            now = time.monotonic()
            for actor, until in list(resting.items()):
                if until <= now:
                    del resting[actor]
                    idle.append(actor)
            while pending and not work.wanted(pending[0]):
                pending.popleft()  # a range of an input that already failed
            while idle and pending:
                actor, task = idle.pop(0), pending.popleft()
                in_flight[actor.score.remote(task)] = (actor, task)
                started[actor] = time.monotonic()
            if not in_flight:
                if resting:
                    time.sleep(max(0.0, min(resting.values()) - time.monotonic()))
                    continue
                raise ArchiveEngineError(
                    f"every Ray actor kept dying; {len(pending)} input(s) or range(s) left unscored, rerun to resume"
                )
            done, _ = ray.wait(list(in_flight), num_returns=1, timeout=EVENT_WAIT_S)
            self._kill_hung(ray, in_flight, checks, started)
            for ref in done:
                actor, task = in_flight.pop(ref)
                try:
                    result = ray.get(ref)
                except RayActorError as exc:  # ActorUnavailableError included
                    work.discard(task)
                    if isinstance(exc, ActorUnavailableError) and actor in restarting:
                        # Ray is still restarting an actor whose death was already counted: the
                        # task was not run. Not a death of its own; the input goes back to the
                        # front and the actor rests a moment, up to a limit.
                        pending.appendleft(task)
                        waited[actor] += RAY_UNAVAILABLE_PAUSE_S
                        if waited[actor] <= RAY_UNAVAILABLE_LIMIT_S:
                            resting[actor] = time.monotonic() + RAY_UNAVAILABLE_PAUSE_S
                        else:
                            log.warning("a Ray actor stayed unavailable for %.0f s; giving it up", waited[actor])
                        continue
                    # The actor died (or went away) while it held this input: a death.
                    if self._retry_or_fail(task, "the Ray actor scoring it died", str(exc), pending, work):
                        health[actor].progressed()
                    elif health[actor].died():
                        log.error("a Ray actor keeps dying without progress; giving it up")
                        continue
                    restarting.add(actor)  # Ray restarts it; let it come back
                    resting[actor] = time.monotonic() + RAY_UNAVAILABLE_PAUSE_S
                    continue
                except RayTaskError as exc:  # an error inside the task; the actor lives on
                    work.discard(task)
                    cause = exc.cause if getattr(exc, "cause", None) is not None else exc
                    self._retry_or_fail(task, "scoring it failed", f"{type(cause).__name__}: {cause}", pending, work)
                    restarting.discard(actor)
                    idle.append(actor)
                    continue
                restarting.discard(actor)  # it answered: it is up
                health[actor].progressed()
                idle.append(actor)
                if result.ok:
                    work.progress(task, result.audio_s)
                work.report(task, result)
