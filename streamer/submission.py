"""The submission table (SPEC §5): row ids, column order, validation and an atomic write."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from streamer.metadata import N_WINDOWS_PER_FILE, row_ids


class SubmissionTable:
    """Rows of every file, filled in any order, written in sorted file order.

    Args:
        stems: file stems in output order.
        classes: class columns in ``sample_submission.csv`` order.
    """

    def __init__(self, stems: list[str] | tuple[str, ...], classes: tuple[str, ...]) -> None:
        self.stems = tuple(stems)
        self.classes = tuple(classes)
        self.values = np.full((len(self.stems) * N_WINDOWS_PER_FILE, len(self.classes)), np.nan, dtype=np.float32)
        self.filled = np.zeros(len(self.stems), dtype=bool)

    def set_file(self, index: int, probs: np.ndarray) -> None:
        """Store file ``index``'s probabilities ``[12, C]``."""
        probs = np.asarray(probs, dtype=np.float32)
        if probs.shape != (N_WINDOWS_PER_FILE, len(self.classes)):
            raise ValueError(f"file {self.stems[index]}: expected shape {(N_WINDOWS_PER_FILE, len(self.classes))}, got {probs.shape}")
        self.values[index * N_WINDOWS_PER_FILE : (index + 1) * N_WINDOWS_PER_FILE] = probs
        self.filled[index] = True

    @property
    def missing(self) -> list[str]:
        return [s for s, ok in zip(self.stems, self.filled) if not ok]

    def validate(self) -> None:
        """Every file filled, no NaN, values in [0, 1]."""
        if self.missing:
            raise ValueError(f"{len(self.missing)} files have no rows, e.g. {self.missing[:3]}")
        if not np.all(np.isfinite(self.values)):
            raise ValueError("the submission holds non-finite values")
        lo, hi = float(self.values.min(initial=0.0)), float(self.values.max(initial=0.0))
        if lo < 0.0 or hi > 1.0:
            raise ValueError(f"the submission holds values outside [0, 1] (min {lo}, max {hi})")

    def row_ids(self) -> list[str]:
        ids: list[str] = []
        for stem in self.stems:
            ids.extend(row_ids(stem))
        return ids

    def to_frame(self):
        import pandas as pd

        frame = pd.DataFrame(self.values, columns=list(self.classes))
        frame.insert(0, "row_id", self.row_ids())
        return frame

    def write(self, path: str | Path) -> Path:
        """Validate, then write atomically (temporary file in the same folder, then rename)."""
        self.validate()
        return write_frame_atomic(self.to_frame(), path)


def write_frame_atomic(frame, path: str | Path) -> Path:
    """Write a DataFrame as CSV so that ``path`` is either the old file or the complete new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as handle:
            frame.to_csv(handle, index=False)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
