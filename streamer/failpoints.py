"""Failpoints: named places in the code where a test makes the run fail on purpose.

The pattern of etcd's gofail and TiKV's fail-rs. A failpoint is a call ``hit("point.name")`` at
a place where real faults happen (a child loading its models, the parent writing a row, ...).
It does nothing unless the environment variable ``STREAMER_FAILPOINTS`` arms it::

    STREAMER_FAILPOINTS="consumer.mid_inference=kill@3,parent.row_write=enospc@2"

Grammar: entries separated by commas, each ``POINT[KEY]=ACTION[@COUNT]``:

* ``POINT``: one of :data:`POINTS` (an unknown name is an error, so a typo cannot pass as a
  test of nothing);
* ``[KEY]`` (optional): only hits whose key equals ``KEY`` count (the key is the file's stem in
  ``infer``, the input's relative path in ``archive``);
* ``ACTION``: ``kill`` (SIGKILL to the process itself), ``raise`` (a :class:`FailpointError`),
  ``sigint`` (SIGINT to the run's main process, as Ctrl-C would send it), ``hang`` (sleep until
  killed), ``nan`` (the call site makes its model outputs NaN), ``enospc`` (``OSError`` ENOSPC,
  as a full disk), ``count`` (nothing: the hits are only counted, for a test that asks how often
  a place was passed);
* ``COUNT`` (optional): ``N`` fires on the N-th hit only, ``N+`` on the N-th and every later
  one; without it, every hit fires.

Hits are counted **across every process of the run** (a shared counter file per point, in the
folder named by ``STREAMER_FAILPOINTS_STATE``, created by the main process when the variable is
first read there and inherited by its children), so ``consumer.mid_inference=kill@3`` kills
exactly one consumer, whichever reaches the third inference, and its replacement does not die
again. Rules of one point share its counter (one count per hit, whatever the number of rules).
A test that counts hits over a stopped run and its rerun names the counters' folder itself
with ``STREAMER_FAILPOINTS_COUNTERS``. When ``STREAMER_FAILPOINTS`` is unset, :func:`hit`
returns at its first line.
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import os
import re
import shutil
import signal
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from streamer.errors import ConfigError

ENV = "STREAMER_FAILPOINTS"
STATE_ENV = "STREAMER_FAILPOINTS_STATE"
MAIN_PID_ENV = "STREAMER_FAILPOINTS_MAIN_PID"
MAIN_HOST_ENV = "STREAMER_FAILPOINTS_MAIN_HOST"
COUNTERS_ENV = "STREAMER_FAILPOINTS_COUNTERS"

#: Every failpoint in the code, with where it is.
POINTS = {
    "consumer.setup": "a consumer process, while it loads its models (before it reports ready)",
    "consumer.task_received": "a consumer process, on receiving a model task",
    "consumer.mid_inference": "a consumer, after Perch ran on a task (nan: every output of the task)",
    "consumer.students": "a consumer, after the members other than Perch ran on a task (nan: their logits)",
    "decoder.setup": "a decoder process, while it starts",
    "decoder.read": "a decoder, before it reads a file",
    "decoder.slot_write": "a decoder, after it wrote a file's windows into the shared slot",
    "parent.checks": "the parent, after reading the competition folder, before it checks the model files",
    "parent.reduction": "the parent, before it reduces a batch of files (prior, ProtoSSM, post-processing)",
    "parent.row_write": "the parent, before it writes a file's rows to the submission",
    "parent.before_rename": "the parent, before the finished submission is renamed into place",
    "students.export": "the parent, while it exports the students to onnxruntime",
    "parent.backend_check": "the parent, checking OpenVINO against onnxruntime (nan: OpenVINO's Perch logits)",
    "archive.worker_setup": "an archive worker, while it loads its models",
    "archive.worker_chunk": "an archive worker, after the models ran on a 60-s chunk (nan: its outputs)",
    "archive.journal_append": "the archive driver, before it appends an outcome to the journal",
    "archive.chunk_keep": "an archive worker, before it keeps a scored 60-s chunk on disk (its rows, then its line)",
    "archive.chunk_done": "the archive driver, on hearing that a 60-s chunk of an input was scored",
    "archive.join_ranges": "an archive worker or the driver, before it writes an input's files from its kept chunks",
    "archive.summary": "the archive driver, after writing the summary's CSVs, before it draws _summary.png",
    "ceiling.setup": "a ceiling-benchmark process, while it loads its models",
}
ACTIONS = ("kill", "raise", "sigint", "hang", "nan", "enospc", "count")

_ENTRY = re.compile(r"^(?P<point>[a-z_.]+)(?:\[(?P<key>[^\]]*)\])?=(?P<action>[a-z]+)(?:@(?P<n>\d+)(?P<plus>\+)?)?$")


class FailpointError(RuntimeError):
    """The error a ``raise`` failpoint raises (an unexpected error, not a :class:`StreamerError`)."""


@dataclass(frozen=True)
class Rule:
    point: str
    action: str
    key: str | None = None
    n: int | None = None  # None: every hit
    and_later: bool = False

    def fires(self, count: int) -> bool:
        if self.n is None:
            return True
        return count >= self.n if self.and_later else count == self.n

    @property
    def counter_name(self) -> str:
        return self.point if self.key is None else f"{self.point}[{self.key}]"


def parse(spec: str) -> tuple[Rule, ...]:
    """The rules of a ``STREAMER_FAILPOINTS`` value.

    Raises:
        ConfigError: a malformed entry, an unknown point or action.
    """
    rules = []
    for entry in (e.strip() for e in spec.split(",")):
        if not entry:
            continue
        match = _ENTRY.match(entry)
        if match is None:
            raise ConfigError(f"{ENV}: cannot read {entry!r}; expected POINT[KEY]=ACTION[@N[+]]")
        point, action = match["point"], match["action"]
        if point not in POINTS:
            raise ConfigError(f"{ENV}: unknown failpoint {point!r}; known: {', '.join(sorted(POINTS))}")
        if action not in ACTIONS:
            raise ConfigError(f"{ENV}: unknown action {action!r} in {entry!r}; known: {', '.join(ACTIONS)}")
        n = int(match["n"]) if match["n"] is not None else None
        if n is not None and n < 1:
            raise ConfigError(f"{ENV}: counts start at 1, got {entry!r}")
        rules.append(Rule(point, action, match["key"], n, bool(match["plus"])))
    return tuple(rules)


_rules: dict[str, tuple[Rule, ...]] = {}


def configure(spec: str | None = None, *, fresh: bool = False) -> None:
    """Arm the failpoints from ``spec`` (default: the environment).

    The main process of a run calls it with ``fresh=True`` at start: that gives the run its own
    hit counters (a new folder, exported with the main process's pid, so the children started
    afterwards count together with it). A process that inherits a counter folder keeps it."""
    global _rules
    if spec is None:
        spec = os.environ.get(ENV, "")
    by_point: dict[str, list[Rule]] = {}
    for rule in parse(spec):
        by_point.setdefault(rule.point, []).append(rule)
    _rules = {k: tuple(v) for k, v in by_point.items()}
    if _rules and (fresh or not os.environ.get(STATE_ENV)):
        folder = os.environ.get(COUNTERS_ENV)
        if not folder:
            folder = tempfile.mkdtemp(prefix="streamer-failpoints-")
            # The run's own counters go with the process that made them (its children have
            # ended by then); a folder named by STREAMER_FAILPOINTS_COUNTERS is the caller's.
            atexit.register(shutil.rmtree, folder, True)
        os.environ[STATE_ENV] = folder
        os.environ[MAIN_PID_ENV] = str(os.getpid())
        os.environ[MAIN_HOST_ENV] = socket.gethostname()


def active() -> bool:
    return bool(_rules)


def armed(point: str) -> bool:
    """Whether a rule names ``point`` (what a faulted step computes must not be kept)."""
    return point in _rules


def environment() -> dict[str, str]:
    """The variables a process started outside this one's environment (a Ray actor) needs to
    share these failpoints."""
    return {k: os.environ[k] for k in (ENV, STATE_ENV, MAIN_PID_ENV, MAIN_HOST_ENV) if os.environ.get(k)}


def _counter_file(folder: Path, name: str) -> Path:
    return Path(folder) / re.sub(r"[^A-Za-z0-9._-]", lambda m: f"%{ord(m.group()):02x}", name)  # keys may hold '/'


def counted(folder: str | os.PathLike, name: str) -> int:
    """How many hits the counter ``name`` (``POINT`` or ``POINT[KEY]``) has in the counters'
    folder ``folder`` (``STREAMER_FAILPOINTS_COUNTERS``); 0 when it was never hit."""
    path = _counter_file(Path(folder), name)
    return int(path.read_text().strip() or 0) if path.exists() else 0


def _next_count(name: str) -> int:
    """Increment and return the run-wide hit counter ``name`` (a locked file)."""
    folder = Path(os.environ[STATE_ENV])
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(_counter_file(folder, name), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        raw = os.read(fd, 64).strip()
        count = int(raw or b"0") + 1
        os.lseek(fd, 0, os.SEEK_SET)
        os.ftruncate(fd, 0)
        os.write(fd, str(count).encode())
        return count
    finally:
        os.close(fd)  # releases the lock


def hit(point: str, key: str | None = None) -> str | None:
    """Pass failpoint ``point`` (with the ``key`` of what is being worked on).

    Returns ``"nan"`` when a ``nan`` rule fires (the caller then poisons its outputs), else
    ``None``; the other actions act here: kill, raise, signal, hang or fail with ENOSPC."""
    if not _rules:
        return None
    rules = _rules.get(point)
    if not rules:
        return None
    matching = [rule for rule in rules if rule.key is None or rule.key == key]
    counts = {name: _next_count(name) for name in dict.fromkeys(rule.counter_name for rule in matching)}  # every pass is counted, then acted on
    for rule in matching:
        if not rule.fires(counts[rule.counter_name]):
            continue
        what = f"failpoint {point}{'' if key is None else f' [{key}]'}"
        if rule.action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(60)  # the signal is delivered before this returns
        elif rule.action == "raise":
            raise FailpointError(f"{what}: injected error")
        elif rule.action == "enospc":
            raise OSError(errno.ENOSPC, f"No space left on device ({what})")
        elif rule.action == "sigint":
            if os.environ.get(MAIN_HOST_ENV, socket.gethostname()) != socket.gethostname():
                raise FailpointError(f"{what}: sigint asked on another machine than the run's main process")
            os.kill(int(os.environ.get(MAIN_PID_ENV) or os.getpid()), signal.SIGINT)
        elif rule.action == "hang":
            while True:  # until the supervisor kills this process
                time.sleep(3600)
        elif rule.action == "nan":
            return "nan"
    return None



try:
    configure()
except ConfigError:
    # A malformed value: the main process reports it (exit 2) from its own configure(fresh=True)
    # call at start; until then nothing is armed.
    _rules = {}
