"""Command-line changes to a recipe: ``--blend NAME=W``, ``--set STEP.PARAM=VALUE``, the original script's flags
(``--blend-perch``, ``--blend-cnn``, ``--blend-crnn``, ``--prior-scale``, ``--smooth-center``,
``--smooth-side``, ``--proto-d-model``), and a step parameter by position
(:func:`set_step_param`, what ``sweep`` varies).

The original flags are what users of the original notebook type; they name the model-card
members and steps, and with another recipe they apply where that recipe has the same member
or step (else an error naming what the recipe has).
"""

from __future__ import annotations

import math
from dataclasses import replace

from streamer.errors import ConfigError
from streamer.recipes.schema import Recipe, RecipeError

#: The original script's blend flags → the model-card member they set.
LEGACY_BLEND_FLAGS = {"blend_perch": "perch", "blend_cnn": "cnn", "blend_crnn": "crnn"}


def set_member_weight(recipe: Recipe, name: str, weight: float, *, flag: str = "--blend") -> Recipe:
    """The recipe with member ``name``'s blend weight set (its group weights kept)."""
    if not math.isfinite(weight) or weight < 0:
        raise ConfigError(f"{flag} {name}={weight}: a blend weight is a finite number >= 0")
    if name not in recipe.member_names:
        raise ConfigError(f"{flag} {name}={weight:g}: the recipe {recipe.name!r} has no member {name!r} "
                          f"(members: {', '.join(recipe.member_names)})")
    member = recipe.member(name)
    if member.is_head:
        raise ConfigError(f"{flag} {name}={weight:g}: {name!r} is a head (run by a step), not blended")
    members = tuple(replace(m, weight=float(weight)) if m.name == name else m for m in recipe.members)
    return replace(recipe, members=members)


def step_index(recipe: Recipe, step: str, *, flag: str) -> int:
    found = [i for i, s in enumerate(recipe.steps) if s.name == step]
    if not found:
        raise ConfigError(f"{flag}: the recipe {recipe.name!r} has no {step!r} step "
                          f"(steps: {', '.join(s.name for s in recipe.steps)})")
    if len(found) > 1:
        raise ConfigError(f"{flag}: the recipe {recipe.name!r} has {len(found)} {step!r} steps; edit the recipe")
    return found[0]


def set_step_param(recipe: Recipe, index: int, key: str, value) -> Recipe:
    """The recipe with parameter ``key`` of step ``index`` set, checked as the recipe file's
    value would be.

    Raises:
        RecipeError: the value is not one the step accepts.
    """
    from streamer.postprocess import STEPS, chain_spaces

    step = recipe.steps[index]
    spec = STEPS[step.name].params.get(key)
    where = f"steps[{index}].{key}"
    if spec is None:
        raise RecipeError(recipe.source, [f"{where}: the {step.name!r} step has no parameter {key!r}"])
    problem = spec.check(value)
    if problem:
        raise RecipeError(recipe.source, [f"{where} = {value!r}: {problem}"])
    steps = list(recipe.steps)
    steps[index] = step.with_param(key, tuple(value) if isinstance(value, list) else value)
    problem = chain_spaces(recipe.blend.space, steps)
    if problem:
        raise RecipeError(recipe.source, [f"steps: {problem}"])
    return replace(recipe, steps=tuple(steps))


def set_member_param(recipe: Recipe, name: str, key: str, value) -> Recipe:
    members = tuple(replace(m, params=tuple(sorted({**dict(m.params), key: value}.items()))) if m.name == name else m
                    for m in recipe.members)
    return replace(recipe, members=members)


def apply_overrides(recipe: Recipe, ensemble) -> Recipe:
    """The recipe as the command line changes it (``ensemble``: :class:`EnsembleSettings`).

    Raises:
        ConfigError: a flag naming what the recipe does not have.
    """
    for attr, name in LEGACY_BLEND_FLAGS.items():
        value = getattr(ensemble, attr)
        if value is not None:
            recipe = set_member_weight(recipe, name, value, flag="--" + attr.replace("_", "-"))
    for name, weight in ensemble.blend:
        recipe = set_member_weight(recipe, name, weight)
    if ensemble.prior_scale is not None:
        recipe = set_step_param(recipe, step_index(recipe, "prior", flag="--prior-scale"), "scale", float(ensemble.prior_scale))
    if ensemble.smooth_center is not None or ensemble.smooth_side is not None:
        index = step_index(recipe, "smooth", flag="--smooth-center/--smooth-side")
        kernel = recipe.steps[index].get("kernel")
        if len(kernel) != 3:
            raise ConfigError(f"--smooth-center/--smooth-side set a 3-window kernel; the recipe's has {len(kernel)} "
                              "windows: edit its 'smooth' step")
        center = kernel[1] if ensemble.smooth_center is None else float(ensemble.smooth_center)
        side = kernel[0] if ensemble.smooth_side is None else float(ensemble.smooth_side)
        recipe = set_step_param(recipe, index, "kernel", (side, center, side))
    for key, value in ensemble.steps:
        step, dot, param = key.partition(".")
        if not dot or not param:
            raise ConfigError(f"--set {key}={value}: expected STEP.PARAM=VALUE (e.g. topk-multiplier.k=3)")
        recipe = set_step_param(recipe, step_index(recipe, step, flag=f"--set {key}"), param, value)
    if ensemble.proto_d_model is not None:
        heads = [m.name for m in recipe.members if m.kind == "protossm"]
        if not heads:
            raise ConfigError(f"--proto-d-model: the recipe {recipe.name!r} has no protossm member")
        for name in heads:
            recipe = set_member_param(recipe, name, "d_model", int(ensemble.proto_d_model))
    return recipe
