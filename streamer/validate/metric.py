"""The competition metric: macro ROC-AUC over the classes with a positive.

Pure numpy. Each class's AUC is the Mann–Whitney statistic computed from ranks, tied scores
sharing their average rank, which is what ROC-AUC is (a tie between a positive and a negative
counts one half). All classes are ranked at once, so scoring a whole submission takes a few
milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Why a class is not scored.
SKIP_NO_POSITIVE = "no positive"
SKIP_NO_NEGATIVE = "no negative"


def average_ranks(scores: np.ndarray) -> np.ndarray:
    """Ranks 1..N of each column of ``scores [N, C]``, ties sharing their average rank (float64)."""
    scores = np.asarray(scores)
    n, c = scores.shape
    if n == 0:
        return np.zeros((0, c))
    order = np.argsort(scores, axis=0, kind="stable")
    ordered = np.take_along_axis(scores, order, axis=0)
    starts = np.ones((n, c), dtype=bool)
    starts[1:] = ordered[1:] != ordered[:-1]
    # A tie group per run of equal values; ids made unique across columns.
    group = np.cumsum(starts, axis=0) - 1 + np.arange(c)[None, :] * n
    positions = np.broadcast_to(np.arange(1, n + 1, dtype=np.float64)[:, None], (n, c))
    flat = group.ravel()
    mean_rank = np.bincount(flat, weights=positions.ravel(), minlength=n * c) / np.maximum(
        np.bincount(flat, minlength=n * c), 1
    )
    ranks = np.empty((n, c), dtype=np.float64)
    np.put_along_axis(ranks, order, mean_rank[group], axis=0)
    return ranks


@dataclass(frozen=True)
class MetricResult:
    """Per-class AUCs and their macro mean.

    Attributes:
        macro_auc: mean of the scored classes' AUCs (NaN when no class can be scored).
        auc: float64 ``[C]``, NaN for the skipped classes.
        n_positive: positives per class among the scored rows.
        n_rows: rows scored.
        skipped: per class, ``""`` when scored, else why not (:data:`SKIP_NO_POSITIVE`,
            :data:`SKIP_NO_NEGATIVE`).
    """

    macro_auc: float
    auc: np.ndarray
    n_positive: np.ndarray
    n_rows: int
    skipped: tuple[str, ...]

    @property
    def scored(self) -> np.ndarray:
        """Boolean ``[C]``: the classes that enter the macro mean."""
        return np.array([s == "" for s in self.skipped], dtype=bool)

    def macro_over(self, mask: np.ndarray) -> float:
        """Macro AUC over the scored classes selected by ``mask`` (NaN when there are none)."""
        keep = self.scored & np.asarray(mask, dtype=bool)
        return float(self.auc[keep].mean()) if keep.any() else float("nan")


def macro_auc(labels: np.ndarray, scores: np.ndarray) -> MetricResult:
    """The metric over rows × classes.

    Classes without a positive are skipped, as the competition does. A class whose every row
    is positive has no defined ROC-AUC either; it is skipped too (and reported as such).

    Args:
        labels: bool or {0, 1} ``[N, C]``.
        scores: finite numbers ``[N, C]``; only their order within each column matters.

    Raises:
        ValueError: shapes differ, or a score is not finite.
    """
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 2 or y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} must be the same [rows, classes] shape")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or infinite values")
    n_rows, n_classes = y.shape
    n_pos = y.sum(axis=0)
    n_neg = n_rows - n_pos
    ok = (n_pos > 0) & (n_neg > 0)
    auc = np.full(n_classes, np.nan)
    if ok.any():
        ranks = average_ranks(s[:, ok])
        yp = y[:, ok]
        pos = n_pos[ok].astype(np.float64)
        neg = n_neg[ok].astype(np.float64)
        rank_sum = (ranks * yp).sum(axis=0)
        auc[ok] = (rank_sum - pos * (pos + 1) / 2.0) / (pos * neg)
    skipped = tuple("" if k else (SKIP_NO_POSITIVE if p == 0 else SKIP_NO_NEGATIVE) for k, p in zip(ok, n_pos))
    macro = float(auc[ok].mean()) if ok.any() else float("nan")
    return MetricResult(macro_auc=macro, auc=auc, n_positive=n_pos.astype(np.int64), n_rows=n_rows, skipped=skipped)
