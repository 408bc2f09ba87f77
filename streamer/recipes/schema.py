"""The recipe schema: what an ensemble is, as data.

A recipe is a TOML file (read with the standard library's :mod:`tomllib`: no code is imported
or evaluated, so a recipe shared on a forum is safe to run). It declares, with every number in
it, the framing of the audio, the front-ends computed once per window and shared by the
members, the members themselves (named, each with its file, kind, input and label space), the
blend, the site/hour prior, the ordered post-processing steps and the budget's drop order.

Only what streamer ships can be named: the member kinds of :data:`MEMBER_KINDS`, the front-end
kinds of :data:`FRONTEND_KINDS`, the steps of :data:`streamer.postprocess.STEPS`, the file-name
schemes of :data:`FILE_NAME_SCHEMES`. Everything else is a mistake reported as one line naming
the key and what was expected; :func:`parse_recipe` collects every such line before it raises,
so a user fixes a recipe in one pass.

This module reads no file but the recipe itself: binding the members to files on disk (paths,
hashes, ONNX tensors, label lists) is :mod:`streamer.recipes.bind`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamer.errors import ConfigError
from streamer.postprocess import STEPS, StepSpec

#: The recipe format this streamer reads (``[recipe] format``).
RECIPE_FORMAT = 1

#: The competition's framing (what ``infer`` writes: twelve 5-s rows per file at 32 kHz).
SUPPORTED_FRAMING = {
    "sample_rate_hz": 32000,
    "resampler": "soxr-hq",
    "window_s": 5.0,
    "hop_s": 5.0,
    "windows_per_file": 12,
    "mono": "mean",
}
#: Resamplers: ``soxr-hq`` (soxr's high-quality filter, streamed; Perch's recipes) and
#: ``kaiser_fast`` (resampy's filter as librosa applies it: BirdNET-Analyzer's numbers, see
#: :mod:`streamer.kaiser`).
RESAMPLERS = ("soxr-hq", "kaiser_fast")
#: The archive streams 60 s of audio at a time: a window must divide it.
CHUNK_SECONDS = 60
#: File-name schemes: how a file's site and UTC hour are read from its name.
#: ``birdclef``: the competition pattern (``BC2026_Test_0001_S05_20250227_010002``: site S05,
#: hour 01); other names get site S00 and hour 0, as the original script does. ``none``: names
#: carry nothing (a recipe with no site/hour prior).
FILE_NAME_SCHEMES = ("birdclef", "none")

#: The log-mel front-end streamer computes (torchaudio's MelSpectrogram numerics, then
#: ``log(mel + log_offset)``); a recipe must state every parameter, and these are the values the
#: shipped implementations compute.
LOGMEL_PARAMETERS = {
    "sample_rate_hz": 32000,
    "n_fft": 1024,
    "win_length": 1024,
    "hop_length": 320,
    "f_min": 20.0,
    "f_max": 14000.0,
    "n_mels": 128,
    "power": 2.0,
    "log_offset": 1e-6,
    "window": "hann-periodic",
    "center": True,
    "pad_mode": "reflect",
    "mel_scale": "htk",
    "norm": "none",
}
#: Front-end kinds: Perch 2.0's ONNX outputs (``embedding``, ``label``, ``spatial_embedding``),
#: a LiteRT (``.tflite``) classifier's (``embedding``: a layer named in the recipe; ``label``:
#: its logits; BirdNET 2.4 is one) and the log-mel. The raw waveform is always there, as
#: ``waveform``. A recipe runs at most one Perch or LiteRT front-end: the model whose embedding
#: the archive stores.
FRONTEND_KINDS = ("perch", "litert", "logmel")
BACKBONE_KINDS = ("perch", "litert")
PERCH_OUTPUTS = ("embedding", "label", "spatial_embedding")
LITERT_OUTPUTS = ("embedding", "label")
#: Label-file formats of a LiteRT front-end: ``birdnet``: one ``Scientific name_Common name``
#: per line, in output order.
LABEL_FORMATS = ("birdnet",)
WAVEFORM = "waveform"

#: Member kinds:
#: ``perch-logits``: Perch's ``label`` output, mapped to the submission's classes by scientific
#: name; ``onnx``: any ONNX graph on a front-end (a classifier on the log-mel, a linear probe on
#: the Perch embedding, …); ``student-cnn``/``student-crnn``: a state dict of the architectures
#: streamer knows, exported to ONNX and cached; ``protossm``: the ProtoSSM folds, a head on the
#: embedding sequence and the blended logits, run by a ``head`` step.
#: ``frontend-logits``: a Perch or LiteRT front-end's own logits (its ``label`` output), mapped
#: to the columns by name (``perch-logits`` is the same, for Perch).
MEMBER_KINDS = ("perch-logits", "frontend-logits", "onnx", "student-cnn", "student-crnn", "protossm")
#: Kinds that are a front-end's own output: nothing to load.
OWN_LOGITS_KINDS = ("perch-logits", "frontend-logits")
HEAD_KINDS = ("protossm",)
#: Inputs each member kind accepts (``perch.X``: output X of a perch front-end).
KIND_INPUTS = {
    "perch-logits": ("perch.label",),
    "frontend-logits": ("perch.label", "litert.label"),
    "onnx": ("waveform", "logmel", "perch.embedding", "litert.embedding"),
    "student-cnn": ("logmel",),
    "student-crnn": ("logmel",),
    "protossm": ("perch.embedding",),
}
#: ``rank``: each member's score per class as its percentile among the member's own scores of
#: that class on reference audio (``[blend] reference``, made by ``streamer recipe calibrate``).
BLEND_SPACES = ("logit", "probability", "rank")
PRIOR_KINDS = ("site-hour",)
#: Names a member may not take: they would be read as something else on the command line.
_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class RecipeError(ConfigError):
    """A recipe (or a file it names) is wrong. ``lines`` holds one line per mistake, each naming
    the key and what was expected; ``str()`` joins them."""

    def __init__(self, source: str, lines: list[str]) -> None:
        self.source = source
        self.lines = list(lines)
        super().__init__("\n".join(f"{source}: {line}" for line in self.lines))


@dataclass(frozen=True)
class Framing:
    """How audio becomes windows: the model's rate and resampler, the window (``hop_s`` equals
    it: windows follow each other), a piece length for ``kaiser_fast`` and the rule for a short
    last window. ``infer`` runs the competition's framing only (:data:`SUPPORTED_FRAMING`)."""

    sample_rate_hz: int
    resampler: str
    window_s: float
    hop_s: float
    windows_per_file: int
    mono: str
    file_names: str
    resample_piece_s: int | None = None
    min_last_window_s: float = 0.0

    @property
    def is_competition(self) -> bool:
        """Whether this is the framing ``infer``'s submission rows need."""
        return (all(getattr(self, k) == v for k, v in SUPPORTED_FRAMING.items())
                and self.resample_piece_s is None and self.min_last_window_s == 0.0)

    def windows(self):
        """The engine's :class:`streamer.audio.WindowFraming` of this framing."""
        from streamer.audio import WindowFraming

        window = int(round(self.window_s * self.sample_rate_hz))
        return WindowFraming(rate_hz=self.sample_rate_hz, window_samples=window,
                             windows_per_chunk=int(round(CHUNK_SECONDS / self.window_s)), resampler=self.resampler,
                             piece_s=self.resample_piece_s, min_last_window_s=self.min_last_window_s)


@dataclass(frozen=True)
class Frontend:
    """A front-end computed once per window and shared by the members that name it.

    Attributes:
        name: the table's name (``perch``, ``logmel``, …), what members put in ``input``.
        kind: one of :data:`FRONTEND_KINDS`.
        params: the kind's parameters (the log-mel's, or a perch front-end's ``file`` and
            ``labels``).
    """

    name: str
    kind: str
    params: dict


@dataclass(frozen=True)
class Member:
    """One model of the ensemble.

    Attributes:
        name: how flags, the report, the cache and the fingerprint call it.
        kind: one of :data:`MEMBER_KINDS`.
        input: a front-end output: ``waveform``, a log-mel front-end's name, or
            ``<perch front-end>.embedding`` / ``.label``.
        file: its file, or a pattern with ``{fold}`` for folds; may hold placeholders
            (``{moe_dir}``, ``{perch}``, ``{data_dir}``, ``{recipe_dir}``, ``{weights_prefix}``)
            and one ``*``; a plain relative path is relative to the recipe's folder.
        sha256: the expected SHA-256 of each file (one per fold), checked before any audio is
            read; empty: not checked.
        weight: blend weight (blend members).
        group_weights: a weight per class group (taxonomic class of ``taxonomy.csv``), replacing
            ``weight`` for that group's classes.
        optional: a missing file drops the member (logged) instead of stopping the run.
        folds: how many files ``{fold}`` runs over (1..folds): an ``onnx`` member's outputs
            are averaged over them (logits), a head's as the head's own rule says (ProtoSSM:
            the mean of the folds' sigmoids); a state-dict member has one file.
        input_tensor, output_tensor: the ONNX graph's tensor names (``onnx`` members).
        labels: the member's label space: ``competition`` (the submission's columns, in order)
            or a CSV file of its class names in output order.
        match: the label file's column matched to the submission: ``primary_label`` or
            ``scientific_name``.
        unmapped: what a submission column the member does not predict gets: a number (a
            logit: the member's own output scale, before a probability or rank blend's
            transform) or ``genus`` (the mean of the member's logits for its classes of the
            same genus, else ``unmapped_fill``).
        unmapped_fill: the number behind ``genus`` when no class of the genus is predicted.
        params: the remaining kind-specific parameters (``d_model`` of ProtoSSM, …).
    """

    name: str
    kind: str
    input: str
    file: str | None = None
    sha256: tuple[str, ...] = ()
    weight: float = 1.0
    group_weights: tuple[tuple[str, float], ...] = ()
    optional: bool = False
    folds: int = 1
    input_tensor: str | None = None
    output_tensor: str | None = None
    labels: str = "competition"
    match: str = "primary_label"
    unmapped: float | str = 0.0
    unmapped_fill: float = 0.0
    params: tuple[tuple[str, Any], ...] = ()

    @property
    def is_head(self) -> bool:
        return self.kind in HEAD_KINDS

    def param(self, name: str, default=None):
        return dict(self.params).get(name, default)


@dataclass(frozen=True)
class Blend:
    """How the blend members' outputs are combined: a weighted mean in ``space`` (``logit``:
    pre-sigmoid logits; ``probability``: each member's sigmoid first; ``rank``: each member's
    percentile per class against ``reference``), the weights renormalised over the members
    present (a dropped member's weight leaves the denominator).

    Attributes:
        reference: with ``rank``: the file of each member's score quantiles per class
            (placeholders as a member's ``file``).
        reference_sha256: its expected SHA-256 (checked before any audio is read).
    """

    space: str = "logit"
    renormalise: bool = True
    reference: str | None = None
    reference_sha256: str | None = None


@dataclass(frozen=True)
class Prior:
    """The site/hour prior's tables (fitted on ``train_soundscapes_labels.csv``); its scale is a
    ``prior`` step's parameter."""

    kind: str = "site-hour"
    shrinkage_windows: float = 8.0
    clip: float = 1e-4


@dataclass(frozen=True)
class Detections:
    """The archive's detection defaults for this recipe's scores (``None``: streamer's own):
    ``min_score`` (also makes a CSV or Parquet output a detection list, as BirdNET-Analyzer's
    CSV is), ``top_k`` (0: no limit) and ``merge`` (consecutive windows of a class as one
    event). The command line's flags override them. ``style``: the tables' columns and number
    formats, ``streamer``'s or ``birdnet-analyzer``'s (its CSV, Raven and Audacity tables)."""

    min_score: float | None = None
    top_k: int | None = None
    merge: bool | None = None
    style: str = "streamer"


@dataclass(frozen=True)
class Recipe:
    """A whole ensemble. ``source`` names where it came from (a path, or ``packaged:NAME``);
    ``folder`` is what relative member paths are relative to. ``classes``: the output's columns,
    ``competition`` (the competition's taxonomy) or the name of a front-end whose own labels they
    are (BirdNET's 6,522 species). ``licence``: the models' terms, printed once per run."""

    name: str
    description: str
    framing: Framing
    frontends: tuple[Frontend, ...]
    members: tuple[Member, ...]
    blend: Blend
    prior: Prior
    steps: tuple[StepSpec, ...]
    drop_order: tuple[str, ...]
    classes: str = "competition"
    licence: str = ""
    detections: Detections = Detections()
    source: str = ""
    folder: Path | None = None
    text: str = field(default="", repr=False, compare=False)

    def member(self, name: str) -> Member:
        for member in self.members:
            if member.name == name:
                return member
        raise KeyError(name)

    @property
    def member_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.members)

    @property
    def blend_members(self) -> tuple[Member, ...]:
        return tuple(m for m in self.members if not m.is_head)

    @property
    def head_members(self) -> tuple[Member, ...]:
        return tuple(m for m in self.members if m.is_head)

    def frontend(self, name: str) -> Frontend:
        for frontend in self.frontends:
            if frontend.name == name:
                return frontend
        raise KeyError(name)


# --- parsing -----------------------------------------------------------------------------


class _Reader:
    """Typed reads from one TOML table that record mistakes instead of raising, and note the
    keys read so that unknown keys can be reported."""

    def __init__(self, errors: list[str], table: Any, where: str) -> None:
        self.errors = errors
        self.where = where
        if not isinstance(table, dict):
            errors.append(f"{where}: expected a table, got {_kind(table)}")
            table = {}
        self.table = table
        self.seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def get(self, name: str, kinds: tuple, default=None, *, required: bool = False, what: str = ""):
        self.seen.add(name)
        if name not in self.table:
            if required:
                self.errors.append(f"{self.key(name)}: missing; expected {what or _names(kinds)}")
            return default
        value = self.table[name]
        if isinstance(value, kinds) and (bool in kinds or not isinstance(value, bool)):  # true is no number
            return value
        self.errors.append(f"{self.key(name)} = {_show(value)}: expected {what or _names(kinds)}")
        return default

    def number(self, name: str, default=None, *, required: bool = False, minimum: float | None = None,
               positive: bool = False, integer: bool = False):
        kinds = (int,) if integer else (int, float)
        what = "an integer" if integer else "a number"
        if positive:
            what += " > 0"
        elif minimum is not None:
            what += f" >= {minimum:g}"
        value = self.get(name, kinds, default, required=required, what=what)
        if value is None or value is default:
            return value
        if not math.isfinite(value) or (positive and value <= 0) or (minimum is not None and value < minimum):
            self.errors.append(f"{self.key(name)} = {_show(value)}: expected {what}")
            return default
        return int(value) if integer else float(value)

    def choice(self, name: str, choices: tuple, default=None, *, required: bool = False):
        value = self.get(name, (str,), default, required=required, what="one of " + ", ".join(map(repr, choices)))
        if value is not None and value is not default and value not in choices:
            self.errors.append(f"{self.key(name)} = {_show(value)}: expected one of {', '.join(map(repr, choices))}")
            return default
        return value

    def unknown(self, allowed: tuple[str, ...] = ()) -> None:
        for name in self.table:
            if name not in self.seen and name not in allowed:
                self.errors.append(f"{self.key(name)}: unknown key")


def _kind(value) -> str:
    return {dict: "a table", list: "an array", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number"}.get(type(value), type(value).__name__)


def _names(kinds: tuple) -> str:
    return " or ".join(_kind(k()) if k is not type(None) else "nothing" for k in kinds)


def _show(value) -> str:
    if isinstance(value, tuple):
        value = list(value)  # as the recipe file (or --set) wrote it
    text = repr(value) if not isinstance(value, bool) else str(value).lower()
    return text if len(text) <= 60 else text[:57] + "..."


def parse_recipe(doc: dict, source: str, *, folder: Path | None = None, text: str = "") -> Recipe:
    """A :class:`Recipe` from a parsed TOML document.

    Raises:
        RecipeError: every mistake found, one line each.
    """
    errors: list[str] = []
    top = _Reader(errors, doc, "")
    head = _Reader(errors, top.get("recipe", (dict,), {}, required=True, what="a [recipe] table"), "recipe")
    name = head.get("name", (str,), "", required=True, what="a string")
    description = head.get("description", (str,), "")
    fmt = head.number("format", RECIPE_FORMAT, required=True, integer=True)
    if fmt is not None and fmt != RECIPE_FORMAT:
        errors.append(f"recipe.format = {fmt}: this streamer reads format {RECIPE_FORMAT}")
    classes = head.get("classes", (str,), "competition", what="'competition' or a front-end's name")
    licence = head.get("licence", (str,), "", what="a string")
    head.unknown()

    framing = _framing(errors, top.get("framing", (dict,), {}, required=True, what="a [framing] table"))
    frontends = _frontends(errors, top.get("frontends", (dict,), {}))
    _one_perch(errors, frontends)
    _framing_fits(errors, framing, frontends)
    _classes(errors, classes, frontends, framing)
    members = _members(errors, top.get("members", (dict,), None, required=True, what="a [members] table"), frontends)
    blend = _blend(errors, top.get("blend", (dict,), {}))
    prior = _prior(errors, top.get("prior", (dict,), {}))
    steps = _steps(errors, top.get("steps", (list,), [], required=True, what="an array of [[steps]] tables"), members)
    det = _Reader(errors, top.get("detections", (dict,), {}), "detections")
    detections = Detections(det.number("min_score", None, minimum=0.0), det.number("top_k", None, integer=True, minimum=0),
                            det.get("merge", (bool,), None), det.choice("style", ("streamer", "birdnet-analyzer"), "streamer") or "streamer")
    det.unknown()
    if detections.min_score is not None and detections.min_score > 1:
        errors.append(f"detections.min_score = {detections.min_score:g}: expected a score in [0, 1]")
    budget = _Reader(errors, top.get("budget", (dict,), {}), "budget")
    drop_order = budget.get("drop_order", (list,), [], what="an array of member names")
    budget.unknown()
    declared = tuple((top.table.get("members") or {}) if isinstance(top.table.get("members"), dict) else ())
    drop_order = _drop_order(errors, drop_order, members, declared)
    top.unknown()
    _check_whole(errors, members, steps, blend)
    if errors:
        raise RecipeError(source, errors)
    return Recipe(name=name, description=description, framing=framing, frontends=frontends, members=members,
                  blend=blend, prior=prior, steps=steps, drop_order=drop_order, classes=classes or "competition",
                  licence=licence or "", detections=detections, source=source, folder=folder, text=text)


def _framing_fits(errors: list[str], framing: Framing, frontends: tuple[Frontend, ...]) -> None:
    """Perch and the log-mel take the competition's windows (5 s at 32 kHz, soxr)."""
    fixed = [f"{f.kind} front-end {f.name!r}" for f in frontends if f.kind in ("perch", "logmel")]
    if not fixed:
        return
    for key in ("sample_rate_hz", "window_s", "resampler"):
        want, got = SUPPORTED_FRAMING[key], getattr(framing, key)
        if got != want:
            who = fixed[0] if len(fixed) == 1 else ", ".join(fixed[:-1]) + " and " + fixed[-1]
            errors.append(f"framing.{key} = {_show(got)}: the {who} take{'s' if len(fixed) == 1 else ''} {_show(want)}")


def _classes(errors: list[str], classes, frontends: tuple[Frontend, ...], framing: Framing) -> None:
    if classes is None or classes == "competition":
        return
    names = [f.name for f in frontends if f.kind in BACKBONE_KINDS]
    if classes not in names:
        errors.append(f"recipe.classes = {_show(classes)}: expected 'competition' or the name of a perch or litert "
                      f"front-end" + (f" ({', '.join(names)})" if names else " (the recipe has none)"))


def _framing(errors: list[str], table) -> Framing:
    r = _Reader(errors, table, "framing")
    rate = r.number("sample_rate_hz", required=True, integer=True, positive=True)
    resampler = r.choice("resampler", RESAMPLERS, required=True)
    window = r.number("window_s", required=True, positive=True)
    hop = r.number("hop_s", required=True, positive=True)
    per_file = r.number("windows_per_file", SUPPORTED_FRAMING["windows_per_file"], integer=True, positive=True)
    mono = r.get("mono", (str,), None, required=True, what="a string")
    file_names = r.choice("file_names", FILE_NAME_SCHEMES, "birdclef")
    piece = r.number("resample_piece_s", None, integer=True, positive=True)
    last = r.number("min_last_window_s", 0.0, minimum=0.0)
    r.unknown()
    if mono is not None and mono != "mean":
        errors.append(f"framing.mono = {_show(mono)}: this streamer averages the channels ('mean') only")
    if window is not None and hop is not None and hop != window:
        errors.append(f"framing.hop_s = {hop:g}: this streamer runs windows that follow each other (hop_s = window_s = {window:g})")
    if window is not None and rate is not None:
        per_chunk = CHUNK_SECONDS / window
        if abs(window * rate - round(window * rate)) > 1e-9 or abs(per_chunk - round(per_chunk)) > 1e-9:
            errors.append(f"framing.window_s = {window:g}: expected a whole number of samples that divides {CHUNK_SECONDS} s")
    if piece is not None and (resampler != "kaiser_fast" or piece % CHUNK_SECONDS):
        errors.append(f"framing.resample_piece_s = {piece}: only for resampler 'kaiser_fast', a multiple of {CHUNK_SECONDS} s")
    if last is not None and window is not None and last > window:
        errors.append(f"framing.min_last_window_s = {last:g}: expected at most window_s ({window:g})")
    return Framing(
        sample_rate_hz=rate or SUPPORTED_FRAMING["sample_rate_hz"], resampler=resampler or "soxr-hq",
        window_s=window or SUPPORTED_FRAMING["window_s"], hop_s=hop or window or SUPPORTED_FRAMING["hop_s"],
        windows_per_file=per_file or SUPPORTED_FRAMING["windows_per_file"], mono="mean", file_names=file_names or "birdclef",
        resample_piece_s=piece, min_last_window_s=float(last or 0.0),
    )


def _frontends(errors: list[str], table) -> tuple[Frontend, ...]:
    out = []
    for name, body in (table or {}).items():
        where = f"frontends.{name}"
        if not _NAME_RE.match(name) or name == WAVEFORM:
            errors.append(f"{where}: a front-end name is lower-case letters, digits, '-' or '_' (not 'waveform')")
        r = _Reader(errors, body, where)
        kind = r.choice("kind", FRONTEND_KINDS, required=True)
        params: dict = {}
        if kind == "logmel":
            for key, want in LOGMEL_PARAMETERS.items():
                kinds = (bool,) if isinstance(want, bool) else (str,) if isinstance(want, str) else (int, float)
                value = r.get(key, kinds, None, required=True, what=_kind(want) if not isinstance(want, (int, float)) or isinstance(want, bool) else "a number")
                if value is None:
                    continue
                if value != want:
                    errors.append(f"{where}.{key} = {_show(value)}: the log-mel streamer computes has {key} = {_show(want)}")
                params[key] = value
        elif kind == "perch":
            params["file"] = r.get("file", (str,), "{perch}")
            params["labels"] = r.get("labels", (str,), "{perch_labels}")
            sha = r.get("sha256", (str,), None)
            if sha is not None and not _SHA256_RE.match(sha):
                errors.append(f"{where}.sha256 = {_show(sha)}: expected 64 lower-case hex digits")
            params["sha256"] = sha
        elif kind == "litert":
            params["file"] = r.get("file", (str,), None, required=True, what="a path to a .tflite file")
            params["labels"] = r.get("labels", (str,), None, required=True, what="a path to its label file")
            params["labels_format"] = r.choice("labels_format", LABEL_FORMATS, "birdnet")
            params["embedding"] = r.get("embedding", (str,), None, required=True, what="the embedding layer's tensor name")
            params["embedding_dim"] = r.number("embedding_dim", None, required=True, integer=True, positive=True)
            params["range_model"] = r.get("range_model", (str,), None, what="a path to a species-range .tflite file")
            for key in ("sha256", "labels_sha256", "range_model_sha256"):
                sha = r.get(key, (str,), None)
                if sha is not None and not _SHA256_RE.match(sha):
                    errors.append(f"{where}.{key} = {_show(sha)}: expected 64 lower-case hex digits")
                params[key] = sha
        r.unknown()
        out.append(Frontend(name=name, kind=kind or "", params=params))
    return tuple(out)


def _one_perch(errors: list[str], frontends: tuple[Frontend, ...]) -> None:
    perch = [f.name for f in frontends if f.kind in BACKBONE_KINDS]
    if len(perch) > 1:
        errors.append(f"frontends: {len(perch)} perch/litert front-ends ({', '.join(perch)}); a recipe runs one "
                      "embedding model")


def _member_inputs(frontends: tuple[Frontend, ...]) -> dict[str, str]:
    """Every input a member can name → the kind of thing it is (``waveform``, ``logmel``,
    ``perch.embedding``, ``perch.label``)."""
    inputs = {WAVEFORM: "waveform"}
    for f in frontends:
        if f.kind == "logmel":
            inputs[f.name] = "logmel"
        elif f.kind == "perch":
            for out in PERCH_OUTPUTS:
                inputs[f"{f.name}.{out}"] = f"perch.{out}"
        elif f.kind == "litert":
            for out in LITERT_OUTPUTS:
                inputs[f"{f.name}.{out}"] = f"litert.{out}"
    return inputs


def _members(errors: list[str], table, frontends: tuple[Frontend, ...]) -> tuple[Member, ...]:
    inputs = _member_inputs(frontends)
    out = []
    if isinstance(table, dict) and not table:
        errors.append("members: the recipe has no member")
    for name, body in (table or {}).items():
        where = f"members.{name}"
        if not _NAME_RE.match(name):
            errors.append(f"{where}: a member name is 1-32 lower-case letters, digits, '-' or '_', starting with a letter")
        r = _Reader(errors, body, where)
        kind = r.choice("kind", MEMBER_KINDS, required=True)
        inp = r.get("input", (str,), None, required=True, what="a front-end output (" + ", ".join(sorted(inputs)) + ")")
        if inp is not None and kind is not None:
            got = inputs.get(inp)
            accepted = KIND_INPUTS[kind]
            if got is None:
                errors.append(f"{where}.input = {_show(inp)}: no such front-end output; the recipe has {', '.join(sorted(inputs))}")
            elif got not in accepted:
                article = "an" if kind[0] in "aeio" else "a"
                errors.append(f"{where}.input = {_show(inp)}: {article} {kind} member takes {' or '.join(accepted)}, not {got}")
        file = r.get("file", (str,), None, required=kind is not None and kind not in OWN_LOGITS_KINDS, what="a path")
        if kind in OWN_LOGITS_KINDS and file is not None:
            errors.append(f"{where}.file: a {kind} member reads its front-end's file; give the file in [frontends.{(inp or 'perch').split('.')[0]}]")
        folds = r.number("folds", 1, integer=True, positive=True)
        if kind in ("student-cnn", "student-crnn") and folds is not None and folds > 1:
            errors.append(f"{where}.folds = {folds}: a {kind} member is one checkpoint; make one member per checkpoint")
        if file is not None and folds is not None and folds > 1 and "{fold}" not in file:
            errors.append(f"{where}.file = {_show(file)}: with folds = {folds} the path needs a {{fold}} placeholder")
        sha = r.get("sha256", (str, list), None, what="a SHA-256 (64 hex digits), or one per fold")
        shas: tuple[str, ...] = ()
        if sha is not None:
            shas = (sha,) if isinstance(sha, str) else tuple(sha)
            bad = [s for s in shas if not isinstance(s, str) or not _SHA256_RE.match(s)]
            if bad:
                errors.append(f"{where}.sha256 = {_show(bad[0])}: expected 64 lower-case hex digits")
            elif folds is not None and len(shas) not in (1, folds) or (folds and folds > 1 and len(shas) == 1):
                errors.append(f"{where}.sha256: {len(shas)} hash(es) for {folds} fold(s); give one per fold")
        is_head = kind in HEAD_KINDS
        weight = r.number("weight", None if is_head else None, minimum=0.0)
        if is_head and weight is not None:
            errors.append(f"{where}.weight: a {kind} member is a head run by a 'head' step, not blended")
        if not is_head and kind is not None and weight is None and "weight" not in r.table:
            errors.append(f"{where}.weight: missing; expected a number >= 0 (its blend weight)")
        groups = r.get("group_weights", (dict,), {}, what="a table of class group = weight")
        group_weights = []
        for group, value in (groups or {}).items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                errors.append(f"{where}.group_weights.{group} = {_show(value)}: expected a number >= 0")
            else:
                group_weights.append((group, float(value)))
        optional = r.get("optional", (bool,), False)
        input_tensor = r.get("input_tensor", (str,), None)
        output_tensor = r.get("output_tensor", (str,), None, required=kind == "onnx", what="the ONNX output tensor of the logits")
        labels = r.get("labels", (str,), "competition")
        match = r.choice("match", ("primary_label", "scientific_name"), "scientific_name" if kind in OWN_LOGITS_KINDS else "primary_label")
        unmapped = r.get("unmapped", (int, float, str), -8.0 if kind in OWN_LOGITS_KINDS else 0.0, what="a number or 'genus'")
        if isinstance(unmapped, str) and unmapped != "genus":
            errors.append(f"{where}.unmapped = {_show(unmapped)}: expected a number or 'genus'")
        unmapped_fill = r.number("unmapped_fill", -8.0 if kind in OWN_LOGITS_KINDS else 0.0)
        params: list[tuple[str, Any]] = []
        if kind == "protossm":
            d_model = r.number("d_model", None, integer=True, positive=True)
            if d_model is not None:
                params.append(("d_model", d_model))
        r.unknown()
        if kind is None:
            continue
        out.append(Member(
            name=name, kind=kind, input=inp or "", file=file, sha256=shas,
            weight=0.0 if weight is None else weight, group_weights=tuple(group_weights), optional=bool(optional),
            folds=folds or 1, input_tensor=input_tensor, output_tensor=output_tensor, labels=labels or "competition",
            match=match or "primary_label", unmapped=float(unmapped) if isinstance(unmapped, (int, float)) else unmapped,
            unmapped_fill=unmapped_fill if unmapped_fill is not None else 0.0, params=tuple(params),
        ))
    return tuple(out)


def _blend(errors: list[str], table) -> Blend:
    r = _Reader(errors, table, "blend")
    space = r.choice("space", BLEND_SPACES, "logit")
    renormalise = r.get("renormalise", (bool,), True)
    reference = r.get("reference", (str,), None, what="a path")
    sha = r.get("reference_sha256", (str,), None, what="a SHA-256 (64 hex digits)")
    r.unknown()
    if renormalise is False:
        errors.append("blend.renormalise = false: a dropped member's weight always leaves the denominator (true)")
    if space == "rank" and reference is None:
        errors.append("blend.reference: missing; a rank blend needs each member's score quantiles (make them with "
                      "'streamer recipe calibrate')")
    if space != "rank" and (reference is not None or sha is not None):
        errors.append(f"blend.reference: only a rank blend reads one (space is {space!r})")
    if sha is not None and not _SHA256_RE.match(sha):
        errors.append(f"blend.reference_sha256 = {_show(sha)}: expected 64 lower-case hex digits")
    return Blend(space=space or "logit", renormalise=True, reference=reference, reference_sha256=sha)


def _prior(errors: list[str], table) -> Prior:
    r = _Reader(errors, table, "prior")
    kind = r.choice("kind", PRIOR_KINDS, "site-hour")
    shrink = r.number("shrinkage_windows", 8.0, minimum=0.0)
    clip = r.number("clip", 1e-4, positive=True)
    r.unknown()
    if clip is not None and not clip < 0.5:
        errors.append(f"prior.clip = {clip:g}: expected a number in (0, 0.5)")
    return Prior(kind=kind or "site-hour", shrinkage_windows=shrink if shrink is not None else 8.0,
                 clip=clip if clip is not None else 1e-4)


def _steps(errors: list[str], items, members: tuple[Member, ...]) -> tuple[StepSpec, ...]:
    out = []
    heads = {m.name for m in members if m.is_head}
    for i, body in enumerate(items or []):
        where = f"steps[{i}]"
        r = _Reader(errors, body, where)
        name = r.choice("step", tuple(STEPS), required=True)
        if name is None:
            r.unknown(allowed=tuple(r.table))
            continue
        definition = STEPS[name]
        params = {}
        for key, spec in definition.params.items():
            value = r.get(key, spec.kinds, spec.default, required=spec.required, what=spec.what)
            if value is not None and value is not spec.default:
                problem = spec.check(value)
                if problem:
                    errors.append(f"{where}.{key} = {_show(value)}: {problem}")
                    continue
            if isinstance(value, list):
                value = tuple(value)
            elif isinstance(value, dict):
                value = tuple(sorted(value.items()))
            params[key] = value
        r.unknown()
        if name == "head" and params.get("member") not in heads:
            errors.append(f"{where}.member = {_show(params.get('member'))}: not a head member of the recipe"
                          + (f" ({', '.join(sorted(heads))})" if heads else " (it has none)"))
        out.append(StepSpec(name, tuple(sorted(params.items()))))
    return tuple(out)


def _drop_order(errors: list[str], names, members: tuple[Member, ...], declared: tuple[str, ...]) -> tuple[str, ...]:
    known = {m.name: m for m in members}
    out = []
    for i, name in enumerate(names or []):
        if not isinstance(name, str) or name not in declared:
            errors.append(f"budget.drop_order[{i}] = {_show(name)}: not a member of the recipe")
        elif name not in known:
            continue  # the member's own mistake is reported
        elif known[name].is_head:
            errors.append(f"budget.drop_order[{i}] = {_show(name)}: a head cannot be dropped (its step needs it)")
        elif name in out:
            errors.append(f"budget.drop_order[{i}] = {_show(name)}: listed twice")
        else:
            out.append(name)
    return tuple(out)


def _check_whole(errors: list[str], members: tuple[Member, ...], steps: tuple[StepSpec, ...], blend: Blend) -> None:
    """What holds across tables: a blend member with weight, every head run once, steps whose
    spaces chain from the blend's to probabilities."""
    from streamer.postprocess import chain_spaces

    blended = [m for m in members if not m.is_head]
    if members and not blended:
        errors.append("members: no blend member (every member is a head)")
    elif blended and sum(m.weight for m in blended) + sum(w for m in blended for _, w in m.group_weights) <= 0:
        errors.append("members: every blend weight is 0")
    ran = [dict(s.params).get("member") for s in steps if s.name == "head"]
    heads = {m.name for m in members if m.is_head}
    for m in members:
        if m.is_head and m.name not in ran and not any(r not in heads for r in ran):  # else reported
            errors.append(f"members.{m.name}: a {m.kind} head that no 'head' step runs")
    for name in {n for n in ran if ran.count(n) > 1}:
        errors.append(f"steps: the head {name!r} runs twice")
    if steps:
        problem = chain_spaces(blend.space, steps)
        if problem:
            errors.append(f"steps: {problem}")
