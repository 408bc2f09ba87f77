"""The three reusable stages of a run, and the plan that feeds them.

* **decode** (:func:`decode_job`): a file → its 12 windows, or an error record;
* **models** (:class:`ModelStage`): windows → Perch embedding, mapped Perch logits, student
  logits; :func:`check_finite` is the one non-finite check of those outputs;
* **reduce** (:class:`Reducer`, or :class:`PerchScores` for Perch's own scores): one file's or
  one chunk's model outputs → blend, prior, ProtoSSM folds, post-processing → probabilities.

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
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from streamer import failpoints, postprocess
from streamer.artifacts import class_mapping, map_perch_logits, resolve_moe, resolve_perch, resolve_perch_labels
from streamer.audio import WINDOW_SAMPLES, read_span
from streamer.config import SCORE_KINDS, InferConfig
from streamer.errors import ArtifactError, AudioDecodeError
from streamer.metadata import N_WINDOWS_PER_FILE, ClassLabels, Competition, file_stem, load_competition, parse_hour, parse_site
from streamer.models.graphs import BackendChoice, ThreadSettings, windows_per_call
from streamer.prior import PriorTables, fit_prior

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
        embedding: Perch embedding ``[T, 1536]``.
        perch_logits: Perch logits mapped to the classes ``[T, C]`` (−8.0 where unmatched).
        cnn_logits, crnn_logits: student logits ``[T, C]``, ``None`` when not loaded.
    """

    embedding: np.ndarray
    perch_logits: np.ndarray
    cnn_logits: np.ndarray | None
    crnn_logits: np.ndarray | None

    def rows(self, start: int, stop: int) -> "ModelOutputs":
        """The outputs of windows ``start:stop`` (to split a multi-file batch)."""
        pick = lambda a: None if a is None else a[start:stop]  # noqa: E731
        return ModelOutputs(pick(self.embedding), pick(self.perch_logits), pick(self.cnn_logits), pick(self.crnn_logits))

    @staticmethod
    def concat(parts: "list[ModelOutputs]") -> "ModelOutputs":
        """Consecutive windows' outputs joined in order (a file scored in parts)."""
        def join(arrays):
            return None if any(a is None for a in arrays) else np.concatenate(arrays, axis=0)

        return ModelOutputs(
            join([p.embedding for p in parts]),
            join([p.perch_logits for p in parts]),
            join([p.cnn_logits for p in parts]),
            join([p.crnn_logits for p in parts]),
        )

    def without_students(self) -> "ModelOutputs":
        """These outputs as if no student had run (the blend renormalises to Perch alone)."""
        return replace(self, cnn_logits=None, crnn_logits=None)


def all_finite(array) -> bool:
    """True when ``array`` is absent (``None``) or holds no NaN and no infinity."""
    return array is None or bool(np.all(np.isfinite(array)))


@dataclass(frozen=True)
class FiniteCheck:
    """The non-finite check of one file's (or one chunk's) model outputs, the same in ``infer``
    and ``archive``: a NaN or infinity in Perch's embedding or logits leaves nothing to score
    (``perch_ok`` False: ``infer`` writes prior-only rows, ``archive`` fails the input); one in
    a student's logits only drops the students (``bad_students`` names them)."""

    perch_ok: bool
    bad_students: tuple[str, ...] = ()


def check_finite(outputs: ModelOutputs) -> FiniteCheck:
    """See :class:`FiniteCheck`."""
    perch_ok = all_finite(outputs.embedding) and all_finite(outputs.perch_logits)
    bad = tuple(name for name, a in (("CNN", outputs.cnn_logits), ("CRNN", outputs.crnn_logits)) if not all_finite(a))
    return FiniteCheck(perch_ok, bad)


@dataclass(frozen=True)
class ModelSpec:
    """What a process needs to build its :class:`ModelStage` (picklable, no sessions inside)."""

    onnx_path: Path
    class_map: np.ndarray
    n_perch_labels: int
    cnn_path: Path | None
    crnn_path: Path | None
    n_classes: int
    threads: ThreadSettings = ThreadSettings()
    students_onnx: tuple[Path | None, Path | None] | None = None
    backend: BackendChoice = BackendChoice()


@dataclass(frozen=True)
class ReducerSpec:
    """What the reducer needs (picklable)."""

    fold_paths: tuple[Path, ...]
    n_classes: int
    proto_d_model: int | None
    prior: PriorTables
    site_index: dict[str, int]
    blend_weights: tuple[float, float, float]
    prior_scale: float
    smooth: tuple[float, float] = (postprocess.SMOOTH_CENTER, postprocess.SMOOTH_SIDE)


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

    @property
    def class_labels(self) -> ClassLabels:
        """The classes the outputs have, in column order."""
        return self.labels if self.labels is not None else self.competition.class_labels

    @property
    def frame(self) -> "SubmissionFrame":
        return SubmissionFrame(self.config, self.competition, self.jobs, self.source, self.reducer.prior)


def dependency_paths(plan: RunPlan) -> dict[str, Path]:
    """The files a plan's numbers depend on, by role (students only when loaded): what the
    validation cache and an archive folder's fingerprint hash."""
    config = plan.config
    paths = {
        "perch_onnx": plan.model.onnx_path,
        "perch_labels": resolve_perch_labels(plan.model.onnx_path, config.artifacts.perch_labels),
        "taxonomy": Path(config.artifacts.data_dir) / "taxonomy.csv",
        "sample_submission": Path(config.artifacts.data_dir) / "sample_submission.csv",
    }
    if plan.model.cnn_path is not None:
        paths["cnn"] = plan.model.cnn_path
    if plan.model.crnn_path is not None:
        paths["crnn"] = plan.model.crnn_path
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
    """Perch and the students, built inside the process that runs them."""

    def __init__(self, spec: ModelSpec) -> None:
        from streamer.models.moe import Students, set_torch_threads
        from streamer.models.perch import PerchModel

        self.spec = spec
        self.perch = PerchModel(spec.onnx_path, spec.threads, spec.backend)
        self.students = Students(
            spec.cnn_path, spec.crnn_path, n_classes=spec.n_classes, onnx_paths=spec.students_onnx,
            threads=spec.threads, backend=spec.backend,
        )
        if self.students.uses_torch:  # else torch is never imported here (see Students)
            set_torch_threads(spec.threads.intra_op_threads)
        self.seconds = {"perch": 0.0, "students": 0.0}
        self.last_seconds = (0.0, 0.0)

    def check(self) -> None:
        """Run one silent window and check the output sizes against the label list; then warm
        up the call size a whole file uses (a backend's first call of a shape costs extra:
        OpenVINO compiles its kernels for it), so the first file is not slower than the rest."""
        emb, logits = self.perch.run(np.zeros((1, WINDOW_SAMPLES), dtype=np.float32))
        if logits.shape[1] != self.spec.n_perch_labels:
            raise ArtifactError(
                f"{self.spec.onnx_path}: the model gives {logits.shape[1]} logits but the label list has "
                f"{self.spec.n_perch_labels} rows"
            )
        if not (all_finite(emb) and all_finite(logits)):
            raise ArtifactError(f"{self.spec.onnx_path}: non-finite outputs on a silent window")
        self.students.run(np.zeros((1, WINDOW_SAMPLES), dtype=np.float32))
        per_call = windows_per_call(self.spec.threads) or N_WINDOWS_PER_FILE
        for size in sorted({min(per_call, N_WINDOWS_PER_FILE), N_WINDOWS_PER_FILE % per_call} - {0, 1}):
            warm = np.full((size, WINDOW_SAMPLES), 1e-3, dtype=np.float32)
            self.perch.run(warm)
            self.students.run(warm)

    def run(self, windows: np.ndarray, with_students: bool = True, key: str | None = None) -> ModelOutputs:
        """float32 ``[N, 160000]`` → :class:`ModelOutputs` with ``N`` rows.

        ``with_students=False`` skips the students (the budget's cheaper tier). ``key`` names
        the file for the failpoints ``consumer.mid_inference`` and ``consumer.students``."""
        t0 = time.perf_counter()
        embedding, logits = self.perch.run(windows)
        if failpoints.hit("consumer.mid_inference", key) == "nan":
            embedding, logits = np.full_like(embedding, np.nan), np.full_like(logits, np.nan)
        t1 = time.perf_counter()
        cnn, crnn = self.students.run(windows) if with_students else (None, None)
        if with_students and failpoints.hit("consumer.students", key) == "nan":
            cnn, crnn = (None if a is None else np.full_like(a, np.nan) for a in (cnn, crnn))
        t2 = time.perf_counter()
        self.seconds["perch"] += t1 - t0
        self.seconds["students"] += t2 - t1
        self.last_seconds = (t1 - t0, t2 - t1)
        return ModelOutputs(
            embedding=embedding,
            perch_logits=map_perch_logits(logits, self.spec.class_map),
            cnn_logits=cnn,
            crnn_logits=crnn,
        )


class Reducer:
    """Per-file reduction: blend → prior → ProtoSSM folds → post-processing."""

    def __init__(self, spec: ReducerSpec) -> None:
        from streamer.models.moe import ProtoSSMFolds

        self.spec = spec
        self.folds = ProtoSSMFolds(spec.fold_paths, n_classes=spec.n_classes, d_model=spec.proto_d_model)
        n_needed = max(spec.site_index.values(), default=0) + 1
        if n_needed > self.folds.n_site_slots:
            log.warning(
                "the labels name %d sites but the ProtoSSM checkpoints have %d site slots; "
                "sites numbered %d and above are treated as unknown (0)",
                n_needed - 1,
                self.folds.n_site_slots,
                self.folds.n_site_slots,
            )
        self.seconds = {"protossm": 0.0, "postprocess": 0.0}

    def site_id(self, site: str) -> int:
        """ProtoSSM's site index: 1.. for the labelled sites, 0 for any other."""
        site_id = self.spec.site_index.get(site, 0)
        return site_id if site_id < self.folds.n_site_slots else 0

    def reduce(self, stem: str, outputs: ModelOutputs) -> np.ndarray:
        """Probabilities float32 ``[T, C]`` of one file, its site and hour parsed from its name."""
        return self.reduce_at(outputs, parse_site(stem), parse_hour(stem))

    def reduce_at(self, outputs: ModelOutputs, site: str, hour: int) -> np.ndarray:
        """Probabilities float32 ``[T, C]`` of ``T`` consecutive windows recorded at ``site``
        during UTC ``hour`` (a Kaggle file, or one 60-s chunk of a long recording)."""
        return self.reduce_many([(outputs, site, hour)])[0]

    def reduce_files(self, items: list[tuple[str, ModelOutputs]]) -> list[np.ndarray]:
        """:meth:`reduce` of several files (stem, outputs) at once."""
        return self.reduce_many([(outputs, parse_site(stem), parse_hour(stem)) for stem, outputs in items])

    def reduce_many(self, items: list[tuple[ModelOutputs, str, int]]) -> list[np.ndarray]:
        """:meth:`reduce_at` of several (outputs, site, hour) at once, in order.

        Items with the same number of windows run the ProtoSSM folds as one batch: the folds'
        many small operators then run once for the batch instead of once per file (about half
        the time per file at 8 files, one thread). Every other step is per item. The batched
        folds give the single-file numbers to float32 round-off (about 1e-6 in a logit)."""
        t0 = time.perf_counter()
        teachers = []
        for outputs, site, hour in items:
            blended = postprocess.blend_logits(
                outputs.perch_logits, outputs.cnn_logits, outputs.crnn_logits, self.spec.blend_weights
            )
            teachers.append(postprocess.add_prior(blended, self.spec.prior.logit(site, hour), self.spec.prior_scale))
        t1 = time.perf_counter()
        fold_logits: list = [None] * len(items)
        by_length: dict[int, list[int]] = {}
        for i, (outputs, _, _) in enumerate(items):
            by_length.setdefault(outputs.embedding.shape[0], []).append(i)
        for group in by_length.values():
            batch = self.folds.run_batch(
                np.stack([items[i][0].embedding for i in group]),
                np.stack([teachers[i] for i in group]),
                [self.site_id(items[i][1]) for i in group],
                [items[i][2] for i in group],
            )
            for j, i in enumerate(group):
                fold_logits[i] = batch[:, j]
        t2 = time.perf_counter()
        center, side = self.spec.smooth
        probs = [postprocess.finalize(postprocess.fold_mean_probability(f), center=center, side=side) for f in fold_logits]
        t3 = time.perf_counter()
        self.seconds["protossm"] += t2 - t1
        self.seconds["postprocess"] += (t1 - t0) + (t3 - t2)
        return probs



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
        logits = np.asarray(outputs.perch_logits, dtype=np.float32)
        out = logits.copy() if self.spec.scores == "logits" else postprocess.sigmoid(logits).astype(np.float32)
        self.seconds["postprocess"] += time.perf_counter() - t0
        return out


def make_reducer(spec):
    """The reducer of a spec: the ensemble's (:class:`Reducer`) or Perch's own scores."""
    return PerchScores(spec) if isinstance(spec, PerchScoresSpec) else Reducer(spec)


def read_species_list(path: Path, labels: tuple[str, ...]) -> tuple[int, ...]:
    """Positions in Perch's label list of the names in ``path`` (one per line; blank lines and
    lines starting with ``#`` skipped), in the file's order.

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
    index = {name: i for i, name in enumerate(labels)}
    unknown = [n for n in names if n not in index]
    if unknown:
        hints = []
        for name in unknown[:10]:
            close = difflib.get_close_matches(name, labels, n=3, cutoff=0.6)
            hints.append(f"{name!r}" + (f" (closest: {', '.join(repr(c) for c in close)})" if close else " (nothing close)"))
        more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
        raise ConfigError(f"{path}: not in Perch's label list: " + "; ".join(hints) + more)
    seen: dict[str, None] = dict.fromkeys(names)  # duplicates once, first position kept
    return tuple(index[n] for n in seen)


def prepare_perch_only(config: InferConfig, *, scores: str = "probability", species_list: Path | None = None) -> RunPlan:
    """The plan of ``archive --labels perch``: Perch alone, its own classes (all 14,795, or
    those of ``species_list``); reads no competition folder and no MoE bundle.

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
    names = tuple(perch.labels[i] for i in chosen)
    model = ModelSpec(
        onnx_path=perch.onnx_path,
        class_map=np.asarray(chosen, dtype=np.int64),
        n_perch_labels=len(perch.labels),
        cnn_path=None,
        crnn_path=None,
        n_classes=len(chosen),
        threads=ThreadSettings(intra_op_threads=None, allow_spinning=config.execution.allow_spinning),
        backend=backend,
    )
    return RunPlan(config=config, competition=None, jobs=(), source="", model=model, reducer=PerchScoresSpec(scores),
                   n_matched_classes=len(chosen), notes=(f"{len(chosen)} of Perch's {len(perch.labels)} labels",),
                   labels=ClassLabels(names, names, names))


def check_students(spec: ModelSpec) -> None:
    """Load each student checkpoint once (in the parent), so a malformed one is reported before
    any process starts. Raises ArtifactError naming the file."""
    from streamer.models.moe import load_student

    for kind, path in (("cnn", spec.cnn_path), ("crnn", spec.crnn_path)):
        if path is not None:
            load_student(path, kind, n_classes=spec.n_classes)


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
    classes (columns) and the site/hour prior (the fallback rows)."""

    config: InferConfig
    competition: Competition
    jobs: tuple[FileJob, ...]
    source: str
    prior: PriorTables


def read_frame(config: InferConfig, files: list[Path] | None = None) -> SubmissionFrame:
    """Read the competition folder and list the files to score (reads no audio).

    Args:
        config: the run's settings.
        files: score these files instead of the competition folder's test (or dry-run) files.

    Raises:
        ArtifactError: a metadata file missing or malformed, or two files with one stem.
    """
    competition = load_competition(config.artifacts.data_dir)
    if files is None:
        found, source = competition.audio_files(config.dry_run_files)
    else:
        found, source = [Path(f) for f in files], "explicit file list"
    return SubmissionFrame(config, competition, list_jobs(found), source, fit_prior(competition.labels, competition.label_files))


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


def prepare(config: InferConfig, files: list[Path] | None = None, *, frame: SubmissionFrame | None = None) -> RunPlan:
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
    perch = resolve_perch(config.artifacts.perch, config.artifacts.perch_labels)
    moe = resolve_moe(
        config.artifacts.moe_dir,
        weights_prefix=config.artifacts.weights_prefix,
        n_folds=config.artifacts.n_folds,
        cnn=config.artifacts.cnn,
        crnn=config.artifacts.crnn,
        use_cnn=config.artifacts.use_cnn,
        use_crnn=config.artifacts.use_crnn,
    )
    weights = config.ensemble.blend_weights
    loaded = weights[0] + (weights[1] if moe.cnn_path else 0.0) + (weights[2] if moe.crnn_path else 0.0)
    if loaded <= 0:
        raise ArtifactError(f"the blend weights {weights} sum to 0 over the models that loaded")

    mapping = class_mapping(competition.class_names, perch.labels)
    n_matched = int((mapping >= 0).sum())
    notes = [f"{n_matched} of {competition.n_classes} classes found in the Perch label list ({perch.labels_path})"]
    if n_matched == 0:
        raise ArtifactError(
            f"{perch.labels_path}: none of the {competition.n_classes} taxonomy scientific names appear in the "
            f"Perch label list; is it the right file?"
        )

    reducer = ReducerSpec(
        fold_paths=moe.fold_paths,
        n_classes=competition.n_classes,
        proto_d_model=config.ensemble.proto_d_model,
        prior=frame.prior,
        site_index=competition.site_index(),
        blend_weights=weights,
        prior_scale=config.ensemble.prior_scale,
        smooth=config.ensemble.smooth,
    )
    model = ModelSpec(
        onnx_path=perch.onnx_path,
        class_map=mapping,
        n_perch_labels=len(perch.labels),
        cnn_path=moe.cnn_path,
        crnn_path=moe.crnn_path,
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
    )
