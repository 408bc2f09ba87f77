"""``streamer search``: where else does this call occur? Search an archive's stored embeddings.

An archive scored with ``--embeddings`` holds every window's embedding (``_embeddings/``) and a
record of the model that made them (``.streamer-embedder.json``: the model file, its SHA-256,
the embedding layer and the framing). A query is an audio clip, embedded here with that same
model and framing (each of its windows a query), or ``FILE@SECONDS``, the stored window of an
archived recording that holds that second. Every stored window is compared with every query by
cosine similarity, exactly (brute force), reading the embeddings one Parquet batch at a time:
memory holds one batch and the best ``top`` hits per query, never the archive.
"""

from __future__ import annotations

import heapq
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamer.errors import ArtifactError, ConfigError

log = logging.getLogger(__name__)

#: The record of the model behind an archive folder's embeddings.
EMBEDDER_FILE = ".streamer-embedder.json"
EMBEDDER_FORMAT = 1
#: Rows read per Parquet batch while searching.
SEARCH_BATCH_ROWS = 65536
HIT_COLUMNS = ("query", "rank", "file", "start_s", "end_s", "similarity")


def embedder_record(plan, hashes: dict) -> dict:
    """What made a folder's embeddings: the model file, its SHA-256 (from the run fingerprint's
    ``hashes``, so nothing is hashed twice), the embedding layer and the framing."""
    m = plan.model
    f = m.framing
    framing = {"rate_hz": f.rate_hz, "window_samples": f.window_samples, "windows_per_chunk": f.windows_per_chunk,
               "resampler": f.resampler, "piece_s": f.piece_s, "min_last_window_s": f.min_last_window_s}
    if m.litert is not None:
        front = m.litert
        return {"format": EMBEDDER_FORMAT, "kind": "litert", "model": str(front.path),
                "sha256": hashes.get(f"{front.name}_tflite"), "embedding": front.embedding,
                "embedding_dim": front.embedding_dim, "framing": framing}
    return {"format": EMBEDDER_FORMAT, "kind": "perch", "model": str(m.onnx_path), "sha256": hashes.get("perch_onnx"),
            "embedding": "embedding", "embedding_dim": m.embedding_dim, "framing": framing}


def write_embedder_record(out_dir: Path, record: dict) -> None:
    from streamer.files import atomic_write_text

    atomic_write_text(Path(out_dir) / EMBEDDER_FILE, json.dumps(record, indent=2, sort_keys=True) + "\n")


def read_embedder_record(folder: Path) -> dict:
    path = Path(folder) / EMBEDDER_FILE
    if not (Path(folder) / "_embeddings").is_dir():
        raise ConfigError(f"{folder}: no embeddings here (score it with 'streamer archive ... --embeddings')")
    if not path.is_file():
        raise ConfigError(f"{folder}: no record of the model behind its embeddings ({EMBEDDER_FILE}); "
                          "score it again with this streamer (--overwrite)")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{path}: unreadable ({exc})") from exc
    if record.get("format") != EMBEDDER_FORMAT:
        raise ArtifactError(f"{path}: format {record.get('format')!r}; this streamer reads {EMBEDDER_FORMAT}")
    return record


class Embedder:
    """The archive's model, rebuilt from its record: ``embed(path)`` gives a clip's windows
    (start seconds) and their embeddings, framed as the archive framed its recordings.

    ``model`` replaces the recorded model file (moved files); its SHA-256 must be the recorded
    one, whatever the path."""

    def __init__(self, record: dict, model: Path | None = None, threads: int = 1) -> None:
        from streamer.audio import WindowFraming
        from streamer.files import sha256_file

        path = Path(model) if model is not None else Path(record["model"])
        if not path.is_file():
            raise ArtifactError(f"{path}: the archive's model is not there" +
                                ("" if model is not None else "; pass --model with where it is now"))
        if record.get("sha256") and sha256_file(path) != record["sha256"]:
            raise ArtifactError(f"{path}: SHA-256 differs from the model that made the archive's embeddings "
                                f"({record['sha256'][:12]}...); a search needs the same model")
        self.framing = WindowFraming(**record["framing"])
        self.dim = int(record["embedding_dim"])
        if record["kind"] == "litert":
            from streamer.models.backbone import LiteRTBackbone
            from streamer.models.graphs import ThreadSettings
            from streamer.recipes.bind import LiteRTFront

            front = LiteRTFront("query", path, path, (), (), record["embedding"], self.dim)
            self.model = LiteRTBackbone(front, ThreadSettings(intra_op_threads=threads))
        else:
            from streamer.models.graphs import ThreadSettings
            from streamer.models.perch import PerchModel

            self.model = PerchModel(path, ThreadSettings(intra_op_threads=threads))

    def embed(self, clip: Path) -> tuple[np.ndarray, np.ndarray]:
        """``(start seconds [W], embeddings float32 [W, D])`` of every window of ``clip``."""
        from streamer.audio import iter_chunks

        f = self.framing
        starts, parts = [], []
        for chunk in iter_chunks(clip, f.chunk_samples, framing=f):
            n = f.windows_of(chunk.n_real)
            if n == 0:
                continue
            windows = chunk.samples.reshape(f.windows_per_chunk, f.window_samples)[:n]
            embedding, _ = self.model.run(windows)
            parts.append(np.asarray(embedding, dtype=np.float32))
            starts += [(chunk.index * f.windows_per_chunk + i) * f.window_s for i in range(n)]
        if not parts:
            raise ConfigError(f"{clip}: shorter than one window ({f.window_s:g} s)")
        return np.asarray(starts), np.concatenate(parts)


@dataclass
class Query:
    name: str
    vector: np.ndarray  # float32 [D], unit length


def _unit(vectors: np.ndarray, what: str) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise ConfigError(f"{what}: an all-zero embedding (digital silence?) has no direction to compare")
    return (vectors / norms).astype(np.float32)


def embedding_files(folder: Path) -> list[Path]:
    files = sorted((Path(folder) / "_embeddings").rglob("*.parquet"))
    if not files:
        raise ConfigError(f"{folder}: its _embeddings folder holds no embedding file")
    return files


def _batches(files: list[Path]):
    """``(file labels, starts, ends, embeddings float32 [n, D])`` one Parquet batch at a time."""
    import pyarrow.parquet as pq

    for path in files:
        handle = pq.ParquetFile(str(path))
        for batch in handle.iter_batches(batch_size=SEARCH_BATCH_ROWS, columns=["file", "start_s", "end_s", "embedding"]):
            n = batch.num_rows
            if n == 0:
                continue
            column = batch.column("embedding")
            values = column.flatten().to_numpy(zero_copy_only=False)
            yield (batch.column("file").to_pylist(), batch.column("start_s").to_numpy(), batch.column("end_s").to_numpy(),
                   values.reshape(n, -1).astype(np.float32, copy=False))


def stored_query(folder: Path, spec: str) -> Query:
    """``FILE@SECONDS``: the stored embedding of the archived recording ``FILE`` (its relative
    path as the archive names it) at the window holding ``SECONDS``."""
    name, _, at = spec.rpartition("@")
    try:
        seconds = float(at)
    except ValueError:
        raise ConfigError(f"{spec!r}: expected FILE@SECONDS (e.g. recorders/site3.flac@125.5)") from None
    for labels, starts, ends, vectors in _batches(embedding_files(folder)):
        for i, label in enumerate(labels):
            if (label == name or Path(label).name == name) and starts[i] <= seconds < ends[i]:
                return Query(spec, _unit(vectors[i: i + 1], spec)[0])
    raise ConfigError(f"{spec!r}: no stored window of {name!r} holds {seconds:g} s (the archive's files are named by "
                      "their path relative to the input given to 'streamer archive')")


def _file_best(path: Path, file_index: int, q: np.ndarray, top: int) -> list[list[tuple]]:
    """Each query's best ``top`` windows of one embedding file, as ``(similarity, tie-breaker,
    file, start, end)``: the file read one Parquet batch at a time."""
    import pyarrow.parquet as pq

    best: list[list[tuple]] = [[] for _ in range(q.shape[0])]
    row0 = 0
    handle = pq.ParquetFile(str(path))
    for batch in handle.iter_batches(batch_size=SEARCH_BATCH_ROWS, columns=["file", "start_s", "end_s", "embedding"]):
        n = batch.num_rows
        if n == 0:
            continue
        vectors = batch.column("embedding").values.to_numpy(zero_copy_only=False).reshape(n, -1).astype(np.float32)
        if vectors.shape[1] != q.shape[1]:
            raise ConfigError(f"{path}: stored embeddings have {vectors.shape[1]} values, the queries {q.shape[1]}")
        norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors))
        norms[norms == 0] = np.inf  # an all-zero window matches nothing
        sims = (q @ vectors.T) / norms[None, :]
        k = min(top, n)
        picked = np.argpartition(-sims, k - 1, axis=1)[:, :k] if k < n else np.tile(np.arange(n), (q.shape[0], 1))
        rows = np.unique(picked)
        labels = dict(zip(rows.tolist(), batch.column("file").take(rows).to_pylist()))
        starts, ends = batch.column("start_s").to_numpy(), batch.column("end_s").to_numpy()
        for j in range(q.shape[0]):
            items = [(float(sims[j, i]), (-file_index, -(row0 + int(i))), labels[int(i)], float(starts[i]), float(ends[i]))
                     for i in picked[j]]
            best[j] = heapq.nlargest(top, best[j] + items)
        row0 += n
    return best


def search(folder: Path, queries: list[Query], top: int = 10, *, threads: int | None = None) -> list[dict]:
    """The ``top`` stored windows most like each query (cosine similarity, exact), best first.

    The embedding files are read side by side, one per thread (``threads``: the CPUs this
    process may use); each keeps only its best windows per query, so memory holds a Parquet
    batch per thread and the hits. Ties go to the earlier file, then the earlier window."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    if top < 1:
        raise ConfigError(f"--top must be >= 1, got {top}")
    files = embedding_files(folder)
    q = np.stack([x.vector for x in queries]).astype(np.float32)  # [Q, D]
    n_threads = threads or max(1, len(os.sched_getaffinity(0)))
    with ThreadPoolExecutor(max_workers=n_threads) as pool:  # numpy and pyarrow release the GIL
        per_file = list(pool.map(lambda item: _file_best(item[1], item[0], q, top), enumerate(files)))
    hits = []
    for j, query in enumerate(queries):
        merged = heapq.nlargest(top, (item for best in per_file for item in best[j]))
        for rank, (sim, _, label, start, end) in enumerate(merged, start=1):
            hits.append({"query": query.name, "rank": rank, "file": label, "start_s": start, "end_s": end,
                         "similarity": sim})
    return hits


def clip_queries(embedder: Embedder, clip: Path) -> list[Query]:
    starts, vectors = embedder.embed(clip)
    unit = _unit(vectors, str(clip))
    if len(starts) == 1:
        return [Query(clip.name, unit[0])]
    return [Query(f"{clip.name}@{s:g}", v) for s, v in zip(starts, unit)]


def write_hits(hits: list[dict], out: Path) -> Path:
    import csv
    import io

    from streamer.files import atomic_write_text

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HIT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for hit in hits:
        writer.writerow({**hit, "similarity": f"{hit['similarity']:.6f}"})
    return atomic_write_text(out, buf.getvalue())


def write_hits_raven(hits: list[dict], out: Path) -> Path:
    """The hits as one Raven selection table: a selection per hit, its file in ``Begin File``
    and its place in it in ``File Offset (s)`` (the begin and end times are within that file)."""
    from streamer.files import atomic_write_text

    columns = ("Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)", "High Freq (Hz)",
               "Begin File", "File Offset (s)", "Query", "Rank", "Similarity")
    lines = ["\t".join(columns)]
    for n, h in enumerate(hits, start=1):
        fields = [str(n), "Spectrogram 1", "1", f"{h['start_s']:g}", f"{h['end_s']:g}", "0", "15000", Path(h["file"]).name,
                  f"{h['start_s']:g}", h["query"], str(h["rank"]), f"{h['similarity']:.6f}"]
        lines.append("\t".join(x.replace("\t", " ") for x in fields))
    return atomic_write_text(out, "\n".join(lines) + "\n")
