"""``streamer rescore``: an archive's stored embeddings scored with a head, no audio decoded.

A head from ``streamer classify`` (an ONNX graph ``embedding -> logits -> scores`` with its
labels and the embedding model's record in its metadata) scores every stored window of an
archive folder made by that model: ``sigmoid(embedding @ W + b)``, read one Parquet batch at a
time. The scores go through the archive's own writers into a new folder: every score
(Parquet/CSV), detections, Raven or Audacity tables, the summary; with a journal and a
fingerprint as ``streamer archive`` keeps, so a stopped rescore resumes and a rerun with other
settings is refused. Named classes (``--class``) keep only those columns of the head: the
outputs of a head's classes that matter, without retraining it.

Speed (``streamer bench-archive --rescore``: 1,000 hours of 5-s windows, 720,000 x 1536 float16
values, a 5-class head, 2 vCPUs): over 100,000x real time into every score or Raven tables.
The product is the smallest part: decoding Parquet's list column and the writers' and the
summary's per-window work take the time. The stored rows go through the head in one ONNX
Runtime call per batch on this thread, cast from float16 inside it: numpy's ``astype`` took 10x
as long, and numpy's product kept a second CPU busy in OpenBLAS's spinning threads for nothing.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamer.errors import ArtifactError, ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Head:
    path: Path
    weights: np.ndarray  # float32 [D, C]
    biases: np.ndarray  # float32 [C]
    labels: tuple[str, ...]
    embedding_model: dict


def load_head(path: Path) -> Head:
    """A ``streamer classify`` head: its weights, labels and embedding model (one-line errors)."""
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load(str(path))
    except Exception as exc:  # onnx raises several types for a file that is not a model
        raise ArtifactError(f"{path}: not an ONNX model ({type(exc).__name__}: {exc})") from None
    meta = {p.key: p.value for p in model.metadata_props}
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    if "labels" not in meta or "embedding_model" not in meta or "W" not in weights or "b" not in weights:
        raise ArtifactError(f"{path}: not a head made by 'streamer classify' (it needs W, b and the labels and "
                            "embedding model in its metadata)")
    labels = tuple(json.loads(meta["labels"]))
    w, b = weights["W"].astype(np.float32), weights["b"].astype(np.float32)
    if w.ndim != 2 or w.shape[1] != len(labels) or b.shape != (len(labels),):
        raise ArtifactError(f"{path}: its weights {list(w.shape)} and biases {list(b.shape)} do not fit {len(labels)} labels")
    return Head(Path(path), w, b, labels, json.loads(meta["embedding_model"]))


def check_head(head: Head, record: dict, folder: Path) -> None:
    """The head was trained on embeddings of the model that made the folder's."""
    want, got = head.embedding_model.get("sha256"), record.get("sha256")
    if want != got or int(record["embedding_dim"]) != head.weights.shape[0]:
        raise ConfigError(f"{head.path}: trained on embeddings of another model ({head.embedding_model.get('model')}) "
                          f"than {folder}'s ({record.get('model')})")


def head_classes(head: Head, names: tuple[str, ...]) -> Head:
    """The head of the classes ``names`` name (any case), in the head's order."""
    from dataclasses import replace

    from streamer.archive.classnames import named_classes

    keep = named_classes(names, [(c,) for c in head.labels], str(head.path))
    return replace(head, weights=head.weights[:, keep], biases=head.biases[keep], labels=tuple(head.labels[i] for i in keep))


def rescore(folder: Path, head_path: Path, settings, classes: tuple[str, ...] = ()) -> dict:
    """Score ``folder``'s stored embeddings with the head (or its ``classes``) into
    ``settings.out_dir`` (an :class:`streamer.config.ArchiveSettings`: format, thresholds,
    overwrite). Returns counts."""
    from streamer.archive import fingerprint as run_fingerprint
    from streamer.archive.clips import recordings
    from streamer.archive.journal import DONE, FileKey, Journal
    from streamer.archive.output import EMBEDDINGS_FOLDER
    from streamer.archive.run import OutputLock, check_out_dir, write_folder_tables
    from streamer.archive.scorer import ArchiveTask, InputSink
    from streamer.archive.search import read_embedder_record
    from streamer.archive.summary import write_class_names
    from streamer.archive.tables import SUFFIXES
    from streamer.archive.timing import RecordingTime
    from streamer.audio import WindowFraming
    from streamer.files import sha256_file
    from streamer.metadata import ClassLabels

    folder = Path(folder)
    record = read_embedder_record(folder)
    head = load_head(head_path)
    check_head(head, record, folder)
    every = head.labels
    if classes:
        head = head_classes(head, classes)
    framing = WindowFraming(**record["framing"])
    sources = recordings(folder)
    source_journal = Journal(folder)
    audio_of = {(e.extra or {}).get("recording", e.output): e.audio_s for e in source_journal.entries.values() if e.status == DONE}
    out_dir = check_out_dir(Path(settings.out_dir))
    labels = ClassLabels(head.labels, head.labels, head.labels)
    min_score, top_k, merge = settings.detections
    fingerprint = {
        "output_format_version": run_fingerprint.OUTPUT_FORMAT_VERSION,
        "sha256": {"head": sha256_file(head.path), "embedding_model": record.get("sha256")},
        "settings": {"rescore of": str(folder.resolve()), "labels": "head" if head.labels == every else list(head.labels),
                     "precision": "fp32", "embeddings": None, "format": settings.fmt, "top_k": top_k, "min_score": min_score,
                     "merge_consecutive": merge, "summary_min_score": settings.summary_min_score},
    }
    counts = {"scored": 0, "skipped": 0, "windows": 0, "seconds": 0.0, "audio_s": 0.0}
    logits = head_logits(head)
    t0 = time.perf_counter()
    lock = OutputLock(out_dir)
    try:
        journal = Journal(out_dir)
        if run_fingerprint.check(out_dir, fingerprint, has_outputs=bool(journal.entries), overwrite=settings.overwrite):
            for entry in journal.entries.values():
                (out_dir / entry.output).unlink(missing_ok=True)
            journal.remove()
            journal = Journal(out_dir)
        run_fingerprint.write(out_dir, fingerprint)
        write_class_names(out_dir, labels)
        for name, (recording, _) in sorted(sources.items()):
            emb_file = folder / EMBEDDINGS_FOLDER / f"{name}.parquet"
            if not emb_file.is_file():
                raise ConfigError(f"{folder}: {name} has no stored embeddings ({emb_file})")
            out = out_dir / f"{name}{SUFFIXES.get(settings.fmt, '.' + settings.fmt)}"
            if journal.is_done(emb_file, out):
                counts["skipped"] += 1
                continue
            audio_s = audio_of.get(name) or 0.0
            task = ArchiveTask(recording, name, out, RecordingTime(), settings.fmt, top_k, audio_s, FileKey.of(emb_file),
                               min_score, merge, settings.summary_min_score, framing=framing, embedding_dim=head.weights.shape[0])
            n = _score_one(emb_file, logits, task, labels, framing, audio_s, InputSink)
            sink_counts, effort = n[1], n[2]
            journal.record(emb_file, DONE, str(out.relative_to(out_dir)), key=task.key, audio_s=audio_s,
                           extra={"counts": sink_counts, "effort": effort, "recording": name, "source": str(recording)})
            counts["scored"] += 1
            counts["windows"] += n[0]
            counts["audio_s"] += audio_s
        write_folder_tables(out_dir, settings)
    finally:
        lock.release()
    counts["seconds"] = time.perf_counter() - t0
    return counts


def head_logits(head: Head):
    """``embedding @ W + b`` of stored rows (float16 or float32) as a graph (see the module notes)."""
    from onnx import helper, numpy_helper

    from streamer.archive.search import RowsGraph

    return RowsGraph([helper.make_node("MatMul", ["x", "W"], ["z"]), helper.make_node("Add", ["z", "b"], ["logits"])],
                     ["logits"], [numpy_helper.from_array(head.weights, "W"), numpy_helper.from_array(head.biases, "b")])


def _score_one(emb_file: Path, logits, task, labels, framing, audio_s: float, sink_class):
    """One recording's stored windows through the head (``logits``: :func:`head_logits`) into
    its files, a 60-s chunk at a time (as the archive wrote them, so merged events and summaries
    come out the same way)."""
    import pyarrow.parquet as pq

    from streamer.archive.search import stored_vectors

    sink = sink_class(task, labels)
    total = int(round(audio_s * framing.rate_hz)) if audio_s else None
    per_chunk = framing.windows_per_chunk
    n = 0
    try:
        handle = pq.ParquetFile(str(emb_file))
        for batch in handle.iter_batches(batch_size=per_chunk * 256, columns=["window", "embedding"]):
            stored = stored_vectors(batch, emb_file)
            first = int(batch.column("window")[0].as_py())
            probs_all = 1.0 / (1.0 + np.exp(-logits.run(stored)[0]))
            for offset in range(0, stored.shape[0], per_chunk):
                rows = slice(offset, offset + per_chunk)
                m = min(per_chunk, stored.shape[0] - offset)
                end = (first + offset + m) * framing.window_samples
                # the embeddings as stored: a rescore writes none (the task has no embeddings file)
                sink.write(first + offset, probs_all[rows].astype(np.float32), stored[rows],
                           min(end, total) if total else end)
            n += stored.shape[0]
        counts, effort = sink.close()
    except BaseException:
        sink.abort()
        raise
    return n, counts, effort
