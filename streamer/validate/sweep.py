"""``streamer sweep``: every step after the networks, recomputed from the cache for each point
of a grid over the recipe's numbers (any member's blend weight, the prior scale, the
smoothing kernel, any numeric parameter of a step), and scored.

Per point (the same functions as ``infer``): the recipe with the point's values, its blend of
the cached member logits, then its steps (prior, heads, smoothing, …); then the metric over
the labelled rows.

A ProtoSSM head sees the teacher logits only in its last step (``ProtoSSM.fuse``): the
prototype branch (``ProtoSSM.similarity``, the whole sequence model) depends on the embedding,
the site and the hour alone, so it runs once per file and fold when the sweep starts, and each
point runs the fusion on the cached result. The numbers are those of the full forward pass.

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

from streamer import postprocess
from streamer.errors import ArtifactError, ConfigError
from streamer.files import save_figure
from streamer.metadata import parse_hour, parse_site
from streamer.prior import fit_prior
from streamer.validate.metric import MetricResult, macro_auc

log = logging.getLogger(__name__)

PRIOR_FITS = ("oof", "all")
GROUPS = ("file", "site")
DEFAULT_PRIOR_FOLDS = 5
#: Axes of a recipe with such a step, besides its members' names and ``STEP.PARAM``.
PRIOR_AXIS, SMOOTH_AXIS = "prior", "smooth"


# --------------------------------------------------------------------------- grid


@dataclass(frozen=True)
class SweepPoint:
    """One setting of everything the sweep varies: ``(axis, value)`` pairs in axis order.

    Axes: a blend member's name (its weight), ``prior`` (the prior step's scale), ``smooth``
    (a 3-window kernel as ``(center, side)``), ``STEP.PARAM`` (a numeric parameter of the one
    step of that name)."""

    values: tuple

    def value(self, axis: str):
        return dict(self.values)[axis]

    def recipe(self, base):
        """``base`` with this point's values."""
        from streamer.recipes.overrides import set_member_weight, set_step_param, step_index

        recipe = base
        for axis, value in self.values:
            if axis == PRIOR_AXIS:
                recipe = set_step_param(recipe, step_index(recipe, "prior", flag="--grid prior"), "scale", value)
            elif axis == SMOOTH_AXIS:
                center, side = value
                recipe = set_step_param(recipe, step_index(recipe, "smooth", flag="--grid smooth"), "kernel", (side, center, side))
            elif "." in axis:
                step, _, param = axis.partition(".")
                recipe = set_step_param(recipe, step_index(recipe, step, flag=f"--grid {axis}"), param, value)
            else:
                recipe = set_member_weight(recipe, axis, value, flag="--grid")
        return recipe

    def infer_flags(self) -> list[str]:
        """The ``streamer infer`` flags that select this point."""
        flags: list[str] = []
        for axis, value in self.values:
            if axis == PRIOR_AXIS:
                flags += ["--prior-scale", _num(value)]
            elif axis == SMOOTH_AXIS:
                flags += ["--smooth-center", _num(value[0]), "--smooth-side", _num(value[1])]
            elif "." in axis:
                flags += ["--set", f"{axis}={_num(value)}"]
            else:
                flags += ["--blend", f"{axis}={_num(value)}"]
        return flags


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


def recipe_axes(recipe) -> dict:
    """Every axis of ``recipe`` and its value there: the blend members' weights, ``prior``
    and ``smooth`` (when the recipe has one such step; a symmetric kernel of 3 windows, which
    ``(center, side)`` describes: an asymmetric one is kept as it is), and
    ``STEP.PARAM`` for each numeric parameter of a step that appears once."""
    axes: dict = {m.name: m.weight for m in recipe.blend_members}
    names = [s.name for s in recipe.steps]
    for step in recipe.steps:
        if names.count(step.name) != 1:
            continue
        if step.name == "prior":
            axes[PRIOR_AXIS] = step.get("scale")
            continue
        if step.name == "smooth" and len(step.get("kernel")) == 3 and step.get("kernel")[0] == step.get("kernel")[2]:
            kernel = step.get("kernel")
            axes[SMOOTH_AXIS] = (kernel[1], kernel[0])
        for key, value in step.params:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                axes[f"{step.name}.{key}"] = value
    return axes


def _integer_axis(axis: str) -> bool:
    """Whether an axis takes whole numbers only: a step parameter the step declares integer
    (``topk-multiplier.k``). Not the recipe's value's type: ``scale = 1`` is still a real number."""
    from streamer.postprocess import STEPS

    step, dot, param = axis.partition(".")
    spec = STEPS[step].params.get(param) if dot and step in STEPS else None
    return spec is not None and tuple(spec.kinds) == (int,)


def parse_grid(specs: list[str] | tuple[str, ...], recipe) -> tuple[list[SweepPoint], dict[str, list]]:
    """Grid points from ``AXIS=VALUES`` items over ``recipe``; axes not given keep its value.

    Axes: see :func:`recipe_axes` (``prior.scale`` is ``prior``). VALUES is a comma list whose
    items are numbers or ``start:stop:step`` ranges (both ends included); ``smooth`` takes
    ``CENTER/SIDE``, ``CENTER/SIDE/SIDE`` or ``off``. Points are the Cartesian product, in the
    order given.

    Returns:
        The points (each with every member's weight and every axis given), and the values of
        those axes.

    Raises:
        ConfigError: syntax, unknown or repeated axis, negative weight, a value the recipe's
            step refuses.
    """
    known = recipe_axes(recipe)
    members = [m.name for m in recipe.blend_members]
    values: dict[str, list] = {name: [known[name]] for name in members}
    for axis in (PRIOR_AXIS, SMOOTH_AXIS):
        if axis in known:
            values[axis] = [known[axis]]
    seen: set[str] = set()
    for spec in specs:
        axis, sep, text = spec.partition("=")
        axis = axis.strip()
        axis = PRIOR_AXIS if axis == "prior.scale" else axis
        if not sep or not text.strip():
            raise ConfigError(f"--grid: expected AXIS=VALUES, got {spec!r} (axes: {', '.join(known)})")
        if axis not in known:
            raise ConfigError(f"--grid: unknown axis {axis!r} for the recipe {recipe.name!r} (axes: {', '.join(known)})")
        if axis in seen:
            raise ConfigError(f"--grid: axis {axis!r} given twice")
        seen.add(axis)
        items = [t.strip() for t in text.split(",") if t.strip()]
        if axis == SMOOTH_AXIS:
            parsed: list = [_parse_smooth(t) for t in items]
        else:
            parsed = []
            for t in items:
                parsed.extend(_parse_range(axis, t) if ":" in t else [_parse_number(axis, t)])
            if axis in members and any(v < 0 for v in parsed):
                raise ConfigError(f"--grid {axis}: blend weights must be >= 0")
            if _integer_axis(axis):
                if any(v != int(v) for v in parsed):
                    raise ConfigError(f"--grid {axis}: expects whole numbers")
                parsed = [int(v) for v in parsed]
        values[axis] = list(dict.fromkeys(parsed))  # drop repeats, keep order
    order = [name for name in known if name in values]
    points = [SweepPoint(tuple(zip(order, combo))) for combo in itertools.product(*(values[a] for a in order))]
    for axis in order:  # a value a step refuses is reported now, not while scoring
        for value in values[axis]:
            SweepPoint(((axis, value),)).recipe(recipe)
    return points, {a: values[a] for a in order}


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


def _prior_params(prior) -> dict:
    return {} if prior is None else {"shrink_windows": prior.shrinkage_windows, "eps": prior.clip}


def out_of_fold_prior_logits(labels: np.ndarray, stems: tuple[str, ...] | list[str], folds: PriorFolds, *,
                             prior=None) -> np.ndarray:
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
        tables = fit_prior(labels[fit_on], [stems[i] for i in fit_on], **_prior_params(prior))
        for i in held:
            out[i] = tables.for_stem(stems[i])
    return out


def in_fold_prior_logits(labels: np.ndarray, stems: tuple[str, ...] | list[str], *, prior=None) -> np.ndarray:
    """The prior ``infer`` uses: one fit on every label (leaks them when scored on them)."""
    tables = fit_prior(labels, list(stems), **_prior_params(prior))
    return np.stack([tables.for_stem(s) for s in stems]) if len(stems) else np.zeros((0, labels.shape[2]))


# --------------------------------------------------------------------------- evaluation


@dataclass
class SweepData:
    """Everything a point needs, aligned on the labelled files (sorted stems).

    Attributes:
        logits: each member's cached logits ``[F,12,C]`` (the members that run now), by name.
        similarity: each head's prototype branch per fold ``[K,F,12,C]`` (float32), by name.
        heads: the heads' folds (their :meth:`fuse`), by name.
        prior_logit: per-file prior logit ``[F,C]``.
        labels: ``[F*12, C]`` solution rows.
        class_groups: the taxonomic class of each column (per-group weights, temperatures).
        recipe: the recipe the points change.
        ranks: a rank blend's percentile tables per member.
    """

    stems: tuple[str, ...]
    logits: dict
    similarity: dict
    heads: dict
    prior_logit: np.ndarray
    labels: np.ndarray
    class_groups: tuple[str, ...]
    recipe: object
    ranks: dict = None

    def probabilities(self, point: SweepPoint) -> np.ndarray:
        """Final probabilities ``[F,12,C]`` of a point (what ``infer`` writes for these files)."""
        from streamer.ensemble import blend
        from streamer.recipes.bind import member_weights, step_temperatures

        recipe = point.recipe(self.recipe)
        members = tuple((m.name, member_weights(m, self.class_groups)) for m in recipe.blend_members if m.name in self.logits)
        x = blend(self.logits, members, recipe.blend.space, self.ranks)
        for step in recipe.steps:
            name = step.name
            if name == "prior":
                x = (x + np.float32(step.get("scale")) * self.prior_logit.astype(np.float32)[:, None, :]).astype(np.float32, copy=False)
            elif name == "head":
                head = step.get("member")
                x = postprocess.fold_mean_probability(self.heads[head].fuse(self.similarity[head], x))
            elif name == "smooth":
                x = np.stack([postprocess.smooth_kernel(p, step.get("kernel")) for p in x])
            elif name == "topk-multiplier":
                x = np.stack([postprocess.topk_multiplier(p, step.get("k")) for p in x])
            elif name == "clip":
                x = postprocess.clip_scores(x, step.get("min", 0.0), step.get("max", 1.0))
            elif name == "sigmoid":
                x = postprocess.sigmoid(x).astype(np.float32, copy=False)
            elif name == "flat-sigmoid":
                x = postprocess.flat_sigmoid(x, step.get("sensitivity", 1.0))
            elif name == "logit":
                x = postprocess.to_logit(x)
            elif name == "temperature":
                x = (x / step_temperatures(step, self.class_groups).astype(np.float32)).astype(np.float32, copy=False)
            else:
                raise ValueError(f"unknown step {name!r}")
        return x

    def score(self, point: SweepPoint) -> MetricResult:
        probs = self.probabilities(point)
        return macro_auc(self.labels, probs.reshape(-1, probs.shape[-1]))


def prepare_sweep(plan, cache, cache_path: Path, *, prior_fit: str = "oof", folds: PriorFolds | None = None) -> SweepData:
    """Check the cache against the plan's artifacts and precompute what every point shares.

    Args:
        plan: from :func:`streamer.stages.prepare` (artifacts, recipe, labels, site index).
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
    missing = [name for name in plan.model.member_names if name not in cache.logits]
    if missing:
        raise ArtifactError(f"{cache_path}: no cached logits of {', '.join(missing)}; run 'streamer cache' with this recipe again")
    stems = competition.label_files
    if not stems:
        raise ArtifactError(f"{competition.data_dir / 'train_soundscapes_labels.csv'}: no labelled files")
    rows = cache.index(stems)
    prior = plan.recipe.recipe.prior
    if prior_fit == "oof":
        if folds is None:
            raise ValueError("an out-of-fold prior needs folds")
        prior_logit = out_of_fold_prior_logits(competition.labels, stems, folds, prior=prior)
    elif prior_fit == "all":
        prior_logit = in_fold_prior_logits(competition.labels, stems, prior=prior)
    else:
        raise ConfigError(f"--prior-fit must be one of {', '.join(PRIOR_FITS)}, got {prior_fit!r}")

    reducer = Reducer(plan.reducer)  # the heads, and infer's site numbering
    embedding = cache.embedding[rows]
    similarity = {
        name: np.stack([head.similarity(embedding[i], reducer.site_id(parse_site(s), name), parse_hour(s))
                        for i, s in enumerate(stems)], axis=1)
        for name, head in reducer.heads.items()
    }
    return SweepData(
        stems=stems,
        logits={name: np.ascontiguousarray(cache.logits[name][rows]) for name in plan.model.member_names},
        similarity=similarity,
        heads=reducer.heads,
        prior_logit=prior_logit,
        labels=competition.labels.reshape(-1, competition.n_classes),
        class_groups=competition.class_groups,
        recipe=plan.recipe.recipe,
        ranks=dict(plan.recipe.ranks),
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
            row = {"rank": rank, "macro_auc": r.macro_auc}
            for axis, value in p.values:
                if axis == SMOOTH_AXIS:
                    row["smooth_center"], row["smooth_side"] = value
                else:
                    row[axis] = value
            row["n_classes_scored"] = int(r.scored.sum())
            for g in group_names:
                row[f"auc_{g}"] = r.macro_over(groups == g)
            row["seconds"] = self.seconds[i]
            out.append(row)
        return out


def _nan_low(x: float) -> float:
    return -math.inf if math.isnan(x) else x


def run_sweep(data: SweepData, points: list[SweepPoint], groups: tuple[str, ...]) -> SweepResult:
    """Score every point.

    Raises:
        ConfigError: a point's blend weights sum to 0 over the members in use.
    """
    for p in points:
        used = [m for m in p.recipe(data.recipe).blend_members if m.name in data.logits]
        if sum(m.weight for m in used) + sum(w for m in used for _, w in m.group_weights) <= 0:
            raise ConfigError(f"grid point {dict(p.values)}: the blend weights sum to 0 over the members in use")
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
    varying = [a for a in values if len(values[a]) > 1]
    if len(varying) != 2:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        from streamer.install import install_hint
        log.warning("matplotlib is not installed (%s): no heatmap", install_hint("plots"))
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
