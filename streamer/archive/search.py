"""``streamer search``: where else does this call occur? Search an archive's stored embeddings.

An archive scored with ``--embeddings`` holds every window's embedding (``_embeddings/``) and a
record of the model that made them (``.streamer-embedder.json``: the model file, its SHA-256,
the embedding layer and the framing). A query is an audio clip, embedded here with that same
model and framing (each of its windows a query), or ``FILE@SECONDS``, the stored window of an
archived recording that holds that second. Every stored window is compared with every query by
cosine similarity, exactly (brute force), reading the embeddings one Parquet batch at a time:
memory holds one batch per thread and the best ``top`` hits per query, never the archive.

Speed (``streamer bench-archive --search``: 1,000 hours of 5-s windows, 720,000 x 1536 float16
values, on 2 vCPUs). Decoding Parquet's list column is most of the work (about 4 s of CPU) and
belongs to the stored layout; the rest is kept small. The float16 values become float32 inside
ONNX Runtime (numpy's ``astype`` converts one value at a time: 3.8 s of CPU, against 0.4 s), in
the same call as the float32 product with the queries, run on the calling thread: numpy's
product ran on OpenBLAS's own threads, which spin after each call and took a CPU from the file
being decoded beside it (about a third of the old search's CPU time).
"""

from __future__ import annotations

import heapq
import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamer.errors import ArtifactError, ConfigError

log = logging.getLogger(__name__)

#: The record of the model behind an archive folder's embeddings.
EMBEDDER_FILE = ".streamer-embedder.json"
EMBEDDER_FORMAT = 1
#: Rows read and scored at a time while searching: an archive's row group (an hour of 5-s
#: windows, 2.2 MB of float16), so each thread holds a few MB. Batches spanning row groups
#: (4096 rows) took a third more CPU.
SEARCH_BATCH_ROWS = 720
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


def stored_vectors(batch, path: Path) -> np.ndarray:
    """A non-empty batch's embeddings ``[n, D]`` as stored (float16 or float32): the flat values
    of its list column, without a copy."""
    n = batch.num_rows
    values = batch.column("embedding").flatten().to_numpy(zero_copy_only=False)
    if values.size % n:
        raise ArtifactError(f"{path}: {values.size} embedding values do not make {n} rows of equal length")
    if values.dtype not in (np.float16, np.float32):
        raise ArtifactError(f"{path}: embeddings of {values.dtype}; streamer stores float16 or float32")
    return values.reshape(n, -1)


class RowsGraph:
    """An ONNX Runtime graph over stored rows: ``nodes`` computing ``outputs`` from ``x``, the
    rows as float32. The graph casts them itself, ten times as fast as numpy's ``astype`` and
    as exact (every float16 is a float32). One session per stored dtype and width, each run on
    the calling thread (one intra-op thread; ``run`` releases the GIL, so threads overlap)."""

    def __init__(self, nodes, outputs, initializers=()) -> None:
        self._nodes, self._outputs, self._initializers = nodes, outputs, list(initializers)
        self._sessions: dict = {}
        self._lock = threading.Lock()

    def _session(self, dtype: np.dtype, dim: int):
        from onnx import TensorProto, helper

        from streamer.models.graphs import ThreadSettings, import_onnxruntime, session_options

        key = (dtype, dim)
        with self._lock:
            if key not in self._sessions:
                elem = TensorProto.FLOAT16 if dtype == np.float16 else TensorProto.FLOAT
                graph = helper.make_graph(
                    [helper.make_node("Cast", ["stored"], ["x"], to=TensorProto.FLOAT), *self._nodes],
                    "streamer_stored_rows", [helper.make_tensor_value_info("stored", elem, ["N", dim])],
                    [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in self._outputs],
                    self._initializers)
                model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
                model.ir_version = 8
                ort = import_onnxruntime()
                self._sessions[key] = ort.InferenceSession(model.SerializeToString(), session_options(ThreadSettings(1)),
                                                           providers=["CPUExecutionProvider"])
            return self._sessions[key]

    def run(self, rows: np.ndarray) -> list[np.ndarray]:
        return self._session(rows.dtype, rows.shape[1]).run(self._outputs, {"stored": rows})


_to_float32 = RowsGraph([], ["x"])


def as_float32(rows: np.ndarray) -> np.ndarray:
    """Stored embedding rows ``[n, D]`` (float16 or float32) as float32, the same values."""
    if rows.dtype == np.float32:
        return rows
    return _to_float32.run(rows)[0]


def _batches(files: list[Path]):
    """``(file labels, starts, ends, embeddings float32 [n, D])`` one Parquet batch at a time."""
    import pyarrow.parquet as pq

    for path in files:
        handle = pq.ParquetFile(str(path))
        for batch in handle.iter_batches(batch_size=SEARCH_BATCH_ROWS, columns=["file", "start_s", "end_s", "embedding"]):
            if batch.num_rows == 0:
                continue
            yield (batch.column("file").to_pylist(), batch.column("start_s").to_numpy(), batch.column("end_s").to_numpy(),
                   as_float32(stored_vectors(batch, path)))


def stored_query(folder: Path, spec: str) -> Query:
    """``FILE@SECONDS``: the stored embedding of the archived recording ``FILE`` (its relative
    path as the archive names it) at the window holding ``SECONDS``."""
    import pyarrow.parquet as pq

    name, _, at = spec.rpartition("@")
    try:
        seconds = float(at)
    except ValueError:
        raise ConfigError(f"{spec!r}: expected FILE@SECONDS (e.g. recorders/site3.flac@125.5)") from None
    for path in embedding_files(folder):
        for batch in pq.ParquetFile(str(path)).iter_batches(batch_size=SEARCH_BATCH_ROWS,
                                                             columns=["file", "start_s", "end_s", "embedding"]):
            starts, ends = batch.column("start_s").to_numpy(), batch.column("end_s").to_numpy()
            for i in np.flatnonzero((starts <= seconds) & (seconds < ends)).tolist():
                label = batch.column("file")[i].as_py()
                if label == name or Path(label).name == name:
                    return Query(spec, _unit(as_float32(stored_vectors(batch, path)[i: i + 1]), spec)[0])
    raise ConfigError(f"{spec!r}: no stored window of {name!r} holds {seconds:g} s (the archive's files are named by "
                      "their path relative to the input given to 'streamer archive')")


class _Similarity:
    """Cosine similarities ``[n, Q]`` of stored rows with the unit-length queries ``q [Q, D]``:
    one graph call converts the rows, multiplies them with the queries (float32) and sums their
    squares; an all-zero row gets similarity 0 (it matches nothing).

    The squares are summed by a product with ones, not ``ReduceSumSquare``: its running sum
    left the norms 3e-7 off (relative, on average), the product 5e-8, as numpy's did."""

    def __init__(self, q: np.ndarray) -> None:
        from onnx import helper, numpy_helper

        self.n_queries, self.dim = q.shape
        self._graphs = RowsGraph([helper.make_node("MatMul", ["x", "queries"], ["dots"]),
                                  helper.make_node("Mul", ["x", "x"], ["x2"]), helper.make_node("MatMul", ["x2", "ones"], ["squares"])],
                                 ["dots", "squares"], [numpy_helper.from_array(np.ascontiguousarray(q.T), "queries"),
                                                       numpy_helper.from_array(np.ones((self.dim, 1), np.float32), "ones")])

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        dots, squares = self._graphs.run(rows)
        norms = np.sqrt(squares)
        norms[norms == 0] = np.inf
        return dots / norms


class _Best:
    """Each query's best ``top`` windows so far, shared by the threads: sorted lists of
    ``(-similarity, file index, row, file, start, end)``, so ties go to the earlier file, then
    the earlier row.

    Once a query keeps ``top`` windows, its worst one is the bar: a batch's rows are compared
    with it all at once, and only those that beat it reach Python, so after the first batches
    hardly any does. A row equal to the bar beats it only from an earlier file (a file's rows
    come in order, so a later row of the same file never wins the tie)."""

    def __init__(self, n_queries: int, top: int) -> None:
        self.top = top
        self.kept: list[list[tuple]] = [[] for _ in range(n_queries)]
        self._bar = np.full(n_queries, -np.inf, np.float32)
        self._bar_file = np.full(n_queries, -1, np.int64)  # the file of each query's worst kept window
        self._lock = threading.Lock()

    def offer(self, sims: np.ndarray, file_index: int, row0: int, batch) -> None:
        """The similarities ``[n, Q]`` of ``batch``'s rows, rows ``row0 ...`` of file ``file_index``."""
        with self._lock:
            better = (sims > self._bar) | ((sims == self._bar) & (file_index < self._bar_file))
            hit_rows, hit_queries = np.nonzero(better)
            if hit_rows.size == 0:
                return
            rows = np.unique(hit_rows)
            where = dict(zip(rows.tolist(), zip(batch.column("file").take(rows).to_pylist(),
                                                batch.column("start_s").to_numpy()[rows].tolist(),
                                                batch.column("end_s").to_numpy()[rows].tolist())))
            for j in np.unique(hit_queries).tolist():
                new = [(-float(sims[i, j]), file_index, row0 + i, *where[i]) for i in hit_rows[hit_queries == j].tolist()]
                kept = heapq.nsmallest(self.top, self.kept[j] + new)
                self.kept[j] = kept
                if len(kept) == self.top:
                    self._bar[j], self._bar_file[j] = -kept[-1][0], kept[-1][1]


def _scan(path: Path, file_index: int, similarity: _Similarity, best: _Best) -> None:
    """One embedding file's windows offered to ``best``, one Parquet batch at a time."""
    import pyarrow.parquet as pq

    row0 = 0
    handle = pq.ParquetFile(str(path))
    for batch in handle.iter_batches(batch_size=SEARCH_BATCH_ROWS, columns=["file", "start_s", "end_s", "embedding"],
                                     use_threads=False):  # the files are read side by side instead
        if batch.num_rows == 0:
            continue
        rows = stored_vectors(batch, path)
        if rows.shape[1] != similarity.dim:
            raise ConfigError(f"{path}: stored embeddings have {rows.shape[1]} values, the queries {similarity.dim}")
        best.offer(similarity(rows), file_index, row0, batch)
        row0 += batch.num_rows


def search(folder: Path, queries: list[Query], top: int = 10, *, threads: int | None = None) -> list[dict]:
    """The ``top`` stored windows most like each query (cosine similarity, exact), best first.

    The embedding files are read side by side, one per thread (``threads``: the CPUs this
    process may use), into one record of each query's best windows, so memory holds a Parquet
    batch per thread and the hits. Ties go to the earlier file, then the earlier window."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    if top < 1:
        raise ConfigError(f"--top must be >= 1, got {top}")
    files = embedding_files(folder)
    similarity = _Similarity(np.stack([x.vector for x in queries]).astype(np.float32))
    best = _Best(len(queries), top)
    n_threads = threads or max(1, len(os.sched_getaffinity(0)))
    with ThreadPoolExecutor(max_workers=n_threads) as pool:  # pyarrow and onnxruntime release the GIL
        list(pool.map(lambda item: _scan(item[1], item[0], similarity, best), enumerate(files)))
    hits = []
    for query, kept in zip(queries, best.kept):
        for rank, (neg_sim, _, _, label, start, end) in enumerate(kept, start=1):
            hits.append({"query": query.name, "rank": rank, "file": label, "start_s": start, "end_s": end,
                         "similarity": -neg_sim})
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
