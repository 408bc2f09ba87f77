"""Finding and checking the model artifacts, before any audio is read.

Nothing here imports onnxruntime or torch: this module only resolves paths and reads the label
list, so a wrong path fails in milliseconds with a message that names the file and what was
expected. Loading the networks themselves is :mod:`streamer.models`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamer.errors import ArtifactError

log = logging.getLogger(__name__)

#: File names of the Perch 2.0 ONNX exports, in order of preference inside a folder.
PERCH_ONNX_NAMES = ("perch_v2.onnx", "perch_v2_ir9.onnx", "perch_v2_no_dft.onnx")
#: Where the label list is looked for, relative to the ONNX file's folder.
PERCH_LABEL_CANDIDATES = ("labels.csv", "perch_v2_labels.csv", "assets/labels.csv")
#: Header names of the label column, in order of preference; otherwise the first column.
PERCH_LABEL_HEADERS = ("inat2024_fsd50k", "scientific_name")
#: The 234 classes that have no Perch label get this constant logit.
UNMATCHED_LOGIT = -8.0

_FOLD_RE = re.compile(r"^(?P<prefix>.+)_fold(?P<fold>\d+)\.pt$")
STUDENT_GLOBS = {"cnn": "student_cnn*.pt", "crnn": "student_crnn*.pt"}


@dataclass(frozen=True)
class PerchArtifacts:
    onnx_path: Path
    labels_path: Path
    labels: tuple[str, ...]


@dataclass(frozen=True)
class MoEArtifacts:
    """Resolved MoE bundle. Student paths are ``None`` when absent (the blend renormalises)."""

    prefix: str
    fold_paths: tuple[Path, ...]
    cnn_path: Path | None
    crnn_path: Path | None


def resolve_perch_onnx(path: str | Path) -> Path:
    """An ONNX file, or a folder holding one of :data:`PERCH_ONNX_NAMES`."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        for name in PERCH_ONNX_NAMES:
            if (path / name).is_file():
                return path / name
        others = sorted(path.glob("*.onnx"))
        if len(others) == 1:
            return others[0]
        hint = f"; found {[p.name for p in others]}, pass the file itself" if others else ""
        raise ArtifactError(f"{path}: no Perch ONNX file (looked for {', '.join(PERCH_ONNX_NAMES)}){hint}")
    raise ArtifactError(f"{path}: Perch ONNX file or folder not found")


def resolve_perch_labels(onnx_path: Path, labels: str | Path | None = None) -> Path:
    """The label list: the explicit path, else the first of :data:`PERCH_LABEL_CANDIDATES`."""
    if labels is not None:
        labels = Path(labels)
        if not labels.is_file():
            raise ArtifactError(f"{labels}: Perch label list not found")
        return labels
    folder = onnx_path.parent
    for name in PERCH_LABEL_CANDIDATES:
        if (folder / name).is_file():
            return folder / name
    looked = ", ".join(str(folder / n) for n in PERCH_LABEL_CANDIDATES)
    raise ArtifactError(f"{onnx_path}: no Perch label list beside it (looked for {looked}); pass --perch-labels")


def read_perch_labels(path: Path) -> tuple[str, ...]:
    """Names in logit order: the ``inat2024_fsd50k`` (or ``scientific_name``) column, else the first."""
    import pandas as pd

    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise ArtifactError(f"{path}: cannot read the Perch label list ({type(exc).__name__}: {exc})") from exc
    if table.shape[1] == 0 or table.shape[0] == 0:
        raise ArtifactError(f"{path}: the Perch label list is empty (expected a header row and one row per logit)")
    column = next((c for c in PERCH_LABEL_HEADERS if c in table.columns), table.columns[0])
    return tuple(str(v) for v in table[column])


def resolve_perch(path: str | Path, labels: str | Path | None = None) -> PerchArtifacts:
    onnx_path = resolve_perch_onnx(path)
    labels_path = resolve_perch_labels(onnx_path, labels)
    perch = PerchArtifacts(onnx_path=onnx_path, labels_path=labels_path, labels=read_perch_labels(labels_path))
    check_perch_outputs(perch)
    return perch


def check_perch_outputs(perch: PerchArtifacts) -> None:
    """Check the ONNX file's declared outputs against the label list, without loading the
    model (:mod:`streamer.onnx_outputs`): it must be an ONNX model, declare the ``label``
    output (by name, else the fourth output, as :class:`~streamer.models.perch.PerchModel`
    finds it), and, where its width is static, as many logits as the list has rows.

    Raises:
        ArtifactError: naming the file.
    """
    from streamer.onnx_outputs import OnnxFormatError, declared_outputs

    try:
        outputs = declared_outputs(perch.onnx_path)
    except (OnnxFormatError, OSError) as exc:
        raise ArtifactError(f"{perch.onnx_path}: not a readable ONNX model ({exc})") from exc
    by_name = {o.name: o for o in outputs}
    label = by_name.get("label") or (outputs[3] if len(outputs) > 3 else None)
    if label is None:
        raise ArtifactError(
            f"{perch.onnx_path}: no 'label' output (outputs: {[o.name for o in outputs]}); is it the Perch 2.0 export?"
        )
    width = label.shape[-1] if label.shape else None
    if isinstance(width, int) and width > 0 and width != len(perch.labels):
        raise ArtifactError(
            f"{perch.onnx_path}: the model gives {width} logits but the label list has {len(perch.labels)} rows "
            f"({perch.labels_path})"
        )


def class_mapping(class_names: tuple[str, ...] | list[str], perch_labels: tuple[str, ...] | list[str]) -> np.ndarray:
    """Index of each class's scientific name in the Perch label list, −1 where absent.

    Exact string equality; a name listed twice maps to its first row.
    """
    first: dict[str, int] = {}
    for i, name in enumerate(perch_labels):
        first.setdefault(name, i)
    return np.array([first.get(name, -1) for name in class_names], dtype=np.int64)


def map_perch_logits(logits: np.ndarray, mapping: np.ndarray, fill: float = UNMATCHED_LOGIT) -> np.ndarray:
    """``[N, n_perch_labels]`` → ``[N, n_classes]`` float32, unmatched classes set to ``fill``."""
    out = logits[:, np.maximum(mapping, 0)].astype(np.float32, copy=True)
    out[:, mapping < 0] = np.float32(fill)
    return out


def _discover_prefix(moe_dir: Path) -> str:
    prefixes = sorted({m.group("prefix") for p in moe_dir.glob("*_fold*.pt") if (m := _FOLD_RE.match(p.name))})
    if not prefixes:
        raise ArtifactError(f"{moe_dir}: no ProtoSSM fold files (expected '<prefix>_fold1.pt' … '<prefix>_fold4.pt')")
    if len(prefixes) > 1:
        raise ArtifactError(f"{moe_dir}: several fold prefixes {prefixes}; choose one with --weights-prefix")
    return prefixes[0]


def _resolve_student(moe_dir: Path, kind: str, explicit: str | Path | None, enabled: bool) -> Path | None:
    if not enabled:
        return None
    if explicit is not None:
        explicit = Path(explicit)
        if not explicit.is_file():
            raise ArtifactError(f"{explicit}: student {kind.upper()} checkpoint not found")
        return explicit
    found = sorted(moe_dir.glob(STUDENT_GLOBS[kind]))
    if len(found) > 1:
        raise ArtifactError(
            f"{moe_dir}: several student {kind.upper()} checkpoints {[p.name for p in found]}; choose one with --{kind}"
        )
    if not found:
        log.warning("%s: no student %s checkpoint (%s); the blend renormalises without it", moe_dir, kind.upper(), STUDENT_GLOBS[kind])
        return None
    return found[0]


def resolve_moe(
    moe_dir: str | Path,
    *,
    weights_prefix: str | None = None,
    n_folds: int = 4,
    cnn: str | Path | None = None,
    crnn: str | Path | None = None,
    use_cnn: bool = True,
    use_crnn: bool = True,
) -> MoEArtifacts:
    """Resolve the fold files and the students of the MoE bundle.

    The fold prefix is discovered from the files (the original script's default prefix did not
    match the released bundle) unless ``weights_prefix`` is given. All ``n_folds`` folds must be
    there; students may be missing.
    """
    moe_dir = Path(moe_dir)
    if not moe_dir.is_dir():
        raise ArtifactError(f"{moe_dir}: MoE folder not found")
    prefix = weights_prefix if weights_prefix else _discover_prefix(moe_dir)
    fold_paths = tuple(moe_dir / f"{prefix}_fold{k}.pt" for k in range(1, n_folds + 1))
    missing = [str(p) for p in fold_paths if not p.is_file()]
    if missing:
        raise ArtifactError(f"missing ProtoSSM fold file(s): {', '.join(missing)} (all {n_folds} folds are required)")
    return MoEArtifacts(
        prefix=prefix,
        fold_paths=fold_paths,
        cnn_path=_resolve_student(moe_dir, "cnn", cnn, use_cnn),
        crnn_path=_resolve_student(moe_dir, "crnn", crnn, use_crnn),
    )
