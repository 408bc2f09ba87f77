"""The submission (SPEC §5): row ids, column order, validation and an atomic, streaming write.

Rows are written as soon as every earlier file is done, so memory does not grow with the number
of files: only results that arrive ahead of an unfinished earlier file wait in memory. The rows
go to a temporary file in the destination folder that is renamed over the destination only when
every file has its 12 rows, so a crash never leaves a partial file under the final name.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from streamer.metadata import N_WINDOWS_PER_FILE, row_ids

#: Nine significant digits round-trip every float32 exactly.
FLOAT_FORMAT = "%.9g"


def check_block(stem: str, probs: np.ndarray, n_classes: int) -> np.ndarray:
    """A file's probabilities as float32 ``[12, C]``; raises ValueError on a bad shape or value."""
    probs = np.asarray(probs, dtype=np.float32)
    if probs.shape != (N_WINDOWS_PER_FILE, n_classes):
        raise ValueError(f"{stem}: expected {(N_WINDOWS_PER_FILE, n_classes)} probabilities, got {probs.shape}")
    if not np.all(np.isfinite(probs)):
        raise ValueError(f"{stem}: non-finite probabilities")
    if probs.min() < 0.0 or probs.max() > 1.0:
        raise ValueError(f"{stem}: probabilities outside [0, 1] (min {probs.min()}, max {probs.max()})")
    return probs


class SubmissionWriter:
    """Streams rows, in file order, to a temporary file; :meth:`close` renames it into place.

    Args:
        path: the submission to write.
        stems: file stems in output (sorted) order.
        classes: class columns in ``sample_submission.csv`` order.
    """

    def __init__(self, path: str | Path, stems: list[str] | tuple[str, ...], classes: tuple[str, ...]) -> None:
        self.path = Path(path)
        self.stems = tuple(stems)
        self.classes = tuple(classes)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        self._tmp = Path(tmp)
        self._handle = os.fdopen(fd, "w", newline="")
        self._handle.write(",".join(("row_id",) + self.classes) + "\n")
        self._waiting: dict[int, np.ndarray] = {}
        self._done = np.zeros(len(self.stems), dtype=bool)
        self._next = 0
        self.closed = False

    def has(self, index: int) -> bool:
        return bool(self._done[index])

    @property
    def n_done(self) -> int:
        return int(self._done.sum())

    def missing(self) -> list[int]:
        """Indices of the files that have no rows yet."""
        return [int(i) for i in np.flatnonzero(~self._done)]

    def set_file(self, index: int, probs: np.ndarray) -> None:
        """Store file ``index``'s probabilities ``[12, C]`` (once; a second call is an error)."""
        if self._done[index]:
            raise ValueError(f"{self.stems[index]}: rows given twice")
        block = check_block(self.stems[index], probs, len(self.classes))
        self._done[index] = True
        self._waiting[index] = block
        while self._next in self._waiting:
            self._write_rows(self._next, self._waiting.pop(self._next))
            self._next += 1

    def _write_rows(self, index: int, block: np.ndarray) -> None:
        ids = row_ids(self.stems[index])
        lines = [rid + "," + ",".join([FLOAT_FORMAT % v for v in row]) for rid, row in zip(ids, block.tolist())]
        self._handle.write("\n".join(lines) + "\n")

    def close(self) -> Path:
        """Check that every file has rows, then atomically move the file into place."""
        missing = self.missing()
        if missing:
            raise ValueError(f"{len(missing)} files have no rows, e.g. {[self.stems[i] for i in missing[:3]]}")
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        os.replace(self._tmp, self.path)
        self.closed = True
        return self.path

    def abort(self) -> None:
        """Drop the temporary file (the destination is left as it was)."""
        if not self._handle.closed:
            self._handle.close()
        if self._tmp.exists():
            self._tmp.unlink()
