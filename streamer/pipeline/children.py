"""The child-process layer: the only place that creates processes and pipes.

Every user of worker processes goes through it: the ``infer`` pipeline (decoders and
consumers), the archive's local engine (workers) and the ceiling benchmark.

Protocol
--------
* **spawn only.** onnxruntime sessions and torch thread pools do not survive ``fork``; every
  child builds its own models.
* **One duplex pipe per child.** Nothing is shared between children, so a child that dies,
  even by SIGKILL in the middle of a message, can only break its own pipe. The parent keeps only
  its end, so a dead child reads as end-of-file.
* **Thread variables** (``OMP_NUM_THREADS`` and kin) are in a child's environment from its first
  instruction (:meth:`Supervisor.start` sets them around ``start()``): unpickling the child's
  arguments imports numpy, which sizes its BLAS pool then.
* **One wait** (:meth:`Supervisor.wait`) over every pipe and every process sentinel. It returns
  :class:`Message` events, then a :class:`Death` for each child that ended (after every message
  it sent before it ended).
* **The child's entry** (:func:`child_main`) runs a :class:`Body` in a fixed order: ignore
  SIGINT (the parent handles Ctrl-C and stops the children) → die with the parent (Linux
  parent-death signal, plus a poll of the parent's pid) → pin to its CPUs → niceness → the
  body's set-up (its failpoint first) → :class:`Ready` → serve messages until :class:`Stop` or
  end-of-file. An exception travels to the parent as a :class:`ChildError` (type, message,
  traceback, set-up or work), then the child exits 1; the parent reports it with the death.
* **Restart accounting** (:class:`SlotHealth`): a child slot is given up after
  :data:`MAX_DEATHS_WITHOUT_PROGRESS` deaths in a row with no progress in between (a task
  finished, or the task at fault settled); a set-up error is not retried.
* **One shutdown order** (:meth:`Supervisor.shutdown`): Stop to the idle children → join with a
  timeout → terminate → join → kill. Every wait is bounded, by the constants below.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing as mp
import os
import resource
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import wait as wait_any

from streamer import failpoints
from streamer.config import DEFAULT_STARTUP_TIMEOUT_S

log = logging.getLogger(__name__)

#: Longest single wait of an event loop (seconds); it also bounds how late a deadline is seen.
EVENT_WAIT_S = 0.2
#: Shutdown: time for children to exit after Stop, after SIGTERM, after SIGKILL (seconds).
JOIN_TIMEOUT_S = 3.0
TERMINATE_TIMEOUT_S = 2.0
KILL_TIMEOUT_S = 2.0
#: Shutdown after Ctrl-C: the user is waiting, the results are no longer wanted.
INTERRUPTED_JOIN_TIMEOUT_S = 0.5
#: How often an idle child checks that its parent is still alive (seconds).
PARENT_POLL_S = 0.5
#: Seconds a child may take to start and load its models before it is declared hung.
STARTUP_TIMEOUT_S = DEFAULT_STARTUP_TIMEOUT_S
#: Deaths in a row, without progress in between, after which a child slot is given up.
MAX_DEATHS_WITHOUT_PROGRESS = 3
_PR_SET_PDEATHSIG = 1

#: Variables through which OpenMP and BLAS libraries read their thread counts.
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def thread_env(threads: int) -> dict[str, str]:
    """Environment that gives every OpenMP/BLAS pool ``threads`` threads."""
    return {var: str(threads) for var in THREAD_ENV_VARS}


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


def maxrss_kb() -> int:
    """Peak resident memory of this process's own image (KiB).

    ``VmHWM`` from /proc, not ``getrusage``: Linux carries ``ru_maxrss`` across ``exec``, so a
    spawned child's ``ru_maxrss`` starts at its parent's resident size at the time of the fork
    (measured: a child of a 2 GB parent reported 2 GB while holding 29 MB)."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


# ---------------------------------------------------------------------------- messages


@dataclass(frozen=True)
class Stop:
    """Parent → child: finish the current message, then exit."""


@dataclass(frozen=True)
class Ready:
    """Child → parent: set-up done (``setup_s`` seconds after the child started)."""

    role: str
    wid: int
    pid: int
    setup_s: float


@dataclass(frozen=True)
class ChildError:
    """Child → parent: an exception; the child exits right after. ``during`` is ``setup`` or
    ``work``."""

    role: str
    wid: int
    during: str
    error_type: str
    message: str
    traceback: str

    def describe(self) -> str:
        return f"{self.error_type}: {self.message}"


# ---------------------------------------------------------------------------- the child side


class Body:
    """What a child process does; subclasses are module-level, picklable and hold only what
    :meth:`setup` needs (paths and settings, never sessions).

    ``setup_point`` names the failpoint passed at the start of the set-up."""

    setup_point: str | None = None

    def setup(self, role: str, wid: int, generation: int) -> None:
        """Load models and open buffers (in the child)."""

    def handle(self, msg, send) -> None:
        """Serve one message; ``send`` sends a reply to the parent."""
        raise NotImplementedError


@dataclass(frozen=True)
class ChildSpec:
    """How to start one child: its role and slot, its body, CPUs, threads and niceness."""

    role: str
    wid: int
    body: Body
    cpus: tuple[int, ...] = ()
    threads: int | None = None
    nice: int = 0


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (no orphans even if the parent is
    killed); elsewhere the polling loop notices the parent is gone."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError as exc:  # not glibc Linux: the PARENT_POLL_S check covers it
        log.debug("no parent-death signal (%s); relying on the parent poll", exc)


def _report_error(conn, role: str, wid: int, during: str, exc: BaseException) -> None:
    try:
        conn.send(ChildError(role, wid, during, type(exc).__name__, str(exc), traceback.format_exc()))
    except (OSError, EOFError) as send_exc:  # the parent is gone; the exit code still tells
        print(f"streamer {role} {wid}: {type(exc).__name__}: {exc} (parent unreachable: {send_exc})", file=sys.stderr)


def child_main(spec: ChildSpec, generation: int, conn, parent_pid: int) -> None:
    """The entry of every child process (see the module notes for the order of set-up)."""
    during = "setup"
    try:
        t0 = time.perf_counter()
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _die_with_parent()
        if os.getppid() != parent_pid:
            return  # the parent died before the signal was armed
        if spec.cpus:
            os.sched_setaffinity(0, spec.cpus)
        if spec.nice:
            os.nice(spec.nice)
        if spec.body.setup_point:
            failpoints.hit(spec.body.setup_point)
        spec.body.setup(spec.role, spec.wid, generation)
        conn.send(Ready(spec.role, spec.wid, os.getpid(), time.perf_counter() - t0))
        during = "work"
        while True:
            if not conn.poll(PARENT_POLL_S):
                if os.getppid() != parent_pid:
                    return
                continue
            msg = conn.recv()
            if isinstance(msg, Stop):
                return
            spec.body.handle(msg, conn.send)
    except (EOFError, BrokenPipeError):
        return  # the parent closed our pipe: nothing left to do
    except BaseException as exc:  # every error travels to the parent as data, then we exit 1
        _report_error(conn, spec.role, spec.wid, during, exc)
        sys.exit(1)


# ---------------------------------------------------------------------------- the parent side


@dataclass
class Child:
    """A running child, as the parent sees it."""

    role: str
    wid: int
    generation: int
    process: mp.process.BaseProcess
    conn: object
    started: float
    ready: bool = False
    error: ChildError | None = None

    @property
    def key(self) -> tuple[str, int]:
        return (self.role, self.wid)

    @property
    def name(self) -> str:
        return f"{self.role} {self.wid} (pid {self.process.pid})"


@dataclass(frozen=True)
class Message:
    child: Child
    msg: object


@dataclass(frozen=True)
class Death:
    """A child ended. ``error`` is the exception it reported before it exited, if any."""

    child: Child
    exitcode: int | None
    error: ChildError | None

    @property
    def hint(self) -> str:
        return exit_hint(self.exitcode)

    def describe(self) -> str:
        if self.error is not None:
            return f"failed during {self.error.during}: {self.error.describe()}"
        return self.hint


def hang_reason(*, now: float, ready: bool, started: float, busy_since: float | None, startup_timeout_s: float,
                task_limit_s: float, working_on: str) -> str | None:
    """Why a child is hung, or None: not ready ``startup_timeout_s`` after it ``started``, or
    busy since ``busy_since`` for longer than ``task_limit_s`` (on ``working_on``)."""
    if not ready:
        if now - started > startup_timeout_s:
            return f"did not start within {startup_timeout_s:.0f} s (hung)"
    elif busy_since is not None and now - busy_since > task_limit_s:
        return f"no answer for {task_limit_s:.0f} s on {working_on} (hung)"
    return None


@dataclass
class SlotHealth:
    """Restart accounting of one child slot: deaths in a row without progress."""

    deaths_in_a_row: int = 0
    given_up: bool = False

    def progressed(self) -> None:
        self.deaths_in_a_row = 0

    def died(self, *, setup_error: bool = False) -> bool:
        """Count a death; True when the slot is given up (a set-up error at once: it would
        only repeat)."""
        self.deaths_in_a_row += 1
        if setup_error or self.deaths_in_a_row >= MAX_DEATHS_WITHOUT_PROGRESS:
            self.given_up = True
        return self.given_up


class Supervisor:
    """Starts, watches and stops child processes (see the module notes)."""

    def __init__(self, clock=time.monotonic) -> None:
        self.ctx = mp.get_context("spawn")
        self.clock = clock
        self.children: dict[tuple[str, int], Child] = {}
        self.generations: dict[tuple[str, int], int] = {}

    def start(self, spec: ChildSpec) -> Child:
        """Start a child for ``spec``'s slot (a new generation if the slot had one before)."""
        key = (spec.role, spec.wid)
        if key in self.children:
            raise RuntimeError(f"{spec.role} {spec.wid} is still running")
        generation = self.generations.get(key, -1) + 1
        self.generations[key] = generation
        parent_conn, child_conn = self.ctx.Pipe(duplex=True)
        process = self.ctx.Process(
            target=child_main, args=(spec, generation, child_conn, os.getpid()),
            name=f"streamer-{spec.role}-{spec.wid}", daemon=True,
        )
        # The thread variables must be in the child's environment from its first instruction:
        # unpickling its arguments imports numpy (and OpenBLAS sizes its pool) before
        # child_main runs. A spawned child inherits the environment at start().
        saved = {var: os.environ.get(var) for var in THREAD_ENV_VARS}
        if spec.threads is not None:
            os.environ.update(thread_env(spec.threads))
        try:
            process.start()
        finally:
            for var, value in saved.items():
                if value is None:
                    os.environ.pop(var, None)
                else:
                    os.environ[var] = value
        child_conn.close()  # the parent keeps only its own end, so a dead child reads as EOF
        child = Child(spec.role, spec.wid, generation, process, parent_conn, self.clock())
        self.children[key] = child
        log.debug("started %s", child.name)
        return child

    def get(self, role: str, wid: int) -> Child | None:
        return self.children.get((role, wid))

    def of_role(self, role: str) -> list[Child]:
        return [c for c in self.children.values() if c.role == role]

    def send(self, child: Child, msg) -> bool:
        """Send ``msg``; False when the child is gone (its death is reported by :meth:`wait`)."""
        try:
            child.conn.send(msg)
            return True
        except (OSError, EOFError):
            return False

    def kill(self, child: Child) -> None:
        """SIGKILL a child (hung); its death is reported by :meth:`wait`."""
        if child.process.is_alive():
            child.process.kill()

    def _drain(self, child: Child, events: list) -> bool:
        """Read every message waiting from ``child``; False at end-of-file."""
        try:
            while child.conn.poll(0):
                msg = child.conn.recv()
                if isinstance(msg, ChildError):
                    child.error = msg
                    continue
                if isinstance(msg, Ready):
                    child.ready = True
                events.append(Message(child, msg))
        except (EOFError, OSError):
            return False
        return True

    def wait(self, timeout: float) -> list:
        """Wait (at most ``timeout`` seconds) for messages or deaths; returns the events:
        :class:`Message` in arrival order, then :class:`Death` for children that ended."""
        if not self.children:
            time.sleep(max(0.0, timeout))
            return []
        by_handle = {}
        for child in self.children.values():
            by_handle[child.conn] = child
            by_handle[child.process.sentinel] = child
        events: list = []
        dead: list[Child] = []
        for handle in wait_any(list(by_handle), timeout=max(0.0, timeout)):
            child = by_handle[handle]
            if child in dead:
                continue
            if not self._drain(child, events) or not child.process.is_alive():
                self._drain(child, events)  # what it sent before it ended still counts
                dead.append(child)
        for child in dead:
            child.process.join(timeout=JOIN_TIMEOUT_S)
            if child.process.is_alive():  # closed its pipe but did not exit
                child.process.kill()
                child.process.join(timeout=KILL_TIMEOUT_S)
            del self.children[child.key]
            self._close(child)
            events.append(Death(child, child.process.exitcode, child.error))
        return events

    @staticmethod
    def _close(child: Child) -> None:
        try:
            child.conn.close()
        except OSError as exc:
            log.debug("%s: closing its pipe: %s", child.name, exc)

    def shutdown(self, *, busy: set[tuple[str, int]] = frozenset(), interrupted: bool = False) -> None:
        """Stop every child: Stop → join with timeout → terminate → join → kill. Bounded.

        Idle, ready children get a Stop message and exit at once. A child in ``busy`` is working
        on something whose result is no longer wanted, and one still starting cannot read the
        message: both are terminated straight away."""
        children = list(self.children.values())
        for child in children:
            if child.key in busy or not child.ready:
                child.process.terminate()
            elif not self.send(child, Stop()):
                child.process.terminate()
        deadline = time.monotonic() + (INTERRUPTED_JOIN_TIMEOUT_S if interrupted else JOIN_TIMEOUT_S)
        for child in children:
            child.process.join(timeout=max(0.0, deadline - time.monotonic()))
        for child in children:
            if child.process.is_alive():
                child.process.terminate()
        deadline = time.monotonic() + TERMINATE_TIMEOUT_S
        for child in children:
            child.process.join(timeout=max(0.0, deadline - time.monotonic()))
            if child.process.is_alive():
                log.warning("%s ignored SIGTERM; killing it", child.name)
                child.process.kill()
                child.process.join(timeout=KILL_TIMEOUT_S)
            self._close(child)
        self.children.clear()

