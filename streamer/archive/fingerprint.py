"""The run fingerprint of an archive output folder: everything that changes a number or a column.

A folder holds the outputs of one configuration only. Its fingerprint (``.streamer-run.json``)
records the SHA-256 of every model file, label list and metadata file the scores depend on,
every setting that changes a number (blend, prior scale, smoothing, ProtoSSM width) or a
column (classes, format, top-k), the site/hour sources, and the output format version.
Execution settings (engine, workers, threads, students in torch or onnxruntime, onnxruntime or
OpenVINO in fp32) are left out: they change the speed, not the results beyond float round-off.
The precision is in: bf16 changes the numbers (a folder without it was scored in fp32).

A run into a folder with another fingerprint stops before scoring (exit 2) and names what
differs; ``--overwrite`` removes the old outputs and journal first, so the folder never holds a
mix (BirdNET-Analyzer's resume keys on the run's parameters the same way).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from streamer.config import ArchiveSettings
from streamer.errors import ArtifactError, ConfigError
from streamer.files import atomic_write_text
from streamer.stages import RunPlan

log = logging.getLogger(__name__)

FINGERPRINT_NAME = ".streamer-run.json"
#: Bumped whenever a file's columns or their meaning change. 2: detection tables in order of
#: begin time with events ending at the recording's end; the journal carries the recording
#: effort the summary divides by.
OUTPUT_FORMAT_VERSION = 2


def _hash(path: Path | None) -> str | None:
    from streamer.files import sha256_file

    return None if path is None else sha256_file(path)


def compute(plan: RunPlan, settings: ArchiveSettings) -> dict:
    """The fingerprint of scoring with ``plan`` into ``settings``' folder (hashes every file;
    about a second for the real Perch)."""
    from streamer.stages import PerchScoresSpec

    if isinstance(plan.reducer, PerchScoresSpec):
        return _compute_perch_only(plan, settings)
    from streamer.stages import dependency_paths

    files = {role: str(path) for role, path in dependency_paths(plan, heads=True).items()}
    if plan.competition is not None:
        files["train_labels"] = str(Path(plan.config.artifacts.data_dir) / "train_soundscapes_labels.csv")
    if settings.metadata is not None:
        files["metadata"] = str(settings.metadata)
    return {
        "output_format_version": OUTPUT_FORMAT_VERSION,
        "sha256": {role: _hash(Path(path)) for role, path in sorted(files.items())},
        "settings": {
            "labels": settings.labels,
            **recipe_settings(plan),
            **({} if plan.model.framing.resampler == "soxr-hq" and plan.model.framing.window_samples == 160000
               else {"framing": _framing(plan)}),
            "precision": plan.model.backend.precision,
            "embeddings": settings.embeddings,
            **_output_settings(settings),
            "classes (count, sha256 of code, common and scientific names)": _classes_digest(plan),
        },
    }


def recipe_settings(plan: RunPlan) -> dict:
    """What of the recipe changes a number, keyed by member and step (the member files'
    hashes are in the fingerprint's ``sha256``): the members that run and their weights, the
    blend's space, the prior's parameters, the steps with their parameters."""
    recipe = plan.recipe.recipe
    reducer = plan.reducer
    weights = {name: [float(x) for x in sorted(set(w.tolist()))] for name, w in reducer.members}
    return {
        "recipe": recipe.name,
        "members (weights)": {name: w[0] if len(w) == 1 else w for name, w in weights.items()},
        "heads": [name for name, _, _ in reducer.heads],
        "head params": {name: dict(params) for name, _, params in reducer.heads if params},
        "blend space": reducer.space,
        "prior (shrinkage, clip)": [recipe.prior.shrinkage_windows, recipe.prior.clip],
        **{f"step {i + 1}: {step.name}": {k: list(v) if isinstance(v, tuple) else v for k, v in step.params}
           for i, step in enumerate(reducer.steps)},
    }


def _framing(plan: RunPlan) -> dict:
    f = plan.model.framing
    return {"rate_hz": f.rate_hz, "window_samples": f.window_samples, "resampler": f.resampler,
            "piece_s": f.piece_s, "min_last_window_s": f.min_last_window_s}


def _classes_digest(plan: RunPlan) -> list:
    import hashlib

    rows = ["\t".join(t) for t in zip(*_labels(plan))]
    return [len(rows), hashlib.sha256("\n".join(rows).encode()).hexdigest()]


def _output_settings(settings: ArchiveSettings) -> dict:
    where = settings.location
    return {
        **({} if where is None else {"range model (lat, lon, week, threshold)": [where.lat, where.lon, where.week, where.threshold]}),
        **({} if settings.table_style == "streamer" else {"table style": settings.table_style}),
        **({} if settings.place_filter is None else {"range model per recording (week, threshold)": [
            settings.place_filter.week, settings.place_filter.threshold]}),
        "format": settings.fmt,
        "top_k": settings.detections[1],
        "min_score": settings.detections[0],
        "merge_consecutive": settings.detections[2],
        "summary_min_score": settings.summary_min_score,
        "site": settings.site,
        "start_utc": settings.start_utc.isoformat() if settings.start_utc is not None else None,
    }


def _compute_perch_only(plan: RunPlan, settings: ArchiveSettings) -> dict:
    """``--labels perch`` and ``none``: Perch's files, the classes kept (14,795 names are kept
    as their count and a hash) and the output settings."""
    import hashlib

    from streamer.artifacts import resolve_perch_labels

    files = {"perch_onnx": str(plan.model.onnx_path),
             "perch_labels": str(resolve_perch_labels(plan.model.onnx_path, plan.config.artifacts.perch_labels))}
    if settings.metadata is not None:
        files["metadata"] = str(settings.metadata)
    names = plan.class_labels.codes
    return {
        "output_format_version": OUTPUT_FORMAT_VERSION,
        "sha256": {role: _hash(Path(path)) for role, path in sorted(files.items())},
        "settings": {
            "labels": settings.labels,
            "scores": plan.reducer.scores,
            "precision": plan.model.backend.precision,
            "embeddings": settings.embeddings,
            **_output_settings(settings),
            "classes (count, sha256 of the names)": [len(names), hashlib.sha256("\n".join(names).encode()).hexdigest()],
        },
    }


def shown_settings(settings: dict) -> dict:
    """The settings as ``--status`` prints them: the competition's class list (234 triples,
    kept whole in the fingerprint for the summary's names) as its count and a hash, as Perch's
    labels are kept."""
    import hashlib

    shown = dict(settings)
    triples = shown.pop("classes (code, common, scientific)", None)
    if triples is not None:
        text = "\n".join("\t".join(map(str, t)) for t in triples)
        shown["classes (count, sha256 of the codes and names)"] = [len(triples), hashlib.sha256(text.encode()).hexdigest()]
    return shown


def _labels(plan: RunPlan):
    labels = plan.class_labels
    return labels.codes, labels.common, labels.scientific


def read(out_dir: Path) -> dict | None:
    path = Path(out_dir) / FINGERPRINT_NAME
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{path}: unreadable run fingerprint ({exc}); use a new --out, or --overwrite") from exc


def write(out_dir: Path, fingerprint: dict) -> None:
    atomic_write_text(Path(out_dir) / FINGERPRINT_NAME, json.dumps(fingerprint, indent=2, sort_keys=True) + "\n")


def differences(old: dict, new: dict) -> list[str]:
    """What differs, in words (``name: old → new``)."""
    lines = []
    if old.get("output_format_version") != new.get("output_format_version"):
        lines.append(f"output format version: {old.get('output_format_version')} → {new.get('output_format_version')}")
    for group, label in (("settings", ""), ("sha256", "file ")):
        a, b = old.get(group, {}), new.get(group, {})
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                show = (lambda v: "absent" if v is None else f"sha256 {v[:12]}…") if group == "sha256" else json.dumps
                old_text, new_text = show(a.get(key)), show(b.get(key))
                if len(old_text) + len(new_text) > 200:
                    lines.append(f"{label}{key}: changed")
                else:
                    lines.append(f"{label}{key}: {old_text} → {new_text}")
    return lines


def check(out_dir: Path, fingerprint: dict, *, has_outputs: bool, overwrite: bool) -> bool:
    """Compare ``fingerprint`` with the folder's. Returns True when the folder's outputs must be
    removed first (``overwrite`` of a different or unknown configuration).

    Raises:
        ConfigError: the folder holds outputs of another configuration (or of a streamer that
            kept no fingerprint) and ``overwrite`` is off.
    """
    stored = read(out_dir)
    if stored is not None and isinstance(stored.get("settings"), dict):
        # Written before these were recorded: fp32, no embeddings.
        stored["settings"].setdefault("precision", "fp32")
        stored["settings"].setdefault("embeddings", None)
        stored["settings"].setdefault("labels", "competition")
    if stored == fingerprint:
        return False
    if stored is None and not has_outputs:
        return False  # a new folder
    if overwrite:
        return True
    what = (["the folder has outputs but no run fingerprint (an earlier streamer, or another program)"]
            if stored is None else differences(stored, fingerprint))
    raise ConfigError(
        f"{out_dir} holds outputs scored with other settings:\n  " + "\n  ".join(what)
        + "\nscore into a new --out, or add --overwrite to rescore every input under the new settings"
    )
