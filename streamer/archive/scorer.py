"""The per-input work of the archive mode, the same in every engine.

An :class:`ArchiveScorer` loads Perch, the students and the ProtoSSM folds once, then scores
whole recordings (:meth:`ArchiveScorer.score`): 60-s chunks are streamed from the file (a
background thread decodes the next chunk while the models run on this one), each chunk's
windows go through Perch and the students, the chunk is reduced with the site and the UTC hour
of its own start, and only its real windows are written. The sequential engine runs one scorer
in the calling process, the local engine one per worker process, the Ray engine one per actor;
so a recording scored by any of them gives the same file (at the same thread count).
"""

from __future__ import annotations

import collections
import logging
import math
import queue
import threading
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from streamer import failpoints
from streamer.archive.journal import FileKey
from streamer.archive.output import EmbeddingWriter, ScoreWriter
from streamer.archive.tables import EventBuilder, TableWriter
from streamer.archive.timing import RecordingTime
from streamer.audio import TARGET_SAMPLE_RATE_HZ, WINDOW_SAMPLES, AudioChunk, iter_chunks
from streamer.errors import AudioDecodeError, StreamerError
from streamer.metadata import N_WINDOWS_PER_FILE, WINDOW_S, ClassLabels
from streamer.models.moe import set_torch_threads
from streamer.pipeline.children import maxrss_kb
from streamer.stages import ModelOutputs, ModelSpec, ModelStage, Reducer, ReducerSpec, make_reducer

log = logging.getLogger(__name__)

#: Samples of one reduction chunk: 12 windows of 5 s, the Kaggle file length.
CHUNK_SAMPLES = N_WINDOWS_PER_FILE * WINDOW_SAMPLES
#: torch threads of the reduction (ProtoSSM folds), see ArchiveScorer.
REDUCER_TORCH_THREADS = 1
#: Chunks decoded ahead of the models (each is 7.7 MB of float32).
PREFETCH_CHUNKS = 1


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


def chunks_of(path: Path, prefetch: int = PREFETCH_CHUNKS):
    """The 60-s chunks of a recording, decoded ``prefetch`` chunks ahead (0: in line)."""
    if prefetch <= 0:
        return iter_chunks(path, CHUNK_SAMPLES), None
    fetcher = _Prefetcher(iter_chunks(path, CHUNK_SAMPLES), prefetch)
    return iter(fetcher), fetcher


class ArchiveScorer:
    """Models loaded once; :meth:`score` turns one recording into one score file."""

    def __init__(self, model_spec: ModelSpec, reducer_spec: ReducerSpec, labels: ClassLabels, *, prefetch: int = PREFETCH_CHUNKS) -> None:
        self.reducer = make_reducer(reducer_spec)
        self.models = ModelStage(model_spec)  # sets torch's threads when the students run in torch
        self.models.check()
        self.labels = labels
        self.classes = tuple(labels.codes)
        self.prefetch = prefetch
        # ProtoSSM on 12 windows is a few hundred small operators: one torch thread runs it in
        # ~25 ms, while two threads spin-wait on each other and, when another process holds a
        # core, took 1-2 s per chunk (measured on the 2-vCPU VM). torch runs only ProtoSSM when
        # the students are in onnxruntime (or absent); else its threads go back and forth.
        self._torch_students = self.models.students.uses_torch
        self._model_threads = model_spec.threads.intra_op_threads
        if isinstance(self.reducer, Reducer) and not self._torch_students:  # Perch alone never imports torch
            set_torch_threads(REDUCER_TORCH_THREADS)

    def score_chunk(self, chunk: AudioChunk, when: RecordingTime, key: str | None = None, notes: list | None = None):
        """Probabilities ``[n_real_windows, C]`` and Perch embeddings ``[n_real_windows, 1536]``
        of one chunk.

        The model outputs are checked as ``infer``'s are: non-finite Perch outputs make the
        input unscorable (:class:`UnscorableInput`); non-finite student logits make this chunk
        scored without the students (a line in ``notes``)."""
        windows = chunk.samples.reshape(N_WINDOWS_PER_FILE, WINDOW_SAMPLES)
        outputs = self.models.run(windows)
        if failpoints.hit("archive.worker_chunk", key) == "nan":
            outputs = ModelOutputs(*(None if a is None else np.full_like(a, np.nan) for a in
                                     (outputs.embedding, outputs.perch_logits, outputs.cnn_logits, outputs.crnn_logits)))
        if not (np.all(np.isfinite(outputs.embedding)) and np.all(np.isfinite(outputs.perch_logits))):
            raise UnscorableInput(f"Perch gave non-finite outputs on the chunk starting at {chunk.start_s:.0f} s")
        bad = [name for name, a in (("CNN", outputs.cnn_logits), ("CRNN", outputs.crnn_logits))
               if a is not None and not np.all(np.isfinite(a))]
        if bad:
            outputs = replace(outputs, cnn_logits=None, crnn_logits=None)
            if notes is not None:
                notes.append(f"chunk at {chunk.start_s:.0f} s: non-finite {' and '.join(bad)} logits, scored without the students")
        if self._torch_students:
            set_torch_threads(REDUCER_TORCH_THREADS)
        try:
            probs = self.reducer.reduce_at(outputs, when.site, when.hour_at(chunk.start_s))
        finally:
            if self._torch_students:
                set_torch_threads(self._model_threads)
        n_real = math.ceil(chunk.n_real / WINDOW_SAMPLES)
        return probs[:n_real], outputs.embedding[:n_real]

    def _writer(self, task: ArchiveTask):
        """The table writer of ``task``'s format: detections (raven, audacity, or Parquet/CSV with
        a threshold or merging), else every score (wide, or the top-k long format); the
        embeddings' writer when they are the only output."""
        if not task.write_scores:
            return EmbeddingWriter(task.out, task.rel, dtype=task.embeddings_dtype)
        if task.min_score is None:
            return ScoreWriter(task.out, task.rel, self.classes, fmt=task.fmt, top_k=task.top_k)
        builder = EventBuilder(len(self.classes), min_score=task.min_score, top_k=task.top_k, merge=task.merge)
        return TableWriter(task.out, task.rel, self.labels.codes, self.labels.common, self.labels.scientific,
                           fmt=task.fmt, builder=builder)

    def score(self, task: ArchiveTask, on_chunk: Callable[[float], None] | None = None) -> TaskResult:
        """Score ``task`` into its output file (written atomically).

        ``on_chunk(seconds_of_audio)`` is called after every chunk (for progress). Unreadable or
        broken audio gives a failed result; any other error removes the partial file and is
        raised."""
        before = {**self.models.seconds, **self.reducer.seconds}
        writer = self._writer(task)
        writers = [writer]
        if task.embeddings_out is not None:
            writers.append(EmbeddingWriter(task.embeddings_out, task.rel, dtype=task.embeddings_dtype))
        n_samples = 0
        notes: list[str] = []
        counts: collections.Counter = collections.Counter()
        counter = EventBuilder(len(self.classes), min_score=task.summary_min_score, top_k=task.top_k)
        chunks, fetcher = chunks_of(task.path, self.prefetch)
        try:
            for chunk in chunks:
                probs, embedding = self.score_chunk(chunk, task.when, key=task.rel, notes=notes)
                writer.write_chunk(chunk.index * N_WINDOWS_PER_FILE, probs if task.write_scores else embedding)
                if len(writers) > 1:
                    writers[1].write_chunk(chunk.index * N_WINDOWS_PER_FILE, embedding)
                if task.write_scores:
                    self._count(counts, counter, task.when, chunk.index * N_WINDOWS_PER_FILE, probs)
                n_samples += chunk.n_real
                if on_chunk is not None:
                    on_chunk(chunk.n_real / TARGET_SAMPLE_RATE_HZ)
        except (AudioDecodeError, UnscorableInput) as exc:
            for w in writers:
                w.abort()
            return TaskResult(task.rel, False, str(exc), n_samples / TARGET_SAMPLE_RATE_HZ, peak_rss_kb=maxrss_kb())
        except BaseException:
            for w in writers:
                w.abort()  # a partial file never looks finished
            raise
        finally:
            if fetcher is not None:
                fetcher.close()
        for w in writers[1:]:
            w.close()  # the embeddings first: the score file is what marks the input done
        writer.close()
        after = {**self.models.seconds, **self.reducer.seconds}
        return TaskResult(
            task.rel,
            True,
            audio_s=n_samples / TARGET_SAMPLE_RATE_HZ,
            stage_s={k: after[k] - before.get(k, 0.0) for k in after},
            peak_rss_kb=maxrss_kb(),
            notes=notes,
            counts=[[self.classes[c], date, hour, n] for (c, date, hour), n in sorted(counts.items())],
        )

    @staticmethod
    def _count(counts: collections.Counter, counter: EventBuilder, when: RecordingTime, first_window: int, probs) -> None:
        """Detection windows per (class, UTC date, UTC hour) for the archive summary; date ``""``
        and hour -1 where the recording's start is unknown."""
        for offset, kept in enumerate(counter.detections(probs)):
            if when.start_utc is None:
                date, hour = "", -1
            else:
                moment = when.start_utc + timedelta(seconds=(first_window + offset) * WINDOW_S)
                date, hour = moment.date().isoformat(), moment.hour
            for cls, _ in kept:
                counts[(cls, date, hour)] += 1
