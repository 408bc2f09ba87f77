"""Finding and checking the model artifacts, before any audio is read.

Nothing here imports onnxruntime or torch: this module only resolves paths and reads the label
list, so a wrong path fails in milliseconds with a message that names the file and what was
expected. Loading the networks themselves is :mod:`streamer.models`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path


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



@dataclass(frozen=True)
class PerchArtifacts:
    onnx_path: Path
    labels_path: Path
    labels: tuple[str, ...]


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
