"""Bodies of the child processes. Module-level functions: they pickle under ``spawn`` and read
no globals; everything they need arrives as arguments.

Child set-up runs in a fixed order: ignore SIGINT (the parent handles Ctrl-C and stops the
children) → die with the parent → pin CPUs → set thread counts → load models → warm up →
report ready.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import sys
import time
import traceback
from dataclasses import dataclass, replace

import numpy as np

from streamer.audio import WINDOW_SAMPLES
from streamer.pipeline.messages import (
    ChildError,
    DecodeFailed,
    Decoded,
    DecodeTask,
    ModelDone,
    ModelTask,
    Ready,
    Stop,
)

#: Scheduling niceness of decoder processes. Decoding is a few percent of the work and runs
#: ahead of the models, so it can wait; at equal priority it preempts a consumer's intra-op
#: threads, and one delayed thread stalls the whole parallel operator. Measured on the 2-vCPU VM
#: (3 interleaved runs each, 24 files): 24.1-24.4 windows/s at nice 10 vs 22.0-22.5 at nice 0.
DECODER_NICE = 10
#: How often an idle child checks that its parent is still alive (seconds).
PARENT_POLL_S = 0.5
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class SlotBuffer:
    """Where the window slots live: a file in shared memory, ``n_slots × slot_samples`` float32."""

    path: str
    n_slots: int
    slot_samples: int

    def open(self, mode: str) -> np.ndarray:
        return np.memmap(self.path, dtype=np.float32, mode=mode, shape=(self.n_slots, self.slot_samples))


@dataclass(frozen=True)
class Fault:
    """A fault injected for tests: the child kills itself with SIGKILL on receiving its
    ``at_task``-th task (first incarnation only, unless ``always``)."""

    role: str
    wid: int | None
    at_task: int
    always: bool = False

    @classmethod
    def parse(cls, text: str) -> "Fault":
        parts = text.split(":")
        if len(parts) not in (3, 4) or parts[0] not in ("consumer", "decoder", "worker") or (len(parts) == 4 and parts[3] != "always"):
            raise ValueError(f"bad fault spec {text!r}; expected role:id:n[:always]")
        return cls(parts[0], None if parts[1] == "*" else int(parts[1]), int(parts[2]), len(parts) == 4)

    def applies(self, role: str, wid: int, generation: int) -> bool:
        return self.role == role and (self.wid is None or self.wid == wid) and (self.always or generation == 0)


class FaultTrigger:
    """Counts a child's tasks and kills the child at an injected fault's task number."""

    def __init__(self, faults, role: str, wid: int, generation: int) -> None:
        self.at = {f.at_task for f in faults if f.applies(role, wid, generation)}
        self.n_tasks = 0

    def tick(self) -> None:
        self.n_tasks += 1
        if self.n_tasks in self.at:
            os.kill(os.getpid(), signal.SIGKILL)


def exit_hint(code: int | None) -> str:
    """A child process's exit code in words (for the parent's messages)."""
    if code is None:
        return "still running"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (likely the OOM killer, or an external kill)" if code == -signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return f"exit code {code}"


#: Variables through which OpenMP and BLAS libraries read their thread counts.
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def thread_env(threads: int) -> dict[str, str]:
    """Environment that gives every OpenMP/BLAS pool ``threads`` threads."""
    return {var: str(threads) for var in THREAD_ENV_VARS}


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (no orphans even if the parent is
    killed); elsewhere the polling loop notices the parent is gone."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass  # not glibc Linux: the PARENT_POLL_S check covers it


def _setup(cpus: tuple[int, ...], threads: int | None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    if cpus:
        os.sched_setaffinity(0, cpus)
    if threads is not None:
        # Before torch or any BLAS is imported in this process.
        os.environ.update(thread_env(threads))


def _maxrss_kb() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def _serve(conn, parent_pid: int, handle) -> None:
    """Receive messages until Stop, EOF, or the parent disappears."""
    while True:
        if not conn.poll(PARENT_POLL_S):
            if os.getppid() != parent_pid:
                return
            continue
        msg = conn.recv()
        if isinstance(msg, Stop):
            return
        handle(msg)


def _report_error(conn, role: str, wid: int, during: str, exc: BaseException) -> None:
    try:
        conn.send(ChildError(role, wid, during, type(exc).__name__, str(exc), traceback.format_exc()))
    except (OSError, EOFError):
        pass  # the parent is gone; the exit code still tells


def consumer_main(wid, generation, conn, parent_pid, spec, reducer_spec, slots: SlotBuffer, cpus, delays, faults) -> None:
    """A model process: Perch and the students on windows read from the slot buffer, then, when
    ``reducer_spec`` is given, the file's reduction (prior, ProtoSSM folds, post-processing).

    ``delays`` = (seconds added to every task, seconds added when the students run): test
    hooks that make the model look slower."""
    during = "setup"
    try:
        t0 = time.perf_counter()
        _setup(cpus, spec.threads.intra_op_threads)
        from streamer.stages import ModelStage, Reducer

        stage = ModelStage(spec)
        stage.check()
        reducer = Reducer(reducer_spec) if reducer_spec is not None else None
        buffer = slots.open("r+")  # writable only so torch accepts it without a copy; never written here
        trigger = FaultTrigger(faults, "consumer", wid, generation)
        conn.send(Ready("consumer", wid, os.getpid(), time.perf_counter() - t0))
        during = "work"

        def handle(task: ModelTask) -> None:
            trigger.tick()
            t_start = time.perf_counter()
            if reducer is not None and task.start != 0:
                raise ValueError("a consumer that reduces needs whole files, not parts")
            span = slice(task.start * WINDOW_SAMPLES, (task.start + task.n_windows) * WINDOW_SAMPLES)
            windows = buffer[task.slot, span].reshape(task.n_windows, WINDOW_SAMPLES)
            outputs = stage.run(np.asarray(windows), with_students=task.with_students)
            perch_s, students_s = stage.last_seconds
            extra_s = delays[0] + (delays[1] if task.with_students else 0.0)
            if extra_s:
                time.sleep(extra_s)
                students_s += delays[1] if task.with_students else 0.0
            probs, protossm_s, post_s = None, 0.0, 0.0
            if reducer is not None:
                before = dict(reducer.seconds)
                probs = reducer.reduce(task.stem, outputs)
                protossm_s = reducer.seconds["protossm"] - before["protossm"]
                post_s = reducer.seconds["postprocess"] - before["postprocess"]
                outputs = None
            busy_s = time.perf_counter() - t_start
            conn.send(ModelDone(task.task_id, outputs, probs, perch_s, students_s, protossm_s, post_s, busy_s, _maxrss_kb()))

        _serve(conn, parent_pid, handle)
    except (EOFError, BrokenPipeError):
        return  # the parent closed our pipe: nothing left to do
    except BaseException as exc:  # every error travels to the parent as data, then we exit 1
        _report_error(conn, "consumer", wid, during, exc)
        sys.exit(1)


def decoder_main(wid, generation, conn, parent_pid, slots: SlotBuffer, faults) -> None:
    """A decoder process: files → windows written into the slot buffer."""
    during = "setup"
    try:
        t0 = time.perf_counter()
        _setup((), None)
        os.nice(DECODER_NICE)
        from streamer.stages import decode_job

        buffer = slots.open("r+")
        trigger = FaultTrigger(faults, "decoder", wid, generation)
        conn.send(Ready("decoder", wid, os.getpid(), time.perf_counter() - t0))
        during = "work"

        def handle(task: DecodeTask) -> None:
            trigger.tick()
            t_start, cpu_start = time.perf_counter(), time.process_time()
            decoded = decode_job(task.job, out=buffer[task.slot])  # straight into the shared slot
            if decoded.windows is None:
                conn.send(DecodeFailed(task.task_id, decoded.error or "unreadable", time.perf_counter() - t_start))
                return
            conn.send(Decoded(task.task_id, decoded.notes, time.perf_counter() - t_start, _maxrss_kb(), time.process_time() - cpu_start))

        _serve(conn, parent_pid, handle)
    except (EOFError, BrokenPipeError):
        return
    except BaseException as exc:
        _report_error(conn, "decoder", wid, during, exc)
        sys.exit(1)


def with_threads(spec, threads: int | None):
    """The model spec with this layout's thread count."""
    return replace(spec, threads=replace(spec.threads, intra_op_threads=threads))
