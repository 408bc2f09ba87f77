"""Everything between the networks' outputs and the submission rows.

Pure numpy functions on one file at a time: arrays are ``[T, C]`` (windows × classes) unless
said otherwise. They are the same in the sequential path, the pipeline's reducer and the sweep.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

#: Temporal smoothing kernel of the model-card run: centre, each neighbour.
SMOOTH_CENTER = 0.8
SMOOTH_SIDE = 0.1


def blend_logits(
    perch: np.ndarray,
    cnn: np.ndarray | None,
    crnn: np.ndarray | None,
    weights: Sequence[float],
) -> np.ndarray:
    """Weighted mean of pre-sigmoid logits over the models that are present.

    The weights of absent students drop out of the denominator, so the result stays a weighted
    mean; with no student, Perch's logits pass through unchanged.

    Args:
        perch, cnn, crnn: float32 ``[T, C]``; a student may be ``None``.
        weights: (perch, cnn, crnn) weights.
    """
    w_p, w_c, w_r = (float(w) for w in weights)
    if cnn is None and crnn is None:
        return np.asarray(perch, dtype=np.float32)
    total = w_p * perch
    denom = w_p
    if cnn is not None:
        total = total + w_c * cnn
        denom += w_c
    if crnn is not None:
        total = total + w_r * crnn
        denom += w_r
    if denom <= 0:
        raise ValueError(f"blend weights {tuple(weights)} sum to {denom} over the loaded models")
    return (total / denom).astype(np.float32, copy=False)


def add_prior(logits: np.ndarray, prior_logit: np.ndarray, prior_scale: float) -> np.ndarray:
    """``logits + prior_scale · prior_logit``, the file's prior broadcast over its windows."""
    return (logits + np.float32(prior_scale) * np.asarray(prior_logit, dtype=np.float32)[None, :]).astype(
        np.float32, copy=False
    )


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function without overflow warnings for large negative inputs."""
    x = np.asarray(x)
    out = np.empty_like(x, dtype=np.result_type(x.dtype, np.float32))
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    e = np.exp(x[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def fold_mean_probability(fold_logits: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """Mean over folds of the per-fold sigmoid. ``[K, T, C]`` → ``[T, C]``."""
    stacked = np.asarray(fold_logits)
    return sigmoid(stacked).mean(axis=0).astype(np.float32, copy=False)


def smooth_time(p: np.ndarray, center: float = SMOOTH_CENTER, side: float = SMOOTH_SIDE) -> np.ndarray:
    """``center·x[t] + side·x[t−1] + side·x[t+1]`` with the edge windows replicated."""
    p = np.asarray(p, dtype=np.float32)
    prev = np.concatenate([p[:1], p[:-1]], axis=0)
    nxt = np.concatenate([p[1:], p[-1:]], axis=0)
    return (np.float32(center) * p + np.float32(side) * prev + np.float32(side) * nxt).astype(np.float32, copy=False)


def top2_multiplier(p: np.ndarray) -> np.ndarray:
    """Scale each class's column by the mean of its two highest windows in the file.

    With a single window, that window is used twice.
    """
    p = np.asarray(p, dtype=np.float32)
    if p.shape[0] >= 2:
        top2 = np.sort(p, axis=0)[-2:]
    else:
        top2 = np.concatenate([p, p], axis=0)
    return (p * top2.mean(axis=0, keepdims=True)).astype(np.float32, copy=False)


def finalize(prob: np.ndarray, *, center: float = SMOOTH_CENTER, side: float = SMOOTH_SIDE) -> np.ndarray:
    """Smoothing, then the top-2 multiplier, then a clip to [0, 1]."""
    return np.clip(top2_multiplier(smooth_time(prob, center, side)), 0.0, 1.0)
