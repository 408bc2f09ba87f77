"""``streamer check``: the checks ``infer`` makes before it reads any audio, on their own.

Downloading the competition data, the Perch 2.0 ONNX folder and the MoE bundle by hand leaves
many ways to be wrong (a label list of another export, a fold missing, a student checkpoint of
another run, a competition folder without its labels). ``infer`` finds each of them before any
process starts, but only once a run is attempted, on a machine that may be Kaggle's. This runs
the same checks (:func:`streamer.stages.prepare`, then the parent's loading of the ProtoSSM
folds and the students' checkpoints, as :func:`streamer.run.run_infer` does) and says what it
found: files, sizes and SHA-256 prefixes (to compare with a published checksum or another
machine), class counts and the classes matched in Perch's label list. It reads no audio
samples and loads no ONNX weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from streamer.config import InferConfig

#: SHA-256 characters shown (the full digest is in ``CheckReport.files``).
HASH_CHARS = 12


@dataclass
class CheckReport:
    """What was found. ``files``: ``{role: {"path", "size", "sha256"}}``."""

    lines: list[str] = field(default_factory=list)
    files: dict[str, dict] = field(default_factory=dict)

    def text(self) -> str:
        return "\n".join(self.lines)


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 1e6:.1f} MB" if n_bytes >= 1e6 else f"{n_bytes / 1e3:.1f} kB"


def _file_line(report: CheckReport, role: str, path: Path) -> str:
    """One file: name, size and SHA-256 prefix; recorded under ``role``."""
    from streamer.validate.cache import sha256_file

    path = Path(path)
    size = path.stat().st_size
    digest = sha256_file(path)
    report.files[role] = {"path": str(path.resolve()), "size": size, "sha256": digest}
    return f"  {path.name}  {_size(size)}  sha256 {digest[:HASH_CHARS]}"


def _label_output(onnx_path: Path, n_labels: int) -> str:
    """What the ONNX file declares about its ``label`` output, against the label list."""
    from streamer.onnx_outputs import declared_outputs

    outputs = declared_outputs(onnx_path)
    label = next((o for o in outputs if o.name == "label"), outputs[3] if len(outputs) > 3 else None)
    width = label.shape[-1] if label is not None and label.shape else None
    if isinstance(width, int) and width > 0:
        return f"label output {width} wide, as the label list has {n_labels} rows"
    return f"label list of {n_labels} rows (the label output's width is not declared: checked when a model loads)"


def check_artifacts(config: InferConfig) -> CheckReport:
    """Run every check ``infer`` makes before reading audio, and describe what was found.

    Raises:
        ArtifactError, ConfigError: the first problem, naming the file (as ``infer`` would).
    """
    from streamer.artifacts import resolve_perch_labels
    from streamer.stages import Reducer, check_members, prepare

    plan = prepare(config)
    reducer = Reducer(plan.reducer)  # loads the heads (the ProtoSSM folds), as infer's parent does
    check_members(plan.model)

    report = CheckReport()
    out = report.lines
    competition = plan.competition
    n_classes = competition.n_classes
    data_dir = Path(config.artifacts.data_dir)
    sites = plan.reducer.site_index
    bound = plan.recipe
    out.append(f"recipe       {bound.recipe.source}: {bound.recipe.name!r}, members "
               + ", ".join(f"{name} (weight {w[0]:g})" for name, w in plan.reducer.members)
               + (f"; heads {', '.join(reducer.heads)}" if reducer.heads else "")
               + "".join(f"; {name} left out: {why}" for name, why in bound.dropped))
    out.append(f"competition  {data_dir}: {n_classes} classes; {len(competition.label_files)} labelled soundscapes at "
               f"{len(sites)} sites; infer would score {len(plan.jobs)} file(s) from {plan.source}")
    for role, name in (("sample_submission", "sample_submission.csv"), ("taxonomy", "taxonomy.csv"),
                       ("labels", "train_soundscapes_labels.csv")):
        out.append(_file_line(report, role, data_dir / name))

    if plan.model.onnx_path is not None:
        labels_path = resolve_perch_labels(plan.model.onnx_path, config.artifacts.perch_labels)
        out.append(f"perch        {plan.model.onnx_path}: {_label_output(plan.model.onnx_path, plan.model.n_perch_labels)}; "
                   f"{plan.n_matched_classes} of {n_classes} classes matched by scientific name (the other "
                   f"{n_classes - plan.n_matched_classes} get a constant logit)")
        out.append(_file_line(report, "perch_onnx", plan.model.onnx_path))
        out.append(_file_line(report, "perch_labels", labels_path))

    for m in plan.model.members:
        for path in m.paths:
            out.append(_file_line(report, m.name, path))
    for name, folds in reducer.heads.items():
        widths = sorted({int(f.pos_enc.shape[-1]) for f in folds.folds})
        out.append(f"head         {name}: {len(folds.folds)} ProtoSSM folds (d_model {', '.join(map(str, widths))}, "
                   f"{n_classes} classes, {folds.n_site_slots} site slots)")
        for k, path in enumerate(bound.heads[name].paths, start=1):
            out.append(_file_line(report, f"{name}.fold{k}", path))
        if len(sites) + 1 > folds.n_site_slots:
            out.append(f"  note: the labels name {len(sites)} sites but the folds have {folds.n_site_slots} site slots: "
                       f"sites numbered {folds.n_site_slots} and above are scored as unknown")
    out.append("ok: every check infer makes before reading audio passed")
    return report
