"""The multiprocess engine: a thin event loop between the child processes, the scheduler and
the row sink.

* :class:`~streamer.pipeline.children.Supervisor` starts the decoder and consumer processes
  and turns what happens to them into events (messages, deaths);
* :class:`~streamer.infer.scheduler.Scheduler` decides what to do about each event
  (dispatch, retries, fallbacks, restarts, hangs, the budget's stop), without processes;
* :class:`~streamer.infer.rows.RowSink` reduces the modelled files (in batches of
  :data:`~streamer.infer.rows.REDUCE_BATCH` while every consumer is busy, at once when one is idle)
  and streams the rows to the CSV in file order.

Window samples live in a fixed pool of *slots* in a shared-memory file (one file's 12 windows
per slot); decoders write into them and consumers read from them, so only slot numbers travel
on the pipes, and the pool's size bounds memory. When the run ends (every file has rows, the
budget's stop, an error, Ctrl-C), the CSV is finished first (the deadline is about the CSV),
then the children are stopped.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from streamer.audio import WINDOW_SAMPLES
from streamer.errors import OutputWriteError
from streamer.files import pid_alive
from streamer.infer import scheduler as sch
from streamer.infer.budget import Budget
from streamer.infer.messages import DecodeFailed, Decoded, DecodeTask, ModelDone, ModelTask
from streamer.infer.report import MEMBER_SECONDS, RunReport
from streamer.infer.rows import RowSink, sigint_deferred
from streamer.infer.workers import DECODER_NICE, ConsumerBody, DecoderBody, SlotBuffer
from streamer.metadata import N_WINDOWS_PER_FILE
from streamer.pipeline.children import EVENT_WAIT_S, STARTUP_TIMEOUT_S, ChildSpec, Death, Message, Ready, Supervisor, maxrss_kb
from streamer.pipeline.layout import Layout, with_threads
from streamer.stages import RunPlan

log = logging.getLogger(__name__)


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
    except OSError as exc:
        log.debug("/dev/shm not usable (%s)", exc)
    return tempfile.gettempdir()


SLOT_PREFIX = "streamer-slots-"


def remove_stale_slot_files(folder: str) -> None:
    """Remove window-slot files of runs whose parent was killed (``streamer-slots-<pid>-*``)."""
    for path in Path(folder).glob(f"{SLOT_PREFIX}*.f32"):
        pid = path.name[len(SLOT_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            path.unlink(missing_ok=True)
            log.info("removed %s, left by a run that was killed", path)


class PipelineRunner:
    """Runs one plan through the pipeline, into ``sink``.

    Args:
        plan: the checked run plan.
        layout: processes and threads.
        budget: the wall-clock budget.
        sink: where rows go (its CSV is finished by :meth:`run`).
        report: the run report (engine, seconds, memory, errors are filled in).
        reduce_in_consumers: each consumer reduces its own files (no end-of-run parts).
        task_timeout_s, startup_timeout_s: hang limits (see :mod:`streamer.infer.scheduler`).
    """

    def __init__(
        self,
        plan: RunPlan,
        layout: Layout,
        budget: Budget,
        sink: RowSink,
        report: RunReport,
        *,
        reduce_in_consumers: bool = False,
        task_timeout_s: float = sch.TASK_TIMEOUT_S,
        startup_timeout_s: float = STARTUP_TIMEOUT_S,
    ) -> None:
        self.plan = plan
        self.layout = layout
        self.budget = budget
        self.sink = sink
        self.report = report
        self.reduce_in_consumers = reduce_in_consumers
        self.spec = with_threads(plan.model, layout.threads)
        self.seconds: dict[str, float] = defaultdict(float)
        self.peak_kb: dict[str, int] = {}  # largest resident peak reported per role
        n_slots = (layout.n_workers + layout.n_decoders) * sch.PREFETCH + 1
        self.scheduler = sch.Scheduler(
            [j.stem for j in plan.jobs], n_consumers=layout.n_workers, n_decoders=layout.n_decoders, n_slots=n_slots,
            budget=budget, split_end=not reduce_in_consumers, task_timeout_s=task_timeout_s,
            startup_timeout_s=startup_timeout_s,
        )
        self.n_slots = n_slots
        self.supervisor = Supervisor(clock=budget.clock)
        self.t_ready: float | None = None

    # ------------------------------------------------------------------ actions

    def _spec(self, role: str, wid: int) -> ChildSpec:
        if role == sch.CONSUMER:
            body = ConsumerBody(self.spec, self.plan.reducer if self.reduce_in_consumers else None, self.slots)
            return ChildSpec(role, wid, body, cpus=self.layout.worker_cpus[wid], threads=self.spec.threads.intra_op_threads)
        return ChildSpec(role, wid, DecoderBody(self.slots), nice=DECODER_NICE)

    def _execute(self, actions: list) -> None:
        for action in actions:
            if isinstance(action, sch.Modelled):
                self.sink.add_modelled(action.index, action.outputs, action.tier)
            elif isinstance(action, sch.Scored):
                self.sink.add_scored(action.index, action.probs, action.tier)
            elif isinstance(action, sch.Fallback):
                path = self.plan.jobs[action.index].path
                where = "" if str(path) in action.reason else f"{path}: "  # decode errors name the file already
                log.warning("%s%s; writing prior-only rows", where, action.reason)
                self.sink.fallback(action.index, action.reason)
            elif isinstance(action, sch.SendDecode):
                child = self.supervisor.get(sch.DECODER, action.wid)
                if child is not None:
                    self.supervisor.send(child, DecodeTask(action.task_id, self.plan.jobs[action.index], action.slot))
            elif isinstance(action, sch.SendModel):
                child = self.supervisor.get(sch.CONSUMER, action.wid)
                unit = action.unit
                if child is not None:
                    self.supervisor.send(child, ModelTask(action.task_id, action.slot, unit.n, action.dropped,
                                                          self.plan.jobs[unit.index].stem, unit.start))
            elif isinstance(action, sch.StartChild):
                self.supervisor.start(self._spec(action.role, action.wid))
            elif isinstance(action, sch.KillChild):
                child = self.supervisor.get(action.role, action.wid)
                if child is not None:
                    self.supervisor.kill(child)
            elif isinstance(action, sch.Finish):
                pass  # the loop sees scheduler.finish
            else:
                raise TypeError(f"unknown action {action!r}")

    # ------------------------------------------------------------------ events

    def _on_message(self, event: Message) -> list:
        child, msg = event.child, event.msg
        if isinstance(msg, Ready):
            key = f"{msg.role}_startup_max"
            self.seconds[key] = max(self.seconds[key], msg.setup_s)
            log.debug("%s ready after %.1f s", child.name, msg.setup_s)
            return self.scheduler.on_ready(child.role, child.wid)
        if isinstance(msg, (Decoded, ModelDone)):
            self.peak_kb[child.role] = max(self.peak_kb.get(child.role, 0), msg.maxrss_kb)
        if isinstance(msg, Decoded):
            self.seconds["decode"] += msg.seconds
            self.seconds["decode_cpu"] += msg.cpu_seconds
            if msg.notes:
                unit = self.scheduler.slots[(child.role, child.wid)].tasks.get(msg.task_id)
                name = self.plan.jobs[unit.index].path.name if unit is not None else "a file"
                log.info("%s: %s", name, "; ".join(msg.notes))
            return self.scheduler.on_decoded(child.wid, msg.task_id)
        if isinstance(msg, DecodeFailed):
            self.seconds["decode"] += msg.seconds
            return self.scheduler.on_decode_failed(child.wid, msg.task_id, msg.error)
        if isinstance(msg, ModelDone):
            for name, value in msg.member_s:  # each member's own time, for the report and the bench
                self.seconds[f"{MEMBER_SECONDS}{name}"] += value
            for key, value in (("perch", msg.perch_s), ("members", sum(s for _, s in msg.member_s)), ("protossm", msg.protossm_s),
                               ("postprocess", msg.postprocess_s), ("consumers_busy", msg.busy_s)):
                self.seconds[key] += value
            return self.scheduler.on_model_done(child.wid, msg.task_id, outputs=msg.outputs, probs=msg.probs,
                                                perch_s=msg.perch_s, member_s=dict(msg.member_s), busy_s=msg.busy_s)
        raise TypeError(f"unexpected message from {child.name}: {type(msg).__name__}")

    def _on_death(self, death: Death) -> list:
        child = death.child
        if death.error is not None:
            log.error("%s died: %s\n%s", child.name, death.describe(), death.error.traceback.rstrip())
        else:
            log.error("%s died: %s", child.name, death.describe())
        setup_error = death.error is not None and death.error.during == "setup"
        return self.scheduler.on_death(child.role, child.wid, death.describe(), setup_error=setup_error)

    def _step(self) -> None:
        scheduler = self.scheduler
        idle = scheduler.idle_consumers()
        starved = idle if scheduler.pending else 0
        t0 = time.perf_counter()
        events = self.supervisor.wait(scheduler.wait_timeout(EVENT_WAIT_S))
        # Idle consumers: a ready consumer with no work at all. "Starved" is the part of it while
        # files were still waiting to be decoded (decoding does not keep up); the rest is the end
        # of the run.
        waited = time.perf_counter() - t0
        self.seconds["consumers_idle"] += idle * waited
        self.seconds["consumers_starved"] += starved * waited
        for event in events:
            actions = self._on_message(event) if isinstance(event, Message) else self._on_death(event)
            self._execute(actions)
        self._execute(scheduler.on_tick())
        if self.t_ready is None and len(scheduler.ready_consumers()) == self.layout.n_workers:
            self.t_ready = time.perf_counter()
            self.sink.start_progress()
        # Batches while the consumers are busy; at once when one is idle (its CPU is free).
        self.sink.reduce_waiting(force=scheduler.idle_consumers() > 0)
        self.sink.update_progress(len(scheduler.ready_consumers()))

    # ------------------------------------------------------------------ run

    def run(self) -> RunReport:
        """Score every file; the CSV is complete when this returns (or raises
        :class:`OutputWriteError` when it could not be written)."""
        t_start = time.perf_counter()
        report, scheduler = self.report, self.scheduler
        report.engine = f"pipeline: {self.layout.describe()}"
        slot_bytes = self.n_slots * N_WINDOWS_PER_FILE * WINDOW_SAMPLES * 4
        folder = _shm_dir(slot_bytes)
        remove_stale_slot_files(folder)
        fd, slot_path = tempfile.mkstemp(prefix=f"{SLOT_PREFIX}{os.getpid()}-", suffix=".f32", dir=folder)
        reason: str | None = None
        try:
            os.ftruncate(fd, slot_bytes)
            os.close(fd)
            self.slots = SlotBuffer(slot_path, self.n_slots, N_WINDOWS_PER_FILE * WINDOW_SAMPLES)
            self._execute(scheduler.start())
            while not scheduler.all_resolved and scheduler.finish is None:
                self._step()
            if scheduler.finish is not None:
                reason, report.error = scheduler.finish.reason, scheduler.finish.error
        except KeyboardInterrupt:
            report.interrupted = True
            reason = "interrupted"
            log.warning("interrupted: stopping the children and writing prior-only rows for unfinished files")
        except OutputWriteError:
            raise
        except Exception as exc:  # noqa: BLE001 - a bug in the parent still ends with a complete CSV
            report.error = f"{type(exc).__name__}: {exc}"
            reason = "run stopped by an error"
            log.exception("the pipeline failed; writing prior-only rows for the unfinished files")
        finally:
            with sigint_deferred() as late:
                try:
                    if self.t_ready is not None:
                        self.seconds["scoring"] = time.perf_counter() - self.t_ready
                    if not self.sink.broken:
                        self.sink.finish(reason or "not scored")  # the CSV first, then the children
                finally:
                    self.supervisor.shutdown(busy=scheduler.busy_slots(), interrupted=report.interrupted)
                    try:
                        os.unlink(slot_path)
                    except FileNotFoundError:
                        log.debug("the slot file %s was already gone", slot_path)
            if late.seen:
                report.interrupted = True
        self.seconds["setup"] = (self.t_ready or time.perf_counter()) - t_start
        self.seconds["total"] = time.perf_counter() - t_start
        for key, value in list(self.sink.seconds.items()) + list(self.sink.reducer.seconds.items()):
            self.seconds[key] += value
        report.seconds.update({k: v for k, v in self.seconds.items() if not k.endswith("_startup_max")})
        report.budget_notes = list(self.budget.decisions)
        report.n_files_in_parts = scheduler.n_files_in_parts
        # The parent's own peak, read as the children's are: ru_maxrss would start at the size of
        # whatever process started this one (840 MB under streamer bench, whatever the engine).
        report.peak_rss_mb = {"parent": maxrss_kb() / 1024.0}
        report.peak_rss_mb.update({f"{role} (largest)": kb / 1024.0 for role, kb in sorted(self.peak_kb.items())})
        return report
