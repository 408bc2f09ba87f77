"""A recipe's reduction of one file (or one chunk of a long recording): the blend of the
members present, then the recipe's steps in order (prior, heads, temperatures, smoothing,
multipliers, clip).

The blend is a weighted mean, per class, of the members present (a dropped member's weight
leaves the denominator), in logit or probability space; a single member present passes
through unchanged. Steps are applied step by step over all the items of a call, so that a
head (the ProtoSSM folds) runs once per batch of same-length items: its many small operators
then cost about half as much per file. The arithmetic of the model-card recipe is exactly the
original script's (float32, the same order of operations).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from streamer import postprocess
from streamer.metadata import parse_hour, parse_site

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReduceSpec:
    """What the reducer needs (picklable).

    Attributes:
        members: blend members in recipe order: ``(name, weight per class float64 [C])``.
        space: ``logit`` or ``probability``.
        steps: the recipe's steps (:class:`streamer.postprocess.StepSpec`).
        heads: ``(name, fold paths, params)`` of each head member the steps run.
        temperatures: ``(step index, temperature per class)``.
        ranks: with a rank blend, ``(member, percentile tables per class)``.
        n_classes: the submission's columns.
        prior: the site/hour prior tables.
        site_index: ProtoSSM's site ids.
    """

    members: tuple
    space: str
    steps: tuple
    heads: tuple
    temperatures: tuple
    n_classes: int
    prior: object
    site_index: dict
    ranks: tuple = ()

    @property
    def member_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.members)

    @property
    def weights(self) -> dict[str, float]:
        """Each member's weight (the first class's; group weights are in the vectors)."""
        return {name: float(w[0]) for name, w in self.members}


def blend(logits: dict[str, np.ndarray], members: tuple, space: str = "logit", ranks: dict | None = None) -> np.ndarray:
    """Weighted mean over the members present in ``logits`` (float32 ``[T, C]`` each).

    Weights are float64 vectors ``[C]`` (a weight per class), multiplied in float32; the
    denominators are summed in float64 over the members present, so a dropped member's weight leaves them. A class whose
    present members all weigh 0 gets their plain mean. A single member present passes through
    unchanged (in logit space), as the original script does with no student loaded. In rank
    space each member's logits become their percentiles per class against ``ranks[name]``
    (:func:`streamer.postprocess.rank_percentile`) before the mean."""
    present = [(name, w) for name, w in members if name in logits]
    if not present:
        raise ValueError("no blend member present")
    if len(present) == 1 and space == "logit":
        return np.asarray(logits[present[0][0]], dtype=np.float32)
    if space == "logit":
        values = [logits[name] for name, _ in present]
    elif space == "rank":
        values = [postprocess.rank_percentile(logits[name], ranks[name]) for name, _ in present]
    else:
        values = [postprocess.sigmoid(logits[name]).astype(np.float32) for name, _ in present]
    total = None
    denom = np.zeros(present[0][1].shape, dtype=np.float64)
    for (name, w), x in zip(present, values):
        term = np.asarray(w, dtype=np.float32) * x
        total = term if total is None else total + term
        denom += np.asarray(w, dtype=np.float64)
    zero = denom <= 0
    if zero.any():  # every present member weighs 0 for these classes: their plain mean
        total[..., zero] = np.mean([v[..., zero] for v in values], axis=0)
        denom[zero] = 1.0
    return (total / denom.astype(np.float32)).astype(np.float32, copy=False)


class RecipeReducer:
    """Per-file reduction of a recipe (module notes); builds its heads (torch) on creation."""

    def __init__(self, spec: ReduceSpec) -> None:
        from streamer.models.moe import ProtoSSMFolds

        self.spec = spec
        self.heads = {}
        for name, paths, params in spec.heads:
            self.heads[name] = ProtoSSMFolds(tuple(paths), n_classes=spec.n_classes, d_model=dict(params).get("d_model"))
        n_needed = max(spec.site_index.values(), default=0) + 1
        for name, folds in self.heads.items():
            if n_needed > folds.n_site_slots:
                log.warning("the labels name %d sites but the %s checkpoints have %d site slots; sites numbered %d and "
                            "above are treated as unknown (0)", n_needed - 1, name, folds.n_site_slots, folds.n_site_slots)
        self.temperatures = dict(spec.temperatures)
        self.ranks = dict(spec.ranks)
        self.seconds = {"protossm": 0.0, "postprocess": 0.0}

    def site_id(self, site: str, head: str | None = None) -> int:
        """A head's site index: 1.. for the labelled sites, 0 for any other."""
        site_id = self.spec.site_index.get(site, 0)
        folds = self.heads.get(head) if head is not None else next(iter(self.heads.values()), None)
        return site_id if folds is None or site_id < folds.n_site_slots else 0

    def reduce(self, stem: str, outputs) -> np.ndarray:
        """Probabilities float32 ``[T, C]`` of one file, its site and hour read from its name."""
        return self.reduce_at(outputs, parse_site(stem), parse_hour(stem))

    def reduce_files(self, items: list) -> list[np.ndarray]:
        """:meth:`reduce` of several files ``(stem, outputs)`` at once."""
        return self.reduce_many([(outputs, parse_site(stem), parse_hour(stem)) for stem, outputs in items])

    def reduce_at(self, outputs, site: str, hour: int) -> np.ndarray:
        """Probabilities float32 ``[T, C]`` of ``T`` consecutive windows recorded at ``site``
        during UTC ``hour`` (a Kaggle file, or one 60-s chunk of a long recording)."""
        return self.reduce_many([(outputs, site, hour)])[0]

    def reduce_many(self, items: list) -> list[np.ndarray]:
        """:meth:`reduce_at` of several ``(outputs, site, hour)`` at once, in order."""
        t0 = time.perf_counter()
        head_s = 0.0
        xs = [blend(outputs.logits, self.spec.members, self.spec.space, self.ranks) for outputs, _, _ in items]
        for index, step in enumerate(self.spec.steps):
            if step.name == "head":
                t1 = time.perf_counter()
                xs = self._head(step.get("member"), xs, items)
                head_s += time.perf_counter() - t1
            else:
                xs = [self._step(index, step, x, site, hour) for x, (_, site, hour) in zip(xs, items)]
        self.seconds["protossm"] += head_s
        self.seconds["postprocess"] += time.perf_counter() - t0 - head_s
        return xs

    def _step(self, index: int, step, x: np.ndarray, site: str, hour: int) -> np.ndarray:
        name = step.name
        if name == "prior":
            return postprocess.add_prior(x, self.spec.prior.logit(site, hour), step.get("scale"))
        if name == "smooth":
            return postprocess.smooth_kernel(x, step.get("kernel"))
        if name == "topk-multiplier":
            return postprocess.topk_multiplier(x, step.get("k"))
        if name == "clip":
            return postprocess.clip_scores(x, step.get("min", 0.0), step.get("max", 1.0))
        if name == "sigmoid":
            return postprocess.sigmoid(x).astype(np.float32, copy=False)
        if name == "flat-sigmoid":
            return postprocess.flat_sigmoid(x, step.get("sensitivity", 1.0))
        if name == "logit":
            return postprocess.to_logit(x)
        if name == "temperature":
            return postprocess.temperature(x, self.temperatures[index])
        raise ValueError(f"unknown step {name!r}")  # the recipe's checks make this unreachable

    def _head(self, name: str, xs: list[np.ndarray], items: list) -> list[np.ndarray]:
        """The head ``name`` on every item: items of one length run as one batch; the mean of
        the folds' sigmoids. A head left out of the run (not loaded) is a sigmoid."""
        folds = self.heads.get(name)
        if folds is None:
            return [postprocess.sigmoid(x).astype(np.float32, copy=False) for x in xs]
        out: list = [None] * len(items)
        by_length: dict[int, list[int]] = {}
        for i, (outputs, _, _) in enumerate(items):
            by_length.setdefault(outputs.embedding.shape[0], []).append(i)
        for group in by_length.values():
            batch = folds.run_batch(
                np.stack([items[i][0].embedding for i in group]),
                np.stack([xs[i] for i in group]),
                [self.site_id(items[i][1], name) for i in group],
                [items[i][2] for i in group],
            )
            for j, i in enumerate(group):
                out[i] = postprocess.fold_mean_probability(batch[:, j])
        return out
