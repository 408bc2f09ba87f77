"""One long recording on every CPU: inputs split into ranges of chunks, and joined back.

A worker scores one task at a time, so a single long recording (or fewer long recordings than
workers) would leave CPUs idle, or run as one process with several threads, the slower layout
on small machines. The :class:`WorkQueue` therefore plans *units* of work for the engine's
workers: whole inputs, or contiguous ranges of an input's 60-s chunks
(:class:`~streamer.archive.scorer.ChunkSpan`).

Planning (:func:`plan_splits`) splits only what balancing needs: starting from whole inputs, the
longest unit's input gets one more range while the longest-first schedule of the units on the
workers ends more than :data:`BALANCE_TOLERANCE` after the ideal (the audio divided evenly) and
no range would fall below :data:`MIN_RANGE_CHUNKS` chunks; the plan that ends first wins (with
the fewest ranges). One 128-minute input on two workers becomes two 64-minute ranges; four
16-minute inputs stay whole; of three 60-minute inputs on two workers one becomes two 30-minute
ranges (60 + 30 minutes on each worker). Inputs whose header gives no duration are never split.

Each range is decoded from a little before its first chunk, so its samples equal the whole
file's (:func:`streamer.audio.iter_chunks`). Every task of an input longer than one chunk, a
range or the whole input, keeps its finished chunks in the hidden ``.streamer-ranges/`` folder
of the output folder (shared by every node, as the outputs are; see
:mod:`streamer.archive.checkpoint`). The queue starts from what earlier runs kept: only the gaps
are planned (and split, if balancing needs it). When every chunk of an input is kept, its files
are written from them in order, by the task itself when it is the input's only one this run,
else by the driver once the last range is done (:func:`~streamer.archive.scorer.join_input`):
the files equal a single uninterrupted pass's (to float32 round-off of the resampler), row
groups, merged events and the summary's counts included. The journal is unchanged: an input is
done when its files are; its kept chunks are removed once it is journaled.

Failures keep their meaning: a task whose worker dies is retried and goes on after its kept
chunks; a range that cannot be scored (undecodable audio, non-finite Perch outputs) fails its
input, whose other ranges are then dropped and whose kept chunks are removed; other failures
(a task whose workers kept dying, files that could not be written) keep them for
``--retry-failed``; a run that stops leaves the kept chunks of its unfinished inputs to the
next run.
"""

from __future__ import annotations

import heapq
import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from streamer import failpoints
from streamer.archive.checkpoint import Coverage, coverage, part_of, parts_dir, remove_runs, runs_of
from streamer.archive.output import remove_temporaries_of
from streamer.archive.scorer import CHUNK_SAMPLES, ArchiveTask, ChunkSpan, TaskResult, join_input
from streamer.audio import TARGET_SAMPLE_RATE_HZ
from streamer.metadata import ClassLabels

log = logging.getLogger(__name__)

#: Shortest range, in 60-s chunks: a range costs a task round trip, a 2-s resampler warm-up and
#: one chunk decoded before the models can start.
MIN_RANGE_CHUNKS = 2
#: Splitting stops once the longest-first schedule ends within this fraction of the ideal.
BALANCE_TOLERANCE = 0.05

CHUNK_S = CHUNK_SAMPLES / TARGET_SAMPLE_RATE_HZ

OnResult = Callable[[ArchiveTask, TaskResult], None]
OnProgress = Callable[[str, float], None]


def n_chunks(audio_s: float | None) -> int:
    """60-s chunks of an input of ``audio_s`` seconds (0 when unknown)."""
    if not audio_s or audio_s <= 0:
        return 0
    return math.ceil(round(audio_s * TARGET_SAMPLE_RATE_HZ) / CHUNK_SAMPLES)


def _bounds(chunks: int, k: int) -> list[int]:
    """First chunk of each of ``k`` near-equal contiguous ranges of ``chunks`` chunks."""
    return [round(j * chunks / k) for j in range(k)]


def _range_lengths(chunks: int, k: int) -> list[int]:
    firsts = _bounds(chunks, k) + [chunks]
    return [firsts[j + 1] - firsts[j] for j in range(k)]


def makespan(lengths: list[float], n_workers: int) -> float:
    """When the last worker ends if units of these lengths go, longest first, to whichever
    worker is free first."""
    ends = [0.0] * max(1, n_workers)
    for length in sorted(lengths, reverse=True):
        heapq.heappush(ends, heapq.heappop(ends) + length)
    return max(ends)


def plan_splits(chunk_counts: list[int], n_workers: int, *, min_range_chunks: int = MIN_RANGE_CHUNKS,
                tolerance: float = BALANCE_TOLERANCE) -> list[int]:
    """How many ranges each input (of ``chunk_counts`` chunks; 0: unknown, never split) becomes
    on ``n_workers`` workers (see the module notes)."""
    ranges = [1] * len(chunk_counts)
    total = sum(chunk_counts)
    if n_workers <= 1 or total == 0:
        return ranges
    ideal = total / n_workers
    best: tuple[float, int, list[int]] | None = None  # (makespan, ranges in all, plan)
    while True:
        span = makespan([n for c, k in zip(chunk_counts, ranges) for n in _range_lengths(c, k)], n_workers)
        if best is None or span < best[0]:
            best = (span, sum(ranges), list(ranges))
        if span <= ideal * (1 + tolerance):
            break
        splittable = [i for i, (c, k) in enumerate(zip(chunk_counts, ranges)) if c // (k + 1) >= min_range_chunks]
        if not splittable:
            break
        i = max(splittable, key=lambda j: (math.ceil(chunk_counts[j] / ranges[j]), -j))
        ranges[i] += 1
    return best[2]  # a split that did not shorten the schedule is not kept


def longest_first(tasks: list[ArchiveTask]) -> list[ArchiveTask]:
    """Longest first (unknown durations last; the order kept among equals, so an input's ranges
    stay in order), so workers finish together."""
    return sorted(tasks, key=lambda t: -(t.audio_s if t.audio_s is not None else -1.0))


def kept_in_runs(task: ArchiveTask) -> bool:
    """Whether ``task``'s finished chunks are kept as it goes (every input but those of one
    chunk, whose only chunk is the one in flight)."""
    return task.key is not None and n_chunks(task.audio_s) != 1


def _unit_seconds(task: ArchiveTask, first: int, end: int | None) -> float | None:
    """Seconds of audio in chunks ``first .. end - 1`` of ``task`` (None: unknown)."""
    if task.audio_s is None:
        return None if end is None else (end - first) * CHUNK_S
    left = max(0.0, task.audio_s - first * CHUNK_S)
    return left if end is None else min(left, (end - first) * CHUNK_S)


@dataclass
class _Split:
    """An input in ranges: its whole task, and the results of the ranges done so far."""

    task: ArchiveTask
    spans: list[ChunkSpan]
    results: dict[int, TaskResult] = field(default_factory=dict)
    settled: bool = False


class WorkQueue:
    """The units an engine hands its workers, and where their outcomes go (see the module notes).

    Engines call :meth:`plan` with their worker count, hand out :attr:`units` (skipping those
    :meth:`wanted` refuses), report every unit's result to :meth:`report` and its progress to
    :meth:`progress`, and :meth:`discard` the partial files of a unit whose worker died. The
    caller's ``on_result`` sees whole inputs only, with what earlier runs had kept of them
    (``kept_s``), and must have journaled the input when it returns: its kept chunks are then
    removed."""

    def __init__(self, tasks: list[ArchiveTask], on_result: OnResult, on_progress: OnProgress, labels: ClassLabels,
                 *, out_dir: Path | None = None, split: bool = True) -> None:
        self.tasks = longest_first(tasks)
        self.inputs = {t.rel: t for t in tasks}
        self.units = list(self.tasks)
        self.on_result = on_result
        self.on_progress = on_progress
        self.labels = labels
        self.folder = parts_dir(out_dir) if out_dir is not None else None
        self.split = split and out_dir is not None
        self.splits: dict[str, _Split] = {}
        #: What earlier runs kept of each input scored in runs (read once, before planning).
        self.held: dict[str, Coverage] = {}
        if self.folder is not None:
            n_classes = len(labels.codes)
            for task in self.tasks:
                if kept_in_runs(task):
                    runs = runs_of(self.folder, task.rel, task.key, task.widths(n_classes), task.framing.rate_hz)
                    self.held[task.rel] = coverage(runs)

    def kept_s(self, rel: str) -> float:
        """Seconds of input ``rel`` that earlier runs scored and kept."""
        held = self.held.get(rel)
        return held.kept_samples / self.inputs[rel].framing.rate_hz if held is not None else 0.0

    @property
    def resumed(self) -> dict[str, float]:
        """The inputs that go on after chunks an earlier run kept: seconds kept of each."""
        return {rel: self.kept_s(rel) for rel, held in self.held.items() if held.kept_chunks}

    def plan(self, n_workers: int) -> list[ArchiveTask]:
        """The units for ``n_workers`` workers, longest first (ranges of an input in order):
        the inputs of one chunk whole, the others' chunks not kept yet in spans, split where
        balancing needs it."""
        pieces: list[tuple[ArchiveTask, int | None, int | None, int]] = []  # (input, first, end, chunks)
        for task in self.tasks:
            held = self.held.get(task.rel)
            if held is None:
                pieces.append((task, None, None, 0))
            elif held.complete:  # every chunk kept: only the files are left to write
                end = held.pieces[-1][0].end if held.pieces else 0
                pieces.append((task, end, end, 0))
            else:
                for first, end in held.gaps:
                    length = (end - first) if end is not None else max(0, n_chunks(task.audio_s) - first)
                    pieces.append((task, first, end, length))
        ks = plan_splits([p[3] for p in pieces], n_workers if self.split else 1)
        units: list[ArchiveTask] = []
        ranges: dict[str, list[tuple[int, int | None]]] = {}
        for (task, first, end, length), k in zip(pieces, ks):
            if first is None:
                units.append(task)
            elif k > 1:
                firsts = [first + b for b in _bounds(length, k)]
                ranges.setdefault(task.rel, []).extend(zip(firsts, firsts[1:] + [end]))
            else:
                ranges.setdefault(task.rel, []).append((first, end))
        self.splits = {}
        for rel, spans in ranges.items():
            task, count = self.inputs[rel], len(spans)
            parts = [replace(task, span=ChunkSpan(j, count, a, b, part_of(self.folder, rel, a), joins=count == 1),
                             audio_s=_unit_seconds(task, a, b)) for j, (a, b) in enumerate(spans)]
            if count > 1:
                self.splits[rel] = _Split(task, [u.span for u in parts])
                log.info("%s: split into %d ranges of about %.0f min for %d workers", rel, count, (parts[0].audio_s or 0) / 60, n_workers)
            units += parts
        self.units = longest_first(units)
        return self.units

    def wanted(self, unit: ArchiveTask) -> bool:
        """False for a range of an input that already failed."""
        return unit.span is None or unit.span.joins or not self.splits[unit.rel].settled

    def progress(self, unit: ArchiveTask, audio_s: float) -> None:
        failpoints.hit("archive.chunk_done", unit.rel)
        if self.wanted(unit):
            self.on_progress(unit.rel, audio_s)

    def discard(self, unit: ArchiveTask) -> None:
        """Remove what a unit whose worker died left half written (its kept chunks stay)."""
        for path in unit.partial_files():
            remove_temporaries_of(path)

    def _settle(self, task: ArchiveTask, result: TaskResult) -> None:
        """Hand an input's outcome to ``on_result`` (which journals it), then drop its kept
        chunks when it is done or its audio cannot be scored; after other failures (workers
        that kept dying, files that could not be written) they stay for ``--retry-failed``."""
        result.kept_s = self.kept_s(task.rel)
        self.on_result(task, result)
        if task.rel in self.held and (result.ok or result.unscorable):
            remove_runs(self.folder, task.rel)

    def report(self, unit: ArchiveTask, result: TaskResult) -> None:
        """A unit's outcome: a whole input's goes to ``on_result``; a range's is kept until its
        input's last range is done (then the input's files are written) or fails it."""
        if unit.span is None or unit.span.joins:
            self._settle(self.inputs[unit.rel], result)
            return
        split = self.splits[unit.rel]
        if split.settled:  # its input already failed
            return
        if not result.ok:
            split.settled = True
            done_s = sum(r.audio_s for r in split.results.values()) + result.audio_s
            self._settle(split.task, TaskResult(unit.rel, False, f"{result.reason} ({unit.span.describe()})", done_s,
                                                peak_rss_kb=result.peak_rss_kb, unscorable=result.unscorable))
            return
        split.results[unit.span.index] = result
        if len(split.results) < len(split.spans):
            return
        split.settled = True
        results = [split.results[j] for j in range(len(split.spans))]
        try:
            joined = join_input(unit, self.labels, results)
        except (OSError, ValueError) as exc:
            joined = TaskResult(unit.rel, False, f"joining its {len(split.spans)} ranges failed ({type(exc).__name__}: {exc})",
                                sum(r.audio_s for r in results))
        self._settle(split.task, joined)
