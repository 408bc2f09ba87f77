"""Per-recording score files of the archive mode, written chunk by chunk and atomically.

Wide format (default): ``file, window, start_s, end_s`` then one float32 column per class.
Long format (``top_k``): ``file, window, start_s, end_s, rank, class, score`` with the ``top_k``
best classes of each window, for very large runs. Parquet (via pyarrow; one row group per hour
of audio, :data:`ROW_GROUP_WINDOWS`) or CSV. Rows go to a temporary file beside the
destination, renamed into place by :meth:`ScoreWriter.close`, so a partial file never looks
finished; memory holds at most one row group's rows.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np

from streamer.files import TEMP_SUFFIX as _TEMP_SUFFIX
from streamer.files import glob_escape, install, temporary_sibling
from streamer.metadata import WINDOW_S

log = logging.getLogger(__name__)

FORMATS = ("parquet", "csv")
#: A score file's temporary sibling is ``.<name>.<pid>.<random>.tmp`` until it is renamed into
#: place (streamer.files).
_TEMPORARY = re.compile(r"^\..+\.(?:parquet|csv|txt)\.(?:\d+\.)?[^.]+\.tmp$")


#: Windows per Parquet row group: one hour of audio. A ParquetWriter keeps every row group's
#: metadata (about 0.8 KB per column) until the file is closed; one group per 60-s chunk held
#: 280 MB per day of audio for a wide score file (238 columns), so memory grew with the length of
#: an input. One group per hour holds a sixtieth of that, and the rows waiting for their group
#: are at most 0.7 MB (wide scores) or 4.4 MB (float32 embeddings).
ROW_GROUP_WINDOWS = 720


class ParquetRows:
    """A Parquet file written in row groups of :data:`ROW_GROUP_WINDOWS` windows: tables are
    buffered until a group is full (``options`` go to ``pyarrow.parquet.ParquetWriter``)."""

    def __init__(self, path: Path, **options) -> None:
        self.path = path
        self.options = options
        self._writer = None
        self._pending: list = []
        self._windows = 0

    def add(self, table, n_windows: int) -> None:
        self._pending.append(table)
        self._windows += n_windows
        if self._windows >= ROW_GROUP_WINDOWS:
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self._pending:
            return
        table = pa.concat_tables(self._pending)
        if self._writer is None:
            self._writer = pq.ParquetWriter(str(self.path), table.schema, **self.options)
        self._writer.write_table(table, row_group_size=max(1, table.num_rows))
        self._pending, self._windows = [], 0

    def close(self) -> None:
        self.flush()
        if self._writer is not None:
            self._writer.close()

    def abort(self) -> None:
        self._pending = []
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception as exc:  # already broken: the temporary file is removed anyway
                log.debug("%s: closing the aborted writer failed: %s", self.path, exc)


def remove_temporaries_of(path: Path) -> int:
    """Delete the temporary files of the score file ``path`` (left by a process that died
    while writing it)."""
    n = 0
    for tmp in Path(path).parent.glob(f".{glob_escape(Path(path).name)}.*{_TEMP_SUFFIX}"):
        tmp.unlink(missing_ok=True)
        n += 1
    return n


def remove_stale_temporaries(out_dir: Path) -> int:
    """Delete every score writer's temporary file below ``out_dir`` (left by a killed run)."""
    n = 0
    for tmp in Path(out_dir).rglob(f".*{_TEMP_SUFFIX}"):
        if tmp.is_file() and _TEMPORARY.match(tmp.name):
            tmp.unlink()
            n += 1
    if n:
        log.info("removed %d temporary file(s) left by an interrupted run", n)
    return n


class ScoreWriter:
    """Streams one recording's window scores to ``path``.

    Args:
        path: destination file.
        file_label: the value of the ``file`` column (the input's relative name).
        classes: class columns, in order.
        fmt: ``parquet`` or ``csv``.
        top_k: keep only the best ``top_k`` classes per window (long format).
    """

    def __init__(self, path: Path, file_label: str, classes: tuple[str, ...], *, fmt: str = "parquet", top_k: int | None = None,
                 window_s: float = WINDOW_S) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
        if top_k is not None and not 1 <= top_k <= len(classes):
            raise ValueError(f"top_k must be between 1 and {len(classes)}, got {top_k}")
        self.path = Path(path)
        self.file_label = file_label
        self.classes = tuple(classes)
        self.fmt = fmt
        self.top_k = top_k
        self.window_s = float(window_s)
        fd, self._tmp = temporary_sibling(self.path)  # normal permissions, as open() would give
        os.close(fd)
        self._writer = None
        self._csv = None
        self.n_rows = 0

    def _table(self, first_window: int, probs: np.ndarray):
        import pyarrow as pa

        n = probs.shape[0]
        window = np.arange(first_window, first_window + n, dtype=np.int64)
        start = (window * self.window_s).astype(np.float64)
        if self.top_k is None:
            cols = {
                "file": pa.array([self.file_label] * n, pa.string()),
                "window": window,
                "start_s": start,
                "end_s": start + self.window_s,
            }
            for j, name in enumerate(self.classes):
                cols[name] = pa.array(probs[:, j], pa.float32())
            return pa.table(cols)
        order = np.argsort(-probs, axis=1, kind="stable")[:, : self.top_k]
        k = self.top_k
        return pa.table(
            {
                "file": pa.array([self.file_label] * (n * k), pa.string()),
                "window": np.repeat(window, k),
                "start_s": np.repeat(start, k),
                "end_s": np.repeat(start + self.window_s, k),
                "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), n),
                "class": pa.array([self.classes[c] for c in order.reshape(-1)], pa.string()),
                "score": pa.array(np.take_along_axis(probs, order, axis=1).reshape(-1), pa.float32()),
            }
        )

    def write_chunk(self, first_window: int, probs: np.ndarray) -> None:
        """Append the scores ``[n, C]`` of windows ``first_window …``."""
        probs = np.asarray(probs, dtype=np.float32)
        if probs.ndim != 2 or probs.shape[1] != len(self.classes):
            raise ValueError(f"expected [n, {len(self.classes)}] scores, got {probs.shape}")
        table = self._table(first_window, probs)
        if self.fmt == "parquet":
            if self._writer is None:
                self._writer = ParquetRows(self._tmp)
            self._writer.add(table, probs.shape[0])
        else:
            import pyarrow.csv as pacsv

            if self._csv is None:
                self._csv = pacsv.CSVWriter(str(self._tmp), table.schema)
            self._csv.write_table(table)
        self.n_rows += probs.shape[0]

    def close(self) -> Path:
        """Finish the file and move it into place."""
        if self._writer is None and self._csv is None:
            self.write_chunk(0, np.zeros((0, len(self.classes)), np.float32))  # an empty, valid file
        for w in (self._writer, self._csv):
            if w is not None:
                w.close()
        return install(self._tmp, self.path)

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.abort()
        if self._csv is not None:
            try:
                self._csv.close()
            except Exception as exc:  # already broken: the temporary file is removed anyway
                log.debug("%s: closing the aborted writer failed: %s", self._tmp, exc)
        if self._tmp.exists():
            self._tmp.unlink()


#: Folder (inside the output folder) of the embedding files. Its leading underscore keeps it out
#: of ``pyarrow.dataset.dataset(out_dir)`` (which skips names starting with ``_`` or ``.``), so
#: the score files still read as one table; ``dataset(out_dir / "_embeddings")`` reads these.
EMBEDDINGS_FOLDER = "_embeddings"
EMBEDDING_DIM = 1536


def embeddings_path(out_dir: Path, rel: str) -> Path:
    """Where the embeddings of the input ``rel`` go: ``<out>/_embeddings/<rel>.parquet``."""
    return Path(out_dir) / EMBEDDINGS_FOLDER / f"{rel}.parquet"


class EmbeddingWriter:
    """Streams one recording's window embeddings to a Parquet file, written like the scores.

    Columns ``file`` (string), ``window`` (int64), ``start_s``, ``end_s`` (float64) and
    ``embedding``: a fixed-size list of ``dim`` float32 (or float16: Parquet's FLOAT16 logical
    type, half the size) values, Perch's embedding of the window exactly as it came out of the
    model (float16: rounded to nearest).
    """

    def __init__(self, path: Path, file_label: str, *, dtype: str = "float32", dim: int = EMBEDDING_DIM,
                 window_s: float = WINDOW_S) -> None:
        if dtype not in ("float32", "float16"):
            raise ValueError(f"dtype must be float32 or float16, got {dtype!r}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file_label = file_label
        self.dtype = dtype
        self.dim = dim
        self.window_s = float(window_s)
        fd, self._tmp = temporary_sibling(self.path)
        os.close(fd)
        self._writer = None
        self.n_rows = 0

    def write_chunk(self, first_window: int, embeddings: np.ndarray) -> None:
        """Append the embeddings ``[n, dim]`` of windows ``first_window …``."""
        import pyarrow as pa

        values = np.ascontiguousarray(embeddings, dtype=np.float16 if self.dtype == "float16" else np.float32)
        if values.ndim != 2 or values.shape[1] != self.dim:
            raise ValueError(f"expected [n, {self.dim}] embeddings, got {values.shape}")
        n = values.shape[0]
        window = np.arange(first_window, first_window + n, dtype=np.int64)
        start = (window * self.window_s).astype(np.float64)
        element = pa.float16() if self.dtype == "float16" else pa.float32()
        table = pa.table({
            "file": pa.array([self.file_label] * n, pa.string()),
            "window": window,
            "start_s": start,
            "end_s": start + self.window_s,
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1), element), self.dim),
        })
        if self._writer is None:
            # No dictionary for the embedding: floats do not repeat, and the attempt left the
            # file half as large again as the values (1.80 MB against 1.18 MB for 16 minutes).
            self._writer = ParquetRows(self._tmp, use_dictionary=["file"])
        self._writer.add(table, n)
        self.n_rows += n

    def close(self) -> Path:
        if self._writer is None:
            self.write_chunk(0, np.zeros((0, self.dim), np.float32))  # an empty, valid file
        self._writer.close()
        return install(self._tmp, self.path)

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.abort()
        if self._tmp.exists():
            self._tmp.unlink()
