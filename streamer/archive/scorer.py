"""The per-input work of the archive mode, the same in every engine.

An :class:`ArchiveScorer` loads Perch, the students and the ProtoSSM folds once, then scores
whole recordings (:meth:`ArchiveScorer.score`): 60-s chunks are streamed from the file (a
background thread decodes the next chunk while the models run on this one), each chunk's
windows go through Perch and the students, the chunk is reduced with the site and the UTC hour
of its own start, and only its real windows are written. The sequential engine runs one scorer
in the calling process, the local engine one per worker process, the Ray engine one per actor;
so a recording scored by any of them gives the same file (at the same thread count).

A task of an input longer than one chunk carries a :class:`ChunkSpan`: the chunks it scores
(the whole input, or one *range* of its chunks planned by :mod:`streamer.archive.ranges` when
there are fewer long inputs than workers). Its finished chunks are kept on disk as they come
(:mod:`streamer.archive.checkpoint`), so a task stopped by anything (Ctrl-C, a kill, a dead
worker, a full disk) loses only the chunk in flight, and its retry, or the next run, goes on
from there. When all the input's chunks are kept, :func:`join_input` replays them in order
through the input's writers (:class:`InputSink`): the same files as one uninterrupted pass.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from streamer.recipes.schema import OWN_LOGITS_KINDS
from streamer import failpoints
from streamer.archive.checkpoint import RunWriter, coverage, header_of, runs_of
from streamer.archive.journal import FileKey
from streamer.archive.output import EMBEDDING_DIM, EmbeddingWriter, ScoreWriter
from streamer.archive.tables import EventBuilder, TableWriter
from streamer.archive.timing import RecordingTime
from streamer.audio import PERCH_FRAMING, AudioChunk, WindowFraming, iter_chunks
from streamer.errors import AudioDecodeError, StreamerError
from streamer.metadata import ClassLabels
from streamer.models.moe import set_torch_threads
from streamer.pipeline.children import maxrss_kb
from streamer.stages import ModelOutputs, ModelSpec, ModelStage, Reducer, ReducerSpec, make_reducer, screen_outputs

log = logging.getLogger(__name__)

#: Samples of one reduction chunk of Perch's framing: 12 windows of 5 s, the Kaggle file length
#: (every framing streams 60 s per chunk: :attr:`WindowFraming.chunk_samples`).
CHUNK_SAMPLES = PERCH_FRAMING.chunk_samples
CHUNK_S = 60
#: torch threads of the reduction (ProtoSSM folds), see ArchiveScorer.
REDUCER_TORCH_THREADS = 1
#: Chunks decoded ahead of the models (each is 7.7 MB of float32).
PREFETCH_CHUNKS = 1


@dataclass(frozen=True)
class ChunkSpan:
    """Chunks ``first .. end - 1`` of an input (``end=None``: to the end of the file), range
    ``index`` of the ``count`` its input has in this run, kept in the run at ``part``
    (:mod:`streamer.archive.checkpoint`). ``joins``: the task that scores it also writes the
    input's files (it is the input's only task of the run)."""

    index: int
    count: int
    first: int
    end: int | None
    part: Path
    joins: bool = False

    @property
    def folder(self) -> Path:
        return self.part.parent

    @property
    def scores_nothing(self) -> bool:
        """Every chunk is kept already: the task only joins them."""
        return self.end is not None and self.end <= self.first

    def describe(self) -> str:
        last = "the end" if self.end is None else f"{self.end * CHUNK_S} s"
        return f"range {self.index + 1}/{self.count}, {self.first * CHUNK_S} s to {last}"


@dataclass(frozen=True)
class ArchiveTask:
    """One input to score: where it is, where its scores go, and when it was recorded.

    Everything here is a path or a small value, so tasks travel cheaply to worker processes
    and Ray actors (which read the audio themselves)."""

    path: Path
    rel: str
    out: Path
    when: RecordingTime
    fmt: str = "parquet"
    top_k: int | None = None
    audio_s: float | None = None  # duration from the header, for progress (None: unknown)
    key: FileKey | None = None  # the input as it was when planned: what the journal records
    min_score: float | None = None  # detections: a class is kept in a window at this score (None: every score)
    merge: bool = False  # detections: consecutive windows of a class become one event
    summary_min_score: float = 0.5  # the archive summary counts windows at this score
    embeddings_out: Path | None = None  # where the window embeddings go (None: not written)
    embeddings_dtype: str = "float32"
    write_scores: bool = True  # False: ``out`` is the embeddings file, no scores (--labels none)
    span: ChunkSpan | None = None  # one range of the input's chunks (None: the whole input)
    framing: WindowFraming = PERCH_FRAMING  # the model's windows (their times in the outputs)
    embedding_dim: int = EMBEDDING_DIM  # the width of the embedding written
    high_freq_hz: float = 16000.0  # the top of Raven's selection band: what the model hears
    table_style: str = "streamer"  # the tables' columns (streamer's, or BirdNET-Analyzer's)
    keep: object = None  # bool [C]: this recording's species list (--range-from-metadata); others score 0

    @property
    def label(self) -> str:
        """The input's name, and the range when the task is one of several."""
        return self.rel if self.span is None or self.span.count == 1 else f"{self.rel} ({self.span.describe()})"

    @property
    def needs_embeddings(self) -> bool:
        return self.embeddings_out is not None or not self.write_scores

    def partial_files(self) -> list[Path]:
        """The files this task writes atomically (their temporary siblings are what a dead
        worker leaves; its kept chunks are not among them)."""
        if self.span is not None and not self.span.joins:
            return []
        return [self.out] + ([self.embeddings_out] if self.embeddings_out is not None else [])

    def widths(self, n_classes: int) -> tuple[int, int]:
        """The widths of its kept rows: scores, embeddings (0: not kept)."""
        return (n_classes if self.write_scores else 0), (self.embedding_dim if self.needs_embeddings else 0)


@dataclass
class TaskResult:
    """The outcome of one task. ``ok=False`` with a ``reason`` when the input could not be
    scored (its partial output was removed)."""

    rel: str
    ok: bool
    reason: str = ""
    audio_s: float = 0.0
    stage_s: dict[str, float] = field(default_factory=dict)
    peak_rss_kb: int = 0  # of the process that scored it, when it finished
    notes: list[str] = field(default_factory=list)  # chunks scored without the students, and why
    counts: list = field(default_factory=list)  # [class, UTC date, UTC hour, detection windows] for the summary
    effort: list = field(default_factory=list)  # [UTC date, UTC hour, seconds of audio] for the summary
    kept_s: float = 0.0  # of audio_s, what earlier runs scored (kept chunks): not scored by this run
    unscorable: bool = False  # failed on its audio (undecodable, non-finite outputs), not on the machine


class UnscorableInput(StreamerError):
    """An input the models cannot score (non-finite Perch outputs): it is reported failed."""


class _Prefetcher:
    """Runs an iterator in a background thread, ``depth`` items ahead of the consumer.

    Decoding (libsndfile, soxr) and the models (onnxruntime, torch) release the GIL, so the next
    chunk is decoded while the models run. An exception in the iterator reaches the consumer at
    the item where it happened; :meth:`close` stops the thread early."""

    _END = object()

    def __init__(self, iterator: Iterator, depth: int) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(iterator,), name="streamer-decode-ahead", daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, iterator: Iterator) -> None:
        try:
            for item in iterator:
                if not self._put((item, None)):
                    return
        except BaseException as exc:  # handed to the consumer, which raises it
            self._put((None, exc))
            return
        self._put((self._END, None))

    def __iter__(self):
        while True:
            item, exc = self._queue.get()
            if exc is not None:
                raise exc
            if item is self._END:
                return
            yield item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def chunks_of(path: Path, prefetch: int = PREFETCH_CHUNKS, first: int = 0, end: int | None = None,
              framing: WindowFraming = PERCH_FRAMING):
    """The 60-s chunks ``first .. end - 1`` of a recording (``end=None``: to its end), decoded
    ``prefetch`` chunks ahead (0: in line)."""
    chunks = iter_chunks(path, framing.chunk_samples, first, end, framing=framing)
    if prefetch <= 0:
        return chunks, None
    fetcher = _Prefetcher(chunks, prefetch)
    return iter(fetcher), fetcher


class InputSink:
    """Where an input's windows go: its score or detection table (or its embeddings alone with
    ``--labels none``), its embeddings file, and the archive summary's counts."""

    def __init__(self, task: ArchiveTask, labels: ClassLabels) -> None:
        self.task = task
        n_classes = len(labels.codes)
        self.classes = tuple(labels.codes)
        self.writer = self._writer(task, labels)
        self.writers = [self.writer]
        if task.embeddings_out is not None:
            try:
                self.writers.append(EmbeddingWriter(task.embeddings_out, task.rel, dtype=task.embeddings_dtype,
                                                    dim=task.embedding_dim, window_s=task.framing.window_s))
            except BaseException:
                self.writer.abort()  # no temporary file outlives a sink that could not start
                raise
        self.counts: collections.Counter = collections.Counter()
        self.effort: collections.Counter = collections.Counter()  # (date, hour) → samples of audio
        self.counter = EventBuilder(n_classes, min_score=task.summary_min_score, top_k=task.top_k)

    @staticmethod
    def _writer(task: ArchiveTask, labels: ClassLabels):
        """The table writer of ``task``'s format: detections (raven, audacity, or Parquet/CSV with
        a threshold or merging), else every score (wide, or the top-k long format); the
        embeddings' writer when they are the only output."""
        window_s = task.framing.window_s
        if not task.write_scores:
            return EmbeddingWriter(task.out, task.rel, dtype=task.embeddings_dtype, dim=task.embedding_dim, window_s=window_s)
        if task.min_score is None:
            return ScoreWriter(task.out, task.rel, tuple(labels.codes), fmt=task.fmt, top_k=task.top_k, window_s=window_s)
        builder = EventBuilder(len(labels.codes), min_score=task.min_score, top_k=task.top_k, merge=task.merge)
        return TableWriter(task.out, task.rel, labels.codes, labels.common, labels.scientific, fmt=task.fmt, builder=builder,
                           window_s=window_s, high_freq_hz=task.high_freq_hz, style=task.table_style, source_path=str(task.path))

    def write(self, first_window: int, probs: np.ndarray | None, embedding: np.ndarray, end_sample: int) -> None:
        """The scores and embeddings of windows ``first_window …`` (one chunk's worth), whose
        real audio ends ``end_sample`` samples (at the model's rate) from the recording's start."""
        task = self.task
        if task.keep is not None and probs is not None:
            probs = np.where(task.keep[None, :], probs, np.float32(0.0)).astype(np.float32, copy=False)
        if isinstance(self.writer, TableWriter):
            self.writer.write_chunk(first_window, probs, audio_end_s=end_sample / task.framing.rate_hz)
        else:
            self.writer.write_chunk(first_window, probs if task.write_scores else embedding)
        if len(self.writers) > 1:
            self.writers[1].write_chunk(first_window, embedding)
        if task.write_scores:
            _count(self.counts, self.counter, task.when, first_window, probs, task.framing)
            _count_effort(self.effort, task.when, first_window, len(probs), end_sample, task.framing)

    def close(self) -> tuple[list, list]:
        """Finish the files; returns the summary's counts ``[class, UTC date, UTC hour, windows]``
        and the effort ``[UTC date, UTC hour, seconds of audio]``."""
        for w in self.writers[1:]:
            w.close()  # the embeddings first: the score file is what marks the input done
        self.writer.close()
        counts = [[self.classes[c], date, hour, n] for (c, date, hour), n in sorted(self.counts.items())]
        return counts, [[date, hour, n / self.task.framing.rate_hz] for (date, hour), n in sorted(self.effort.items())]

    def abort(self) -> None:
        for w in self.writers:
            w.abort()  # a partial file never looks finished


def _window_cell(when: RecordingTime, window: int, framing: WindowFraming = PERCH_FRAMING) -> tuple[str, int]:
    """The summary's cell of a window: the UTC date and hour of its start; date ``""`` and hour
    -1 where the recording's start is unknown."""
    if when.start_utc is None:
        return "", -1
    moment = when.start_utc + timedelta(seconds=window * framing.window_s)
    return moment.date().isoformat(), moment.hour


def _count(counts: collections.Counter, counter: EventBuilder, when: RecordingTime, first_window: int, probs,
           framing: WindowFraming = PERCH_FRAMING) -> None:
    """Detection windows per (class, UTC date, UTC hour) for the archive summary."""
    for offset, kept in enumerate(counter.detections(probs)):
        date, hour = _window_cell(when, first_window + offset, framing)
        for cls, _ in kept:
            counts[(cls, date, hour)] += 1


def _count_effort(effort: collections.Counter, when: RecordingTime, first_window: int, n_windows: int, end_sample: int,
                  framing: WindowFraming = PERCH_FRAMING) -> None:
    """Samples of audio recorded per (UTC date, UTC hour), each window in the cell of its start
    (as its detections are), the last window only as far as the audio goes."""
    size = framing.window_samples
    for window in range(first_window, first_window + n_windows):
        real = min(size, end_sample - window * size)
        if real > 0:
            effort[_window_cell(when, window, framing)] += real


class ArchiveScorer:
    """Models loaded once; :meth:`score` turns one recording (or a range of it) into its files."""

    def __init__(self, model_spec: ModelSpec, reducer_spec: ReducerSpec, labels: ClassLabels, *, prefetch: int = PREFETCH_CHUNKS) -> None:
        self.reducer = make_reducer(reducer_spec)
        self.models = ModelStage(model_spec)  # sets torch's threads when the students run in torch
        self.models.check()
        self.labels = labels
        self.prefetch = prefetch
        self.framing = model_spec.framing
        # ProtoSSM on 12 windows is a few hundred small operators: one torch thread runs it in
        # ~25 ms, while two threads spin-wait on each other and, when another process holds a
        # core, took 1-2 s per chunk (measured on the 2-vCPU VM). torch runs only ProtoSSM when
        # the students are in onnxruntime (or absent); else its threads go back and forth.
        self._torch_students = self.models.members.uses_torch
        self._perch_members = frozenset(m.name for m in model_spec.members if m.kind in OWN_LOGITS_KINDS)
        self._model_threads = model_spec.threads.intra_op_threads
        if isinstance(self.reducer, Reducer) and not self._torch_students:  # Perch alone never imports torch
            set_torch_threads(REDUCER_TORCH_THREADS)

    def score_chunk(self, chunk: AudioChunk, when: RecordingTime, key: str | None = None, notes: list | None = None):
        """Probabilities ``[n_real_windows, C]`` and Perch embeddings ``[n_real_windows, 1536]``
        of one chunk.

        The model outputs are checked as ``infer``'s are: non-finite Perch outputs make the
        input unscorable (:class:`UnscorableInput`); non-finite student logits make this chunk
        scored without the students (a line in ``notes``)."""
        framing = self.framing
        windows = chunk.samples.reshape(framing.windows_per_chunk, framing.window_samples)
        outputs = self.models.run(windows)
        if failpoints.hit("archive.worker_chunk", key) == "nan":
            outputs = ModelOutputs(np.full_like(outputs.embedding, np.nan), {k: np.full_like(v, np.nan) for k, v in outputs.logits.items()})
        kept, bad = screen_outputs(outputs, self._perch_members)
        if kept is None:
            what = f"non-finite logits of {', '.join(bad)}" if bad else "Perch gave non-finite outputs"
            raise UnscorableInput(f"{what} on the chunk starting at {chunk.start_s:.0f} s")
        outputs = kept
        if bad and notes is not None:
            notes.append(f"chunk at {chunk.start_s:.0f} s: non-finite {' and '.join(bad)} logits, scored without {', '.join(bad)}")
        if self._torch_students:
            set_torch_threads(REDUCER_TORCH_THREADS)
        try:
            probs = self.reducer.reduce_at(outputs, when.site, when.hour_at(chunk.start_s))
        finally:
            if self._torch_students:
                set_torch_threads(self._model_threads)
        n_real = framing.windows_of(chunk.n_real)
        return probs[:n_real], outputs.embedding[:n_real]

    def score(self, task: ArchiveTask, on_chunk: Callable[[float], None] | None = None) -> TaskResult:
        """Score ``task``: a one-chunk input straight into its files (written atomically); a
        task with a span into its kept run, going on after the chunks kept there, then, when
        the span ``joins``, every kept chunk of the input into its files.

        ``on_chunk(seconds_of_audio)`` is called after every chunk scored (for progress).
        Unreadable or broken audio gives a failed result; any other error is raised (the files
        being written are removed; the chunks kept stay)."""
        if task.span is not None:
            return self._score_span(task, on_chunk)
        before = {**self.models.seconds, **self.reducer.seconds}
        sink = InputSink(task, self.labels)
        n_samples = 0
        notes: list[str] = []
        framing = self.framing
        chunks, fetcher = chunks_of(task.path, self.prefetch, framing=framing)
        try:
            for chunk in chunks:
                probs, embedding = self.score_chunk(chunk, task.when, key=task.rel, notes=notes)
                sink.write(chunk.index * framing.windows_per_chunk, probs, embedding,
                           chunk.index * framing.chunk_samples + chunk.n_real)
                n_samples += chunk.n_real
                if on_chunk is not None:
                    on_chunk(chunk.n_real / framing.rate_hz)
        except (AudioDecodeError, UnscorableInput) as exc:
            sink.abort()
            return TaskResult(task.rel, False, str(exc), n_samples / framing.rate_hz, peak_rss_kb=maxrss_kb(), unscorable=True)
        except BaseException:
            sink.abort()
            raise
        finally:
            if fetcher is not None:
                fetcher.close()
        counts, effort = sink.close()
        return TaskResult(task.rel, True, audio_s=n_samples / framing.rate_hz, stage_s=self._seconds_since(before),
                          peak_rss_kb=maxrss_kb(), notes=notes, counts=counts, effort=effort)

    def _seconds_since(self, before: dict) -> dict:
        after = {**self.models.seconds, **self.reducer.seconds}
        return {k: after[k] - before.get(k, 0.0) for k in after}

    def _score_span(self, task: ArchiveTask, on_chunk) -> TaskResult:
        span, framing = task.span, self.framing
        before = {**self.models.seconds, **self.reducer.seconds}
        samples = 0
        if not span.scores_nothing:
            header = header_of(task.rel, task.key, span.first, task.widths(len(self.labels.codes)), framing.rate_hz)
            run = RunWriter(span.part, header, task.rel)
            try:
                start = span.first + run.n_chunks
                if not run.eof and (span.end is None or start < span.end):
                    chunks, fetcher = chunks_of(task.path, self.prefetch, start, span.end, framing)
                    try:
                        for chunk in chunks:
                            notes: list[str] = []
                            probs, embedding = self.score_chunk(chunk, task.when, key=task.rel, notes=notes)
                            run.append(chunk.index, probs if task.write_scores else None, embedding, chunk.n_real, notes)
                            if on_chunk is not None:
                                on_chunk(chunk.n_real / framing.rate_hz)
                    finally:
                        if fetcher is not None:
                            fetcher.close()
                    if span.end is None or span.first + run.n_chunks < span.end:  # the input ended in the span
                        run.reached_end()
                samples = run.audio_samples
            except (AudioDecodeError, UnscorableInput) as exc:
                return TaskResult(task.rel, False, str(exc), run.audio_samples / framing.rate_hz, peak_rss_kb=maxrss_kb(),
                                  unscorable=True)
            finally:
                run.close()
        scored = TaskResult(task.rel, True, audio_s=samples / framing.rate_hz, stage_s=self._seconds_since(before),
                            peak_rss_kb=maxrss_kb())
        return join_input(task, self.labels, [scored]) if span.joins else scored


def join_input(task: ArchiveTask, labels: ClassLabels, results: list[TaskResult] = ()) -> TaskResult:
    """The input's files from its kept chunks (:mod:`streamer.archive.checkpoint`), replayed
    in order through the same writers as a one-pass run (so the files are the same, row groups
    and merged events included), and the input's result: its audio and notes from the chunks,
    its stage times and memory from the ``results`` of the tasks that scored them now.

    Raises:
        ValueError: chunks are missing (nothing is written).
        OSError: writing failed (the partial files are removed; the chunks stay).
    """
    failpoints.hit("archive.join_ranges", task.rel)
    framing = task.framing
    per_chunk = framing.windows_per_chunk
    held = coverage(runs_of(task.span.folder, task.rel, task.key, task.widths(len(labels.codes)), framing.rate_hz))
    if not held.complete:
        missing = ", ".join(f"{a * CHUNK_S} s to {'the end' if b is None else f'{b * CHUNK_S} s'}" for a, b in held.gaps)
        raise ValueError(f"{task.rel}: chunks not scored: {missing}")
    whole = replace(task, span=None)
    sink = InputSink(whole, labels)
    try:
        for run, records in held.pieces:
            scores, embeddings = run.rows(0), run.rows(1)
            for record in records:
                rows = slice(record.row, record.row + record.windows)
                sink.write(record.index * per_chunk, None if scores is None else np.asarray(scores[rows]),
                           None if embeddings is None else np.asarray(embeddings[rows]),
                           record.index * framing.chunk_samples + record.n_real)
            del scores, embeddings
        counts, effort = sink.close()
    except BaseException:
        sink.abort()
        raise
    stage_s: dict[str, float] = {}
    for r in results:
        for k, v in r.stage_s.items():
            stage_s[k] = stage_s.get(k, 0.0) + v
    return TaskResult(
        task.rel,
        True,
        audio_s=held.kept_samples / framing.rate_hz,
        stage_s=stage_s,
        peak_rss_kb=max((r.peak_rss_kb for r in results), default=0),
        notes=[note for _, records in held.pieces for record in records for note in record.notes],
        counts=counts,
        effort=effort,
    )
