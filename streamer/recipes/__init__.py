"""Recipes: an ensemble as a data file (see :mod:`streamer.recipes.schema` for the schema and
``docs/recipes.md`` for the manual).

``load_recipe(None)`` is the packaged model-card recipe, what ``streamer infer`` runs without
``--recipe``; ``load_recipe("NAME")`` another packaged one; ``load_recipe(path)`` a user's file.
"""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path

from streamer.recipes.schema import Member, Recipe, RecipeError, parse_recipe

DEFAULT_RECIPE = "model-card"
__all__ = ["DEFAULT_RECIPE", "Member", "Recipe", "RecipeError", "load_recipe", "packaged_names", "packaged_text"]


def packaged_names() -> tuple[str, ...]:
    """The recipes shipped inside the package, by name."""
    folder = resources.files(__package__) / "packaged"
    return tuple(sorted(p.name[: -len(".toml")] for p in folder.iterdir() if p.name.endswith(".toml")))


def packaged_text(name: str = DEFAULT_RECIPE) -> str:
    """The text of a packaged recipe (what ``streamer recipe show NAME`` prints).

    Raises:
        RecipeError: no packaged recipe of that name.
    """
    if name not in packaged_names():
        raise RecipeError(f"packaged:{name}", [f"no packaged recipe {name!r}; there are: {', '.join(packaged_names())}"])
    return (resources.files(__package__) / "packaged" / f"{name}.toml").read_text(encoding="utf-8")


def load_recipe(where: str | Path | None = None) -> Recipe:
    """Read and check a recipe: ``None`` (the default), a packaged name, or a TOML file.

    A string that names an existing file is a file; otherwise a packaged name. Relative member
    paths of a file are relative to its folder.

    Raises:
        RecipeError: unreadable, not TOML, or any mistake of the schema (one line each).
    """
    if where is None or (isinstance(where, str) and not Path(where).exists() and where in packaged_names()):
        name = DEFAULT_RECIPE if where is None else str(where)
        text, source, folder = packaged_text(name), f"packaged:{name}", None
    else:
        path = Path(where)
        source = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            hint = f" (packaged recipes: {', '.join(packaged_names())})"
            raise RecipeError(source, ["no such file" + hint]) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise RecipeError(source, [f"cannot read the recipe ({exc})"]) from exc
        folder = path.resolve().parent
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(source, [f"not valid TOML: {exc}"]) from exc
    return parse_recipe(doc, source, folder=folder, text=text)
