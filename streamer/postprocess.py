"""Everything between the networks' outputs and the submission rows.

Pure numpy functions on one file at a time: arrays are ``[T, C]`` (windows × classes) unless
said otherwise. They are the same in the sequential path, the pipeline's reducer and the sweep.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

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


# --- the steps a recipe lists -------------------------------------------------------------
#
# A recipe's post-processing is an ordered list of named steps with parameters. Each step is a
# small pure function of one file's scores ``[T, C]`` (and, for ``prior`` and ``head``, what the
# reducer knows of the file); the registry below says which parameters each step takes, what
# they must be, and in which space (logits or probabilities) it works, so that a recipe is
# checked before any audio is read.

LOGIT, PROBABILITY, ANY = "logit", "probability", "any"


def smooth_kernel(p: np.ndarray, kernel: Sequence[float]) -> np.ndarray:
    """Temporal smoothing with an odd-length kernel centred on each window, edges replicated:
    ``out[t] = Σ_d kernel[h + d] · x[clip(t + d)]`` for ``d = −h..h``.

    Summed centre first, then the pairs at distance 1, 2, … (earlier window first), so that
    ``[0.1, 0.8, 0.1]`` gives exactly the original script's float32 numbers."""
    p = np.asarray(p, dtype=np.float32)
    weights = [np.float32(w) for w in kernel]
    half = len(weights) // 2
    n = p.shape[0]
    out = weights[half] * p
    index = np.arange(n)
    for d in range(1, half + 1):
        before = p[np.maximum(index - d, 0)]
        after = p[np.minimum(index + d, n - 1)]
        out = out + weights[half - d] * before + weights[half + d] * after
    return out.astype(np.float32, copy=False)


def topk_multiplier(p: np.ndarray, k: int) -> np.ndarray:
    """Scale each class's column by the mean of its ``k`` highest windows in the file (of all
    its windows when it has fewer). ``k = 2`` is :func:`top2_multiplier`."""
    p = np.asarray(p, dtype=np.float32)
    if k == 2 and p.shape[0] < 2:
        return top2_multiplier(p)
    top = np.sort(p, axis=0)[-min(k, p.shape[0]):]
    return (p * top.mean(axis=0, keepdims=True)).astype(np.float32, copy=False)


def temperature(logits: np.ndarray, per_class: np.ndarray) -> np.ndarray:
    """Logits divided by a temperature per class (float32 ``[C]``, > 0)."""
    return (np.asarray(logits, dtype=np.float32) / np.asarray(per_class, dtype=np.float32)[None, :]).astype(np.float32, copy=False)


def to_logit(p: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """``log(p / (1 − p))`` with ``p`` clipped to ``[eps, 1 − eps]``."""
    q = np.clip(np.asarray(p, dtype=np.float64), eps, 1.0 - eps)
    return (np.log(q) - np.log1p(-q)).astype(np.float32)


def percentile_table(quantiles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(values, percentiles)`` of one class from its reference quantiles (``Q`` sorted values
    at the percentiles ``0, 1/(Q−1), …, 1``): tied values are merged at the mean of their
    percentiles (their mid-rank), so ``values`` increases strictly."""
    q = np.asarray(quantiles, dtype=np.float64)
    grid = np.linspace(0.0, 1.0, q.size)
    values, start = np.unique(q, return_index=True)
    counts = np.diff(np.append(start, q.size))
    percentiles = np.array([grid[s : s + c].mean() for s, c in zip(start, counts)])
    return values, percentiles


def rank_percentile(x: np.ndarray, tables) -> np.ndarray:
    """Each score's percentile among its class's reference scores, float32 ``[..., C]``.

    ``tables``: one :func:`percentile_table` per class. Between reference values the
    percentile is interpolated linearly; beyond them it approaches 0 (or 1) exponentially, so
    the transform is strictly increasing everywhere: a member's order of windows within a
    class is kept exactly (its ROC-AUC alone is unchanged), only the scale changes."""
    x = np.asarray(x, dtype=np.float64)
    out = np.empty(x.shape, dtype=np.float64)
    for c, (values, percentiles) in enumerate(tables):
        col = x[..., c]
        p = np.interp(col, values, percentiles)
        low, high = col < values[0], col > values[-1]
        p[low] = percentiles[0] * np.exp(col[low] - values[0])
        p[high] = 1.0 - (1.0 - percentiles[-1]) * np.exp(values[-1] - col[high])
        out[..., c] = p
    return out.astype(np.float32)


def flat_sigmoid(logits: np.ndarray, sensitivity: float = 1.0) -> np.ndarray:
    """BirdNET's score: ``1 / (1 + exp(-clip(logit + (sensitivity - 1) * 10, -20, 20)))``.

    BirdNET-Analyzer's ``--sensitivity`` (0.5..1.5) shifts every logit by ``(s - 1) * 10``
    before the sigmoid; the clip bounds the scores to about ``[2e-9, 1 - 2e-9]``. Computed in
    float32, as BirdNET-Analyzer does, so the scores match its to float32 round-off."""
    x = np.asarray(logits, dtype=np.float32) + np.float32((sensitivity - 1.0) * 10.0)
    return (np.float32(1.0) / (np.float32(1.0) + np.exp(-np.clip(x, np.float32(-20.0), np.float32(20.0))))).astype(np.float32, copy=False)


def clip_scores(p: np.ndarray, low: float, high: float) -> np.ndarray:
    return np.clip(np.asarray(p, dtype=np.float32), np.float32(low), np.float32(high))


class ParamSpec:
    """One parameter of a step: its TOML types, whether it is required, its default, and a
    check returning a problem (``""`` when fine)."""

    def __init__(self, kinds: tuple, what: str, *, default=None, required: bool = False, check=None) -> None:
        self.kinds, self.what, self.default, self.required = kinds, what, default, required
        self._check = check

    def check(self, value) -> str:
        return self._check(value) if self._check else ""


class StepDef:
    """A step of the registry: its parameters and the spaces it reads and writes."""

    def __init__(self, params: dict[str, ParamSpec], space_in: str, space_out: str, doc: str) -> None:
        self.params, self.space_in, self.space_out, self.doc = params, space_in, space_out, doc


class StepSpec(tuple):
    """A step as a recipe states it: ``(name, ((param, value), ...))``; hashable, picklable."""

    def __new__(cls, name: str, params: tuple = ()):
        return super().__new__(cls, (name, tuple(params)))

    def __getnewargs__(self):
        return (self[0], self[1])

    @property
    def name(self) -> str:
        return self[0]

    @property
    def params(self) -> tuple:
        return self[1]

    def get(self, key: str, default=None):
        return dict(self.params).get(key, default)

    def with_param(self, key: str, value) -> "StepSpec":
        params = dict(self.params)
        params[key] = value
        return StepSpec(self.name, tuple(sorted(params.items())))


def _finite_number(minimum=None, positive=False):
    def check(value):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
            return "expected a finite number"
        if positive and value <= 0:
            return "expected a number > 0"
        if minimum is not None and value < minimum:
            return f"expected a number >= {minimum:g}"
        return ""
    return check


def _check_kernel(value) -> str:
    if len(value) == 0 or len(value) % 2 == 0:
        return "expected an odd number of weights (the centre window in the middle)"
    if any(isinstance(w, bool) or not isinstance(w, (int, float)) or not np.isfinite(w) or w < 0 for w in value):
        return "expected numbers >= 0"
    if sum(value) <= 0:
        return "the weights sum to 0: every score would be 0"
    return ""


def _check_groups(value) -> str:
    for group, t in (value.items() if isinstance(value, dict) else value):
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not np.isfinite(t) or t <= 0:
            return f"group {group!r}: expected a temperature > 0"
    return ""


def _sensitivity(value) -> str:
    problem = _finite_number()(value)
    return problem or ("" if 0.5 <= value <= 1.5 else "expected a number in [0.5, 1.5] (BirdNET-Analyzer's range)")


def _positive_int(value) -> str:
    return "" if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else "expected an integer >= 1"


STEPS: dict[str, StepDef] = {
    "prior": StepDef(
        {"scale": ParamSpec((int, float), "a number", required=True, check=_finite_number())},
        LOGIT, LOGIT, "adds scale × the file's site/hour prior logit"),
    "head": StepDef(
        {"member": ParamSpec((str,), "the name of a head member", required=True)},
        LOGIT, PROBABILITY, "runs a head member (ProtoSSM folds: the mean of their sigmoids); a dropped head is a sigmoid"),
    "sigmoid": StepDef({}, LOGIT, PROBABILITY, "logits to probabilities"),
    "flat-sigmoid": StepDef(
        {"sensitivity": ParamSpec((int, float), "a number in [0.5, 1.5]", default=1.0, check=_sensitivity)},
        LOGIT, PROBABILITY, "BirdNET's score: the sigmoid of the logit shifted by (sensitivity - 1) x 10 and clipped to [-20, 20]"),
    "logit": StepDef({}, PROBABILITY, LOGIT, "probabilities to logits (clipped to [1e-6, 1 − 1e-6])"),
    "temperature": StepDef(
        {"default": ParamSpec((int, float), "a number > 0", default=1.0, check=_finite_number(positive=True)),
         "groups": ParamSpec((dict,), "a table of class group = temperature", default=None, check=_check_groups)},
        LOGIT, LOGIT, "divides each class's logits by its group's temperature"),
    "smooth": StepDef(
        {"kernel": ParamSpec((list,), "an array of weights", required=True, check=_check_kernel)},
        ANY, ANY, "temporal smoothing with an odd-length kernel, edges replicated"),
    "topk-multiplier": StepDef(
        {"k": ParamSpec((int,), "an integer >= 1", required=True, check=_positive_int)},
        PROBABILITY, PROBABILITY, "every window times the mean of the class's k highest windows in the file"),
    "clip": StepDef(
        {"min": ParamSpec((int, float), "a number", default=0.0, check=_finite_number()),
         "max": ParamSpec((int, float), "a number", default=1.0, check=_finite_number())},
        ANY, ANY, "clips the scores to [min, max]"),
}


def chain_spaces(start: str, steps: Sequence[StepSpec]) -> str:
    """Why ``steps`` cannot run from a blend in ``start`` space to probabilities ("" when they
    can). A rank blend gives values in [0, 1], as probabilities."""
    space = PROBABILITY if start == "rank" else start
    for i, step in enumerate(steps):
        definition = STEPS[step.name]
        if definition.space_in != ANY and definition.space_in != space:
            plural = {LOGIT: "logits", PROBABILITY: "probabilities"}
            return (f"step {i} ({step.name}) takes {plural[definition.space_in]} but gets {plural[space]} here"
                    + ("; add a 'sigmoid' step before it" if space == LOGIT else "; add a 'logit' step before it"))
        if definition.space_out != ANY:
            space = definition.space_out
        if step.name == "clip" and step.get("min", 0.0) > step.get("max", 1.0):
            return f"step {i} (clip): min {step.get('min')} > max {step.get('max')}"
    if space != PROBABILITY:
        return "the last step leaves logits; the output must be probabilities: add a 'sigmoid' step (or a 'head')"
    last = steps[-1] if steps else None
    bounded = last is not None and (last.name in ("sigmoid", "flat-sigmoid", "head") or (
        last.name == "clip" and last.get("min", 0.0) >= 0 and last.get("max", 1.0) <= 1))
    if not bounded:
        return "the output must lie in [0, 1]: end with a 'clip' step (min >= 0, max <= 1), a 'sigmoid', a 'flat-sigmoid' or a 'head'"
    return ""
