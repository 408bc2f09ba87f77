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
file's (:func:`streamer.audio.iter_chunks`), and writes its window arrays to the hidden
``.streamer-ranges/`` folder of the output folder (shared by every node, as the outputs are).
When every range of an input is done, the driver joins them in order into the input's files
through the same writers as a whole-input run (:func:`~streamer.archive.scorer.join_ranges`):
the files equal a single worker's to float32 round-off, row groups, merged events and the
summary's counts included. The journal is unchanged: an input is done when its files are.

Failures keep their meaning: a range whose worker dies is redone (its attempts are counted
apart from the other ranges'); a range that cannot be scored (undecodable audio, non-finite
Perch outputs) fails its input, whose other ranges are then dropped; a run that stops leaves
its unfinished inputs to the next run, which scores them again (arrays of unfinished inputs are
removed at the start of every run).
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import math
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from streamer.archive.output import remove_temporaries_of
from streamer.archive.scorer import CHUNK_SAMPLES, ArchiveTask, ChunkSpan, TaskResult, join_ranges
from streamer.audio import TARGET_SAMPLE_RATE_HZ
from streamer.metadata import ClassLabels

log = logging.getLogger(__name__)

#: The folder of the ranges' window arrays, inside the output folder. Its leading dot keeps it
#: out of dataset readers and of the folder's outputs.
PARTS_FOLDER = ".streamer-ranges"
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


def parts_dir(out_dir: Path) -> Path:
    return Path(out_dir) / PARTS_FOLDER


def remove_stale_parts(out_dir: Path) -> int:
    """Remove the ranges' arrays a stopped run left (its unfinished inputs are scored again)."""
    folder = parts_dir(out_dir)
    if not folder.is_dir():
        return 0
    n = sum(1 for p in folder.iterdir() if p.is_file())
    shutil.rmtree(folder)
    if n:
        log.info("removed %d range file(s) of inputs an interrupted run left unfinished", n)
    return n


def split_task(task: ArchiveTask, k: int, folder: Path) -> list[ArchiveTask]:
    """``task`` as ``k`` range tasks (``task`` itself when ``k`` is 1)."""
    if k <= 1:
        return [task]
    chunks = n_chunks(task.audio_s)
    firsts = _bounds(chunks, k)
    digest = hashlib.sha256(task.rel.encode("utf-8", "surrogateescape")).hexdigest()[:20]
    units = []
    for j, first in enumerate(firsts):
        end = firsts[j + 1] if j + 1 < k else None  # the last range reads to the end, whatever the header said
        seconds = (end - first) * CHUNK_S if end is not None else max(0.0, (task.audio_s or 0.0) - first * CHUNK_S)
        span = ChunkSpan(j, k, first, end, folder / f"{digest}.{j:03d}")
        units.append(replace(task, span=span, audio_s=seconds))
    return units


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
    caller's ``on_result`` sees whole inputs only."""

    def __init__(self, tasks: list[ArchiveTask], on_result: OnResult, on_progress: OnProgress, labels: ClassLabels,
                 *, out_dir: Path | None = None, split: bool = True) -> None:
        self.tasks = longest_first(tasks)
        self.units = list(self.tasks)
        self.on_result = on_result
        self.on_progress = on_progress
        self.labels = labels
        self.folder = parts_dir(out_dir) if out_dir is not None else None
        self.split = split and out_dir is not None
        self.splits: dict[str, _Split] = {}

    def plan(self, n_workers: int) -> list[ArchiveTask]:
        """The units for ``n_workers`` workers, longest first (ranges of an input in order)."""
        if not self.split or n_workers <= 1:
            self.units = list(self.tasks)
            return self.units
        ks = plan_splits([n_chunks(t.audio_s) for t in self.tasks], n_workers)
        units = []
        self.splits = {}
        for task, k in zip(self.tasks, ks):
            parts = split_task(task, k, self.folder)
            if k > 1:
                self.folder.mkdir(parents=True, exist_ok=True)
                self.splits[task.rel] = _Split(task, [u.span for u in parts])
                log.info("%s: split into %d ranges of about %.0f min for %d workers", task.rel, k, parts[0].audio_s / 60, n_workers)
            units += parts
        self.units = longest_first(units)
        return self.units

    def wanted(self, unit: ArchiveTask) -> bool:
        """False for a range of an input that already failed."""
        return unit.span is None or not self.splits[unit.rel].settled

    def progress(self, unit: ArchiveTask, audio_s: float) -> None:
        if self.wanted(unit):
            self.on_progress(unit.rel, audio_s)

    def discard(self, unit: ArchiveTask) -> None:
        """Remove what a unit whose worker died left half written."""
        for path in unit.partial_files():
            remove_temporaries_of(path)

    def report(self, unit: ArchiveTask, result: TaskResult) -> None:
        """A unit's outcome: a whole input's goes to ``on_result``; a range's is kept until its
        input's last range is done (then joined) or fails it."""
        if unit.span is None:
            self.on_result(unit, result)
            return
        split = self.splits[unit.rel]
        if split.settled:  # its input already failed
            unit.span.remove()
            return
        if not result.ok:
            split.settled = True
            for span in split.spans:
                span.remove()
            done_s = sum(r.audio_s for r in split.results.values()) + result.audio_s
            self.on_result(split.task, TaskResult(unit.rel, False, f"{result.reason} ({unit.span.describe()})", done_s,
                                                  peak_rss_kb=result.peak_rss_kb))
            return
        split.results[unit.span.index] = result
        if len(split.results) < len(split.spans):
            return
        split.settled = True
        results = [split.results[j] for j in range(len(split.spans))]
        try:
            joined = join_ranges(split.task, split.spans, results, self.labels)
        except (OSError, ValueError) as exc:
            joined = TaskResult(unit.rel, False, f"joining its {len(split.spans)} ranges failed ({type(exc).__name__}: {exc})",
                                sum(r.audio_s for r in results))
        self.on_result(split.task, joined)
