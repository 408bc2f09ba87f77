"""The submission: row ids, column order, validation and an atomic, streaming write.

Rows are written as soon as every earlier file is done, so memory does not grow with the number
of files: only results that arrive ahead of an unfinished earlier file wait in memory. The rows
go to a temporary file in the destination folder (normal permissions, UTF-8) that is renamed
over the destination only when every file's 12 rows are in it, so a crash never leaves a partial
file under the final name. A write that fails (a full disk, ...) aborts the writer: the
temporary file is removed, the destination is left as it was, and :class:`OutputWriteError`
says why.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from streamer import failpoints
from streamer.errors import OutputWriteError
from streamer.files import install, remove_stale_temporaries, temporary_sibling
from streamer.metadata import N_WINDOWS_PER_FILE, row_ids

log = logging.getLogger(__name__)

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

    Raises:
        OutputWriteError: from any method that writes, when writing fails (the writer is then
            aborted).
    """

    def __init__(self, path: str | Path, stems: list[str] | tuple[str, ...], classes: tuple[str, ...]) -> None:
        self.path = Path(path)
        self.stems = tuple(stems)
        self.classes = tuple(classes)
        self._waiting: dict[int, np.ndarray] = {}
        self._done = np.zeros(len(self.stems), dtype=bool)
        self._next = 0
        self.n_rows = 0
        self.closed = False
        self.broken: str | None = None
        self._handle = None
        remove_stale_temporaries(self.path)
        try:
            fd, self._tmp = temporary_sibling(self.path)
            self._handle = os.fdopen(fd, "w", encoding="utf-8", newline="")
            self._handle.write(",".join(("row_id",) + self.classes) + "\n")
        except OSError as exc:
            self._fail(exc)

    def has(self, index: int) -> bool:
        return bool(self._done[index])

    @property
    def n_done(self) -> int:
        return int(self._done.sum())

    def missing(self) -> list[int]:
        """Indices of the files that have no rows yet."""
        return [int(i) for i in np.flatnonzero(~self._done)]

    def set_file(self, index: int, probs: np.ndarray) -> None:
        """Store file ``index``'s probabilities ``[12, C]`` (once; a second call is an error)
        and write every block that is now next in order."""
        if self.broken is not None:
            raise OutputWriteError(self.broken)
        if self._done[index]:
            raise ValueError(f"{self.stems[index]}: rows given twice")
        block = check_block(self.stems[index], probs, len(self.classes))
        self._done[index] = True
        self._waiting[index] = block
        while self._next in self._waiting:
            try:
                self._write_rows(self._next, self._waiting[self._next])
            except (OSError, ValueError, UnicodeError) as exc:
                self._fail(exc)
            del self._waiting[self._next]  # only once its rows are in the file
            self._next += 1

    def _write_rows(self, index: int, block: np.ndarray) -> None:
        failpoints.hit("parent.row_write", self.stems[index])
        ids = row_ids(self.stems[index])
        lines = [rid + "," + ",".join([FLOAT_FORMAT % v for v in row]) for rid, row in zip(ids, block.tolist())]
        self._handle.write("\n".join(lines) + "\n")
        self.n_rows += len(lines)

    def _fail(self, exc: BaseException):
        reason = f"could not write {self.path}: {getattr(exc, 'strerror', None) or exc}"
        self.abort()
        self.broken = reason
        raise OutputWriteError(reason) from exc

    def close(self) -> Path:
        """Check that every file has its rows, then atomically move the file into place."""
        if self.broken is not None:
            raise OutputWriteError(self.broken)
        missing = self.missing()
        if missing:
            raise ValueError(f"{len(missing)} files have no rows, e.g. {[self.stems[i] for i in missing[:3]]}")
        expected = len(self.stems) * N_WINDOWS_PER_FILE
        if self.n_rows != expected:  # never install a short file, whatever went wrong
            self._fail(RuntimeError(f"{self.n_rows} rows written, {expected} expected"))
        try:
            self._handle.flush()
            self._handle.close()
            failpoints.hit("parent.before_rename")
            install(self._tmp, self.path)
        except OSError as exc:
            self._fail(exc)
        except BaseException:
            self.abort()
            raise
        self.closed = True
        return self.path

    def abort(self) -> None:
        """Drop the temporary file (the destination is left as it was)."""
        if self._handle is not None and not self._handle.closed:
            try:
                self._handle.close()
            except OSError as exc:  # the data is being thrown away; a failed flush changes nothing
                log.debug("%s: closing the aborted file: %s", self._tmp, exc)
        tmp = getattr(self, "_tmp", None)
        if tmp is not None:
            tmp.unlink(missing_ok=True)
