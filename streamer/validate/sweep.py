"""``streamer sweep``: every step after the networks, recomputed from the cache for each point
of a grid over the blend weights, the prior scale and the smoothing kernel, and scored.

Per point (the same functions as ``infer``): blend the cached logits, add
``prior_scale ×`` each file's prior logit, fuse with the ProtoSSM folds, mean of the folds'
sigmoids, smoothing, top-2 multiplier, clip; then the metric over the labelled rows.

ProtoSSM sees the teacher logits only in its last step (``ProtoSSM.fuse``): the prototype
branch (``ProtoSSM.similarity``, the whole sequence model) depends on the embedding, the site
and the hour alone, so it runs once per file and fold when the sweep starts, and each point
runs the fusion on the cached result. The numbers are those of the full forward pass.

**The prior is fitted out of fold.** It is a table of label frequencies, so fitted on the
labels it is scored on it would leak them. The files are split into K folds, grouped by file
(default) or by site, and each file's prior logit comes from tables fitted on the other folds
only (:func:`out_of_fold_prior_logits`). ``prior_fit="all"`` fits one prior on every label, as
``infer`` does; it leaks and exists to check a sweep point against ``infer`` + ``score``.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamer.files import save_figure
from streamer import postprocess
from streamer.errors import ArtifactError, ConfigError
from streamer.metadata import parse_hour, parse_site
from streamer.prior import fit_prior
from streamer.validate.metric import MetricResult, macro_auc

log = logging.getLogger(__name__)

AXES = ("perch", "cnn", "crnn", "prior", "smooth")
PRIOR_FITS = ("oof", "all")
GROUPS = ("file", "site")
DEFAULT_PRIOR_FOLDS = 5


# --------------------------------------------------------------------------- grid


@dataclass(frozen=True)
class SweepPoint:
    """One setting of everything the sweep varies; each field is an ``infer`` flag."""

    perch: float
    cnn: float
    crnn: float
    prior: float
    smooth_center: float
    smooth_side: float

    @property
    def blend(self) -> tuple[float, float, float]:
        return (self.perch, self.cnn, self.crnn)

    @property
    def smooth(self) -> str:
        return f"{_num(self.smooth_center)}/{_num(self.smooth_side)}"

    def value(self, axis: str):
        """This point's value on a grid axis (``smooth``: the pair centre, side)."""
        return (self.smooth_center, self.smooth_side) if axis == "smooth" else getattr(self, axis)

    def infer_flags(self) -> list[str]:
        """The ``streamer infer`` flags that select this point."""
        return [
            "--blend-perch", _num(self.perch), "--blend-cnn", _num(self.cnn), "--blend-crnn", _num(self.crnn),
            "--prior-scale", _num(self.prior), "--smooth-center", _num(self.smooth_center), "--smooth-side", _num(self.smooth_side),
        ]


def _num(x: float) -> str:
    return f"{x:.10g}"


def _parse_number(axis: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"--grid {axis}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ConfigError(f"--grid {axis}: {text!r} is not finite")
    return value


def _parse_range(axis: str, text: str) -> list[float]:
    """``start:stop:step``, both ends included (to round-off)."""
    parts = text.split(":")
    if len(parts) != 3:
        raise ConfigError(f"--grid {axis}: a range is start:stop:step, got {text!r}")
    start, stop, step = (_parse_number(axis, p) for p in parts)
    if step <= 0 or stop < start:
        raise ConfigError(f"--grid {axis}: range {text!r} needs step > 0 and stop >= start")
    n = int(math.floor((stop - start) / step + 1e-9)) + 1
    if n > 1000:
        raise ConfigError(f"--grid {axis}: range {text!r} has {n} values (at most 1000)")
    return [round(start + i * step, 10) for i in range(n)]


def _parse_smooth(text: str) -> tuple[float, float]:
    """``C/S`` or ``C/S/S`` (centre weight first, then the neighbours'), or ``off`` (1/0)."""
    if text.strip().lower() == "off":
        return (1.0, 0.0)
    parts = [_parse_number("smooth", p) for p in text.split("/")]
    if len(parts) == 3 and parts[1] != parts[2]:
        raise ConfigError(f"--grid smooth: {text!r}: the kernel is symmetric, the two neighbour weights must be equal")
    if len(parts) not in (2, 3):
        raise ConfigError(f"--grid smooth: {text!r}: expected CENTER/SIDE (e.g. 0.8/0.1), CENTER/SIDE/SIDE or off")
    center, side = parts[0], parts[1]
    if center < 0 or side < 0 or center + 2 * side <= 0:
        raise ConfigError(f"--grid smooth: {text!r}: weights must be >= 0 and not all 0")
    return (center, side)


def parse_grid(specs: list[str] | tuple[str, ...], base: SweepPoint) -> tuple[list[SweepPoint], dict[str, list]]:
    """Grid points from ``AXIS=VALUES`` items; axes not given keep ``base``'s value.

    Axes: ``perch``, ``cnn``, ``crnn`` (blend weights, as ``--blend-*``), ``prior`` (as
    ``--prior-scale``), ``smooth`` (``CENTER/SIDE`` as ``--smooth-center/--smooth-side``, also
    ``CENTER/SIDE/SIDE`` or ``off``). VALUES is a comma list whose items are numbers or
    ``start:stop:step`` ranges (both ends included). Points are the Cartesian product, in
    the order given.

    Returns:
        The points, and the values of every axis (given or from ``base``).

    Raises:
        ConfigError: syntax, unknown or repeated axis, negative weight.
    """
    values: dict[str, list] = {
        "perch": [base.perch], "cnn": [base.cnn], "crnn": [base.crnn], "prior": [base.prior],
        "smooth": [(base.smooth_center, base.smooth_side)],
    }
    seen: set[str] = set()
    for spec in specs:
        axis, sep, text = spec.partition("=")
        axis = axis.strip().lower()
        if not sep or not text.strip():
            raise ConfigError(f"--grid: expected AXIS=VALUES, got {spec!r} (axes: {', '.join(AXES)})")
        if axis not in AXES:
            raise ConfigError(f"--grid: unknown axis {axis!r} (axes: {', '.join(AXES)})")
        if axis in seen:
            raise ConfigError(f"--grid: axis {axis!r} given twice")
        seen.add(axis)
        items = [t.strip() for t in text.split(",") if t.strip()]
        if axis == "smooth":
            parsed: list = [_parse_smooth(t) for t in items]
        else:
            parsed = []
            for t in items:
                parsed.extend(_parse_range(axis, t) if ":" in t else [_parse_number(axis, t)])
            if axis != "prior" and any(v < 0 for v in parsed):
                raise ConfigError(f"--grid {axis}: blend weights must be >= 0")
        values[axis] = list(dict.fromkeys(parsed))  # drop repeats, keep order
    points = [
        SweepPoint(perch=p, cnn=c, crnn=r, prior=s, smooth_center=k[0], smooth_side=k[1])
        for p, c, r, s, k in itertools.product(values["perch"], values["cnn"], values["crnn"], values["prior"], values["smooth"])
    ]
    return points, values


# --------------------------------------------------------------------------- out-of-fold prior


@dataclass(frozen=True)
class PriorFolds:
    """Which fold each labelled file's prior is held out in.

    Attributes:
        fold: int ``[files]``; files with the same fold are held out together.
        group: ``"file"`` or ``"site"``: what a fold is made of.
        n_folds: number of folds.
    """

    fold: np.ndarray
    group: str
    n_folds: int

    def describe(self) -> str:
        sizes = np.bincount(self.fold, minlength=self.n_folds)
        return (
            f"out of fold: {self.n_folds} folds grouped by {self.group} "
            f"({len(self.fold)} files, {sizes.min()}–{sizes.max()} per fold); each file's prior is fitted "
            f"on the other folds only"
        )


def assign_prior_folds(stems: tuple[str, ...] | list[str], *, group: str = "file", n_folds: int = DEFAULT_PRIOR_FOLDS, seed: int = 0) -> PriorFolds:
    """Split the files into folds, whole groups at a time (a file, or every file of a site).

    Groups are shuffled with ``seed`` and dealt round-robin; with fewer groups than
    ``n_folds`` each group is its own fold (leave one group out).

    Raises:
        ConfigError: an unknown grouping, fewer than 2 folds asked, or fewer than 2 groups.
    """
    if group not in GROUPS:
        raise ConfigError(f"--group must be one of {', '.join(GROUPS)}, got {group!r}")
    if n_folds < 2:
        raise ConfigError(f"--prior-folds must be >= 2 for an out-of-fold prior, got {n_folds}")
    keys = list(stems) if group == "file" else [parse_site(s) for s in stems]
    distinct = sorted(set(keys))
    if len(distinct) < 2:
        raise ConfigError(f"an out-of-fold prior grouped by {group} needs at least 2 {group}s, the labels have {len(distinct)}")
    k = min(n_folds, len(distinct))
    order = np.random.default_rng(seed).permutation(len(distinct))
    fold_of_group = {distinct[g]: i % k for i, g in enumerate(order)}
    return PriorFolds(fold=np.array([fold_of_group[key] for key in keys], dtype=np.int64), group=group, n_folds=k)


def out_of_fold_prior_logits(labels: np.ndarray, stems: tuple[str, ...] | list[str], folds: PriorFolds) -> np.ndarray:
    """Each file's prior logit from tables fitted without its fold (float64 ``[files, C]``).

    For fold k, :func:`streamer.prior.fit_prior` receives only the label rows of the files
    outside fold k; the logits of fold k's files are read from those tables. No file's own
    labels (nor those of its group) can reach its prior.
    """
    labels = np.asarray(labels)
    stems = list(stems)
    if len(stems) != labels.shape[0] or len(folds.fold) != labels.shape[0]:
        raise ValueError("labels, stems and folds must describe the same files")
    out = np.empty((labels.shape[0], labels.shape[2]), dtype=np.float64)
    for k in range(folds.n_folds):
        held = np.flatnonzero(folds.fold == k)
        fit_on = np.flatnonzero(folds.fold != k)
        if held.size == 0:
            continue
        assert not set(held.tolist()) & set(fit_on.tolist())
        tables = fit_prior(labels[fit_on], [stems[i] for i in fit_on])
        for i in held:
            out[i] = tables.for_stem(stems[i])
    return out


def in_fold_prior_logits(labels: np.ndarray, stems: tuple[str, ...] | list[str]) -> np.ndarray:
    """The prior ``infer`` uses: one fit on every label (leaks them when scored on them)."""
    tables = fit_prior(labels, list(stems))
    return np.stack([tables.for_stem(s) for s in stems]) if len(stems) else np.zeros((0, labels.shape[2]))


# --------------------------------------------------------------------------- evaluation


@dataclass
class SweepData:
    """Everything a point needs, aligned on the labelled files (sorted stems).

    Attributes:
        perch, cnn, crnn: cached logits ``[F,12,C]`` (students ``None`` when not used).
        similarity: ProtoSSM prototype branch per fold ``[K,F,12,C]`` (float32).
        prior_logit: per-file prior logit ``[F,C]``.
        labels: ``[F*12, C]`` solution rows.
        folds: the ProtoSSM folds (their :meth:`fuse`).
    """

    stems: tuple[str, ...]
    perch: np.ndarray
    cnn: np.ndarray | None
    crnn: np.ndarray | None
    similarity: np.ndarray
    prior_logit: np.ndarray
    labels: np.ndarray
    folds: object

    def probabilities(self, point: SweepPoint) -> np.ndarray:
        """Final probabilities ``[F,12,C]`` of a point (what ``infer`` writes for these files)."""
        blended = postprocess.blend_logits(self.perch, self.cnn, self.crnn, point.blend)
        teacher = (blended + np.float32(point.prior) * self.prior_logit.astype(np.float32)[:, None, :]).astype(np.float32, copy=False)
        fold_logits = self.folds.fuse(self.similarity, teacher)
        prob = postprocess.fold_mean_probability(fold_logits)
        return np.stack([postprocess.finalize(p, center=point.smooth_center, side=point.smooth_side) for p in prob])

    def score(self, point: SweepPoint) -> MetricResult:
        probs = self.probabilities(point)
        return macro_auc(self.labels, probs.reshape(-1, probs.shape[-1]))


def prepare_sweep(plan, cache, cache_path: Path, *, prior_fit: str = "oof", folds: PriorFolds | None = None) -> SweepData:
    """Check the cache against the plan's artifacts and precompute what every point shares.

    Args:
        plan: from :func:`streamer.stages.prepare` (artifacts, labels, ProtoSSM site index).
        cache: the loaded :class:`~streamer.validate.cache.ModelCache`.
        cache_path: its path (for messages).
        prior_fit: ``"oof"`` (needs ``folds``) or ``"all"``.

    Raises:
        ArtifactError: the cache does not match the artifacts, or lacks labelled files.
    """
    from streamer.stages import Reducer
    from streamer.stages import dependency_paths
    from streamer.validate.cache import hash_dependencies

    competition = plan.competition
    cache.check_dependencies(hash_dependencies(dependency_paths(plan)), cache_path)
    if tuple(cache.classes) != tuple(competition.classes):
        raise ArtifactError(f"{cache_path}: the cache's class list differs from {competition.data_dir / 'sample_submission.csv'}")
    stems = competition.label_files
    if not stems:
        raise ArtifactError(f"{competition.data_dir / 'train_soundscapes_labels.csv'}: no labelled files")
    rows = cache.index(stems)
    if prior_fit == "oof":
        if folds is None:
            raise ValueError("an out-of-fold prior needs folds")
        prior_logit = out_of_fold_prior_logits(competition.labels, stems, folds)
    elif prior_fit == "all":
        prior_logit = in_fold_prior_logits(competition.labels, stems)
    else:
        raise ConfigError(f"--prior-fit must be one of {', '.join(PRIOR_FITS)}, got {prior_fit!r}")

    reducer = Reducer(plan.reducer)  # the folds, and infer's site numbering
    embedding = cache.embedding[rows]
    sim = np.stack(
        [reducer.folds.similarity(embedding[i], reducer.site_id(parse_site(s)), parse_hour(s)) for i, s in enumerate(stems)],
        axis=1,
    )
    pick = lambda a, loaded: None if (a is None or loaded is None) else np.ascontiguousarray(a[rows])  # noqa: E731
    return SweepData(
        stems=stems,
        perch=np.ascontiguousarray(cache.perch_logits[rows]),
        cnn=pick(cache.cnn_logits, plan.model.cnn_path),
        crnn=pick(cache.crnn_logits, plan.model.crnn_path),
        similarity=sim,
        prior_logit=prior_logit,
        labels=competition.labels.reshape(-1, competition.n_classes),
        folds=reducer.folds,
    )


def compare_at(a: SweepData, b: SweepData, point: SweepPoint) -> dict:
    """Two caches of the same files (say fp32 and bf16) scored at one point: each one's macro
    ROC-AUC, the difference (b − a), and the largest and mean |probability difference|."""
    if a.stems != b.stems:
        raise ArtifactError("the two caches hold different labelled files")
    pa, pb = a.probabilities(point), b.probabilities(point)
    diff = np.abs(pa.astype(np.float64) - pb.astype(np.float64))
    auc_a = macro_auc(a.labels, pa.reshape(-1, pa.shape[-1])).macro_auc
    auc_b = macro_auc(b.labels, pb.reshape(-1, pb.shape[-1])).macro_auc
    return {"macro_auc_a": auc_a, "macro_auc_b": auc_b, "auc_difference": auc_b - auc_a,
            "max_prob_difference": float(diff.max()), "mean_prob_difference": float(diff.mean())}


@dataclass
class SweepResult:
    """Scores of every point, in grid order."""

    points: list[SweepPoint]
    results: list[MetricResult]
    seconds: list[float]
    groups: tuple[str, ...]

    def ranking(self) -> list[int]:
        """Point indices, best macro AUC first (grid order among equals)."""
        return sorted(range(len(self.points)), key=lambda i: (-_nan_low(self.results[i].macro_auc), i))

    def rows(self) -> list[dict]:
        group_names = sorted(set(self.groups))
        groups = np.array(self.groups)
        out = []
        for rank, i in enumerate(self.ranking(), start=1):
            p, r = self.points[i], self.results[i]
            row = {
                "rank": rank, "macro_auc": r.macro_auc, "perch": p.perch, "cnn": p.cnn, "crnn": p.crnn,
                "prior": p.prior, "smooth_center": p.smooth_center, "smooth_side": p.smooth_side,
                "n_classes_scored": int(r.scored.sum()),
            }
            for g in group_names:
                row[f"auc_{g}"] = r.macro_over(groups == g)
            row["seconds"] = self.seconds[i]
            out.append(row)
        return out


def _nan_low(x: float) -> float:
    return -math.inf if math.isnan(x) else x


def run_sweep(data: SweepData, points: list[SweepPoint], groups: tuple[str, ...], *, has_students: tuple[bool, bool]) -> SweepResult:
    """Score every point.

    Raises:
        ConfigError: a point's blend weights sum to 0 over the models in use.
    """
    for p in points:
        used = p.perch + (p.cnn if has_students[0] else 0.0) + (p.crnn if has_students[1] else 0.0)
        if used <= 0:
            raise ConfigError(f"grid point {p.blend}: the blend weights sum to 0 over the models in use")
    from streamer.models.moe import import_torch

    torch = import_torch()
    results, seconds = [], []
    with torch.inference_mode():
        for p in points:
            t0 = time.perf_counter()
            results.append(data.score(p))
            seconds.append(time.perf_counter() - t0)
    return SweepResult(points=points, results=results, seconds=seconds, groups=groups)


def draw_heatmap(result: SweepResult, values: dict[str, list], path: Path, title: str) -> Path | None:
    """Macro AUC over the two axes that vary (PNG); ``None`` without matplotlib or when not 2-D."""
    varying = [a for a in AXES if len(values[a]) > 1]
    if len(varying) != 2:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed (pip install matplotlib): no heatmap")
        return None
    ya, xa = varying
    label = lambda axis, v: f"{v[0]:g}/{v[1]:g}" if axis == "smooth" else f"{v:g}"  # noqa: E731
    grid = np.full((len(values[ya]), len(values[xa])), np.nan)
    for p, r in zip(result.points, result.results):
        grid[values[ya].index(p.value(ya)), values[xa].index(p.value(xa))] = r.macro_auc
    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * len(values[xa]), 1.2 + 0.5 * len(values[ya])))
    im = ax.imshow(grid, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(values[xa])), [label(xa, v) for v in values[xa]], fontsize=8)
    ax.set_yticks(range(len(values[ya])), [label(ya, v) for v in values[ya]], fontsize=8)
    ax.set_xlabel(xa)
    ax.set_ylabel(ya)
    best, low = np.nanmax(grid), np.nanmin(grid)
    for (i, j), v in np.ndenumerate(grid):
        if not np.isnan(v):
            bright = best > low and (v - low) / (best - low) > 0.6  # viridis turns yellow at the top
            ax.text(j, i, f"{v:.4f}", ha="center", va="center", fontsize=7, color="black" if bright else "white",
                    fontweight="bold" if v == best else "normal")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label="macro ROC-AUC")
    return save_figure(fig, path)
