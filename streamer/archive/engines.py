"""Engines of the archive mode: where the :class:`~streamer.archive.scorer.ArchiveScorer` runs.

- ``sequential``: one scorer in the calling process (the reference).
- ``local``: worker processes on this machine, each pinned to its own CPUs with its own thread
  count, each loading the models once and scoring whole inputs (longest first, so the last
  long recording does not run alone at the end). The parent only hands out paths and collects
  outcomes; a worker that dies is restarted and its input retried.
- ``ray``: the same scorer in Ray actors (one per worker process of the cluster), handed paths,
  never arrays. Every node must see the inputs, the model files and the output folder at the
  same paths (a shared file system).

Every engine writes each input's file atomically from the process that scored it and reports
the outcome to the driver, which alone writes the journal. Outcomes arrive through
``on_result(task, result)``, progress through ``on_progress(rel, seconds_of_audio)`` (per chunk,
or per input on Ray).
"""

from __future__ import annotations

import collections
import logging
import multiprocessing as mp
import os
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from multiprocessing.connection import wait
from pathlib import Path
from typing import Callable

from streamer.archive.output import remove_temporaries_of
from streamer.archive.scorer import ArchiveScorer, ArchiveTask, TaskResult
from streamer.errors import DependencyError, StreamerError
from streamer.pipeline.layout import Layout
from streamer.pipeline.messages import ChildError, Ready, Stop
from streamer.pipeline.workers import FaultTrigger, _report_error, _serve, _setup, exit_hint, thread_env
from streamer.stages import ModelSpec, ReducerSpec

log = logging.getLogger(__name__)

#: Restarts of one worker slot before it is given up.
MAX_RESTARTS = 3
#: Worker deaths an input may be in flight for before it is reported failed.
MAX_FILE_ATTEMPTS = 3
EVENT_WAIT_S = 0.5
#: A Ray actor that Ray reports as restarting ("temporarily unavailable") is left alone this long
#: before it gets another task, and given up after this much waiting in all.
RAY_UNAVAILABLE_PAUSE_S = 1.0
RAY_UNAVAILABLE_LIMIT_S = 300.0
JOIN_TIMEOUT_S = 5.0
STARTUP_TIMEOUT_S = 600.0

OnResult = Callable[[ArchiveTask, TaskResult], None]
OnProgress = Callable[[str, float], None]


class ArchiveEngineError(StreamerError):
    """The engine could not go on; ``setup`` is true when it failed before scoring began (a
    configuration problem, nothing was written)."""

    def __init__(self, message: str, *, setup: bool = False) -> None:
        super().__init__(message)
        self.setup = setup


def longest_first(tasks: list[ArchiveTask]) -> list[ArchiveTask]:
    """Longest inputs first (unknown durations last), so workers finish together."""
    return sorted(tasks, key=lambda t: -(t.audio_s if t.audio_s is not None else -1.0))


# ---------------------------------------------------------------------------- sequential


def run_sequential(tasks, model_spec: ModelSpec, reducer_spec: ReducerSpec, classes, on_result: OnResult, on_progress: OnProgress) -> None:
    try:
        scorer = ArchiveScorer(model_spec, reducer_spec, classes)
    except StreamerError as exc:
        raise ArchiveEngineError(str(exc), setup=True) from exc
    for task in tasks:
        on_result(task, scorer.score(task, on_chunk=lambda audio_s: on_progress(task.rel, audio_s)))


# ---------------------------------------------------------------------------- local processes


@dataclass(frozen=True)
class ChunkProgress:
    wid: int
    audio_s: float


def archive_worker_main(wid, generation, conn, parent_pid, model_spec, reducer_spec, classes, cpus, faults) -> None:
    """A worker process: load the models once, then score the inputs the parent sends.

    An injected fault (tests) counts *chunks* here: ``worker:0:3`` dies on its 3rd chunk."""
    during = "setup"
    try:
        t0 = time.perf_counter()
        _setup(cpus, model_spec.threads.intra_op_threads)
        scorer = ArchiveScorer(model_spec, reducer_spec, classes)
        trigger = FaultTrigger(faults, "worker", wid, generation)
        conn.send(Ready("worker", wid, os.getpid(), time.perf_counter() - t0))
        during = "work"

        def on_chunk(audio_s: float) -> None:
            trigger.tick()
            conn.send(ChunkProgress(wid, audio_s))

        def handle(task: ArchiveTask) -> None:
            conn.send(scorer.score(task, on_chunk=on_chunk))

        _serve(conn, parent_pid, handle)
    except (EOFError, BrokenPipeError):
        return
    except BaseException as exc:  # every error travels to the parent as data, then we exit 1
        _report_error(conn, "worker", wid, during, exc)
        sys.exit(1)


@dataclass
class _Worker:
    wid: int
    generation: int
    process: mp.process.BaseProcess
    conn: object
    ready: bool = False
    task: ArchiveTask | None = None
    error: ChildError | None = None

    @property
    def name(self) -> str:
        return f"worker {self.wid} (pid {self.process.pid})"


class LocalEngine:
    """Worker processes on this machine (see the module notes)."""

    def __init__(self, model_spec: ModelSpec, reducer_spec: ReducerSpec, classes, layout: Layout, *, faults=()) -> None:
        from streamer.pipeline.workers import Fault, with_threads

        self.model_spec = with_threads(model_spec, layout.threads)
        self.reducer_spec = reducer_spec
        self.classes = tuple(classes)
        self.layout = layout
        self.faults = tuple(Fault.parse(f) for f in faults)
        self.ctx = mp.get_context("spawn")
        self.workers: dict[int, _Worker] = {}
        self.restarts: collections.Counter = collections.Counter()
        self.attempts: collections.Counter = collections.Counter()

    def _start(self, wid: int, generation: int) -> _Worker:
        parent_conn, child_conn = self.ctx.Pipe(duplex=True)
        process = self.ctx.Process(
            target=archive_worker_main,
            args=(wid, generation, child_conn, os.getpid(), self.model_spec, self.reducer_spec, self.classes,
                  self.layout.worker_cpus[wid], self.faults),
            name=f"streamer-archive-{wid}",
            daemon=True,
        )
        process.start()
        child_conn.close()  # a dead child then reads as EOF
        worker = _Worker(wid, generation, process, parent_conn)
        self.workers[wid] = worker
        return worker

    def run(self, tasks: list[ArchiveTask], on_result: OnResult, on_progress: OnProgress) -> None:
        pending = collections.deque(tasks)
        n = min(self.layout.n_workers, max(1, len(tasks)))
        try:
            for wid in range(n):
                self._start(wid, 0)
            self._wait_ready()
            while pending or any(w.task is not None for w in self.workers.values()):
                for worker in self.workers.values():
                    if worker.ready and worker.task is None and pending:
                        worker.task = pending.popleft()
                        worker.conn.send(worker.task)
                if not self.workers:
                    raise ArchiveEngineError(
                        f"every worker process kept dying ({MAX_RESTARTS} restarts each); "
                        f"{len(pending)} input(s) left unscored, rerun to resume"
                    )
                self._pump(pending, on_result, on_progress)
        finally:
            self._shutdown()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not all(w.ready for w in self.workers.values()):
            if time.monotonic() > deadline:
                raise ArchiveEngineError(f"worker processes did not start within {STARTUP_TIMEOUT_S:.0f} s", setup=True)
            for worker in list(self.workers.values()):
                if worker.ready:
                    continue
                alive = worker.process.is_alive()
                if worker.conn.poll(0.1):
                    try:
                        msg = worker.conn.recv()
                    except (EOFError, OSError):
                        msg = None  # the pipe closed: the worker is gone
                    if isinstance(msg, Ready):
                        worker.ready = True
                        log.debug("%s ready in %.1f s", worker.name, msg.setup_s)
                        continue
                    if isinstance(msg, ChildError):
                        log.debug("%s failed during set-up:\n%s", worker.name, msg.traceback)
                        raise ArchiveEngineError(f"{msg.error_type}: {msg.message}", setup=True)
                    if msg is None:
                        alive = False
                if not alive:
                    worker.process.join(JOIN_TIMEOUT_S)
                    raise ArchiveEngineError(f"{worker.name} died while starting ({exit_hint(worker.process.exitcode)})", setup=True)

    def _pump(self, pending, on_result: OnResult, on_progress: OnProgress) -> None:
        by_handle = {}
        for worker in self.workers.values():
            by_handle[worker.conn] = worker
            by_handle[worker.process.sentinel] = worker
        for handle in wait(list(by_handle), timeout=EVENT_WAIT_S):
            worker = by_handle[handle]
            if self.workers.get(worker.wid) is not worker:
                continue  # already replaced this round
            if not self._drain(worker, on_result, on_progress):
                self._on_death(worker, pending, on_result)

    def _drain(self, worker: _Worker, on_result: OnResult, on_progress: OnProgress) -> bool:
        """Read every waiting message; False when the worker is gone."""
        try:
            while worker.conn.poll(0):
                msg = worker.conn.recv()
                if isinstance(msg, ChunkProgress):
                    if worker.task is not None:
                        on_progress(worker.task.rel, msg.audio_s)
                elif isinstance(msg, TaskResult):
                    task, worker.task = worker.task, None
                    on_result(task, msg)
                elif isinstance(msg, ChildError):
                    worker.error = msg
                elif isinstance(msg, Ready):
                    worker.ready = True
        except (EOFError, OSError):
            return False
        return worker.process.is_alive()

    def _on_death(self, worker: _Worker, pending, on_result: OnResult) -> None:
        worker.process.join(JOIN_TIMEOUT_S)
        hint = exit_hint(worker.process.exitcode)
        del self.workers[worker.wid]
        task = worker.task
        if task is not None:
            remove_temporaries_of(task.out)
            if worker.error is not None:
                # An error other than unreadable audio (e.g. the output disk is full).
                reason = f"{worker.error.error_type}: {worker.error.message}"
                log.debug("%s failed on %s:\n%s", worker.name, task.rel, worker.error.traceback)
                on_result(task, TaskResult(task.rel, False, reason))
            else:
                self.attempts[task.rel] += 1
                if self.attempts[task.rel] >= MAX_FILE_ATTEMPTS:
                    on_result(task, TaskResult(task.rel, False, f"the worker scoring it died {self.attempts[task.rel]} times (last: {hint})"))
                else:
                    log.warning("%s died (%s) while scoring %s; retrying it", worker.name, hint, task.rel)
                    pending.appendleft(task)
        else:
            log.warning("%s died (%s) while idle", worker.name, hint)
        self.restarts[worker.wid] += 1
        if self.restarts[worker.wid] > MAX_RESTARTS:
            log.error("%s keeps dying; not restarting it", worker.name)
            return
        self._start(worker.wid, worker.generation + 1)
        # Ready arrives through the event loop; tasks go out once it has.

    def _shutdown(self) -> None:
        for worker in self.workers.values():
            try:
                worker.conn.send(Stop())
            except (OSError, EOFError):
                pass  # already gone: joined below all the same
        deadline = time.monotonic() + JOIN_TIMEOUT_S
        for worker in self.workers.values():
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.conn.close()
        self.workers.clear()


# ---------------------------------------------------------------------------- Ray


def import_ray():
    try:
        import ray
    except ImportError as exc:
        raise DependencyError("the Ray engine needs Ray: pip install 'streamer[ray]' (or pip install ray)") from exc
    return ray


class RayScorer:
    """The body of a Ray actor: an :class:`ArchiveScorer` loaded once per worker process.

    The students' ONNX exports travel as bytes and are written to the actor's own temporary
    folder, so nodes need no copy of the driver's temporary files."""

    def __init__(self, model_spec: ModelSpec, reducer_spec: ReducerSpec, classes, student_blobs, wid: int = 0, faults=()) -> None:
        import ray

        # Thread counts: OMP_NUM_THREADS and kin come from the actor's runtime_env (set before
        # the process starts); onnxruntime's and torch's from model_spec.
        if student_blobs is not None:
            self._tmp = tempfile.TemporaryDirectory(prefix="streamer-ray-")
            paths = []
            for name, blob in student_blobs:
                if blob is None:
                    paths.append(None)
                    continue
                path = Path(self._tmp.name) / name
                path.write_bytes(blob)
                paths.append(path)
            model_spec = replace(model_spec, students_onnx=tuple(paths))
        self.scorer = ArchiveScorer(model_spec, reducer_spec, classes)
        # Test hook, as in the local workers: die on the n-th chunk (first incarnation only).
        generation = 1 if ray.get_runtime_context().was_current_actor_reconstructed else 0
        self.trigger = FaultTrigger(faults, "worker", wid, generation)

    def ping(self) -> int:
        return os.getpid()

    def score(self, task: ArchiveTask) -> TaskResult:
        return self.scorer.score(task, on_chunk=lambda audio_s: self.trigger.tick())


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
    """Ray actors scoring whole inputs (see the module notes)."""

    def __init__(self, model_spec: ModelSpec, reducer_spec: ReducerSpec, classes, *, address: str | None, workers: int | None, threads: int | str, faults=()) -> None:
        from streamer.pipeline.workers import Fault

        self.faults = tuple(Fault.parse(f) for f in faults)
        self.model_spec = model_spec
        self.reducer_spec = reducer_spec
        self.classes = tuple(classes)
        self.address = address
        self.workers = workers
        self.threads = threads
        self.attempts: collections.Counter = collections.Counter()

    def _student_blobs(self):
        paths = self.model_spec.students_onnx
        if paths is None:
            return None
        return tuple((f"student_{kind}.onnx", None if p is None else Path(p).read_bytes()) for kind, p in zip(("cnn", "crnn"), paths))

    def run(self, tasks: list[ArchiveTask], on_result: OnResult, on_progress: OnProgress) -> None:
        from streamer.pipeline.workers import with_threads

        ray = import_ray()
        from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError

        started_here = not ray.is_initialized()
        if started_here:
            ray.init(address=self.address, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=True)
        actors = []
        try:
            n_actors, n_threads = ray_layout(ray, self.workers, self.threads)
            n_actors = min(n_actors, max(1, len(tasks)))
            log.info("engine: ray, %d actor(s) x %d thread(s) on a cluster of %d CPU(s)", n_actors, n_threads,
                     int(ray.cluster_resources().get("CPU", 0)))
            spec = with_threads(self.model_spec, n_threads)
            actor_cls = ray.remote(RayScorer).options(
                num_cpus=n_threads, max_restarts=MAX_RESTARTS, runtime_env={"env_vars": thread_env(n_threads)}
            )
            blobs = self._student_blobs()
            actors = [actor_cls.remote(spec, self.reducer_spec, self.classes, blobs, wid, self.faults) for wid in range(n_actors)]
            try:
                ray.get([a.ping.remote() for a in actors])
            except (RayActorError, RayTaskError) as exc:
                raise ArchiveEngineError(f"Ray actors failed to start: {exc}", setup=True) from exc
            self._loop(ray, actors, collections.deque(tasks), on_result, on_progress, (ActorUnavailableError, RayActorError, RayTaskError))
        finally:
            for actor in actors:
                ray.kill(actor)
            if started_here:
                ray.shutdown()

    def _loop(self, ray, actors, pending, on_result, on_progress, errors) -> None:
        ActorUnavailableError, RayActorError, RayTaskError = errors
        idle = list(actors)
        failures: collections.Counter = collections.Counter()
        in_flight = {}
        resting: dict = {}  # actor → when it may get a task again (Ray is restarting it)
        waited: collections.Counter = collections.Counter()  # actor → seconds rested in all
        restarting: set = set()  # actors whose death was counted and that have not answered since
        while pending or in_flight:
            now = time.monotonic()
            for actor, until in list(resting.items()):
                if until <= now:
                    del resting[actor]
                    idle.append(actor)
            while idle and pending:
                actor, task = idle.pop(0), pending.popleft()
                in_flight[actor.score.remote(task)] = (actor, task)
            if not in_flight:
                if resting:
                    time.sleep(max(0.0, min(resting.values()) - time.monotonic()))
                    continue
                raise ArchiveEngineError(
                    f"every Ray actor kept dying; {len(pending)} input(s) left unscored, rerun to resume"
                )
            done, _ = ray.wait(list(in_flight), num_returns=1, timeout=EVENT_WAIT_S)
            for ref in done:
                actor, task = in_flight.pop(ref)
                try:
                    result = ray.get(ref)
                except RayActorError as exc:  # ActorUnavailableError included
                    remove_temporaries_of(task.out)
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
                    failures[actor] += 1
                    self.attempts[task.rel] += 1
                    if self.attempts[task.rel] >= MAX_FILE_ATTEMPTS:
                        on_result(task, TaskResult(task.rel, False, f"the Ray actor scoring it died {self.attempts[task.rel]} times ({exc})"))
                    else:
                        log.warning("a Ray actor died while scoring %s; retrying it", task.rel)
                        pending.appendleft(task)
                    if failures[actor] <= MAX_RESTARTS:
                        restarting.add(actor)  # Ray restarts it (max_restarts); let it come back
                        resting[actor] = time.monotonic() + RAY_UNAVAILABLE_PAUSE_S
                    continue
                except RayTaskError as exc:
                    cause = exc.cause if getattr(exc, "cause", None) is not None else exc
                    result = TaskResult(task.rel, False, f"{type(cause).__name__}: {cause}")
                restarting.discard(actor)  # it answered: it is up
                idle.append(actor)
                if result.ok:
                    on_progress(task.rel, result.audio_s)
                on_result(task, result)
