"""The competition folder and what file names tell.

Everything here is pure and cheap; it runs before any audio is read, so a malformed metadata
file stops the run early with a message naming it.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamer.errors import ArtifactError

log = logging.getLogger(__name__)

#: ``BC2026_Test_0001_S05_20250227_010002`` → site ``S05``.
_SITE_RE = re.compile(r"^BC\d+_(Train|Test)_\d+_(S\d+)_")
#: Placeholder site of files whose names do not follow the competition pattern.
UNKNOWN_SITE = "S00"

#: What --data-dir must hold, for error messages.
COMPETITION_FOLDER_HINT = ("a competition folder holds sample_submission.csv, taxonomy.csv, train_soundscapes_labels.csv "
                           "and test_soundscapes/ with the recordings to score")
N_WINDOWS_PER_FILE = 12
WINDOW_S = 5
TAXONOMY_COLUMNS = ("primary_label", "inat_taxon_id", "scientific_name", "common_name", "class_name")
LABEL_COLUMNS = ("filename", "start", "end", "primary_label")


def file_stem(name: str) -> str:
    """File name without folder and without its last extension."""
    base = Path(name).name
    return base.rsplit(".", 1)[0] if "." in base else base


def parse_site(stem: str) -> str:
    """Site code of a competition file name, else :data:`UNKNOWN_SITE`."""
    match = _SITE_RE.match(stem)
    return match.group(2) if match else UNKNOWN_SITE


def parse_hour(stem: str) -> int:
    """UTC hour of a competition file name, else 0 (the original's behaviour, kept on purpose).

    The hour is the first two characters of the last ``_`` field when the stem has at least six
    fields and those characters are digits, taken mod 24.
    """
    fields = stem.split("_")
    if len(fields) >= 6:
        head = fields[-1][:2]
        if len(head) == 2 and head.isdigit():
            return int(head) % 24
    return 0


def _stem_order(path: Path) -> tuple[str, str]:
    return (file_stem(path.name), path.name)


def row_ids(stem: str, n_windows: int = N_WINDOWS_PER_FILE) -> list[str]:
    """``{stem}_5``, ``{stem}_10``, …: each window is named by its end second."""
    return [f"{stem}_{WINDOW_S * (i + 1)}" for i in range(n_windows)]


def _read_csv(path: Path, what: str):
    import pandas as pd

    if not path.is_file():
        raise ArtifactError(f"{path}: {what} not found")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise ArtifactError(f"{path}: cannot read {what} as CSV ({type(exc).__name__}: {exc})") from exc


def _hms_to_seconds(text: str) -> int:
    parts = text.strip().split(":")
    if not parts or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"not HH:MM:SS: {text!r}")
    seconds = 0
    for p in parts:
        seconds = seconds * 60 + int(p)
    return seconds


@dataclass(frozen=True)
class ClassLabels:
    """Each class's code, common name and scientific name, in output column order."""

    codes: tuple[str, ...]
    common: tuple[str, ...]
    scientific: tuple[str, ...]


@dataclass(frozen=True)
class Competition:
    """What the competition folder defines.

    Attributes:
        data_dir: the folder.
        classes: the 234 class codes in ``sample_submission.csv`` column order (the output's
            column order, and the order of every per-class vector in this package).
        class_names: scientific name of each class (from taxonomy), aligned with ``classes``.
        class_groups: taxonomic class (Aves, Amphibia, …) of each class, aligned with ``classes``.
        common_names: common name of each class (taxonomy's ``common_name``; the scientific
            name where the taxonomy has none), aligned with ``classes``.
        labels: the label matrix ``[n_files, 12, n_classes]`` (bool) of the labelled soundscapes.
        label_files: the stems of those files, aligned with ``labels``.
    """

    data_dir: Path
    classes: tuple[str, ...]
    class_names: tuple[str, ...]
    class_groups: tuple[str, ...]
    labels: np.ndarray
    label_files: tuple[str, ...]
    common_names: tuple[str, ...] = ()

    @property
    def class_labels(self) -> ClassLabels:
        return ClassLabels(self.classes, self.common_names or self.class_names, self.class_names)

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def audio_files(self, dry_run_files: int) -> tuple[list[Path], str]:
        """The files to score: every audio file in ``test_soundscapes/`` (any format soundfile
        reads, any case of extension) or, when it holds none, the first ``dry_run_files`` of
        ``train_soundscapes/`` (sorted by stem). Returns the list and which folder it came from.

        Raises:
            ArtifactError: ``test_soundscapes/`` holds files but none of them is audio (they
                would otherwise be ignored and the dry run scored instead).
        """
        from streamer.audio import find_audio

        test_dir = self.data_dir / "test_soundscapes"
        files, others = find_audio(test_dir) if test_dir.is_dir() else ([], [])
        if others:
            names = ", ".join(p.name for p in others[:5]) + (", ..." if len(others) > 5 else "")
            if not files:
                raise ArtifactError(
                    f"{test_dir}: holds {len(others)} file(s) but none is audio that soundfile can read ({names})"
                )
            log.warning("%s: ignoring %d file(s) that are not audio: %s", test_dir, len(others), names)
        if files:
            return sorted(files, key=_stem_order), "test_soundscapes"
        train_dir = self.data_dir / "train_soundscapes"
        if not train_dir.is_dir():
            return [], "nowhere: test_soundscapes/ is empty or missing and there is no train_soundscapes/ for a dry run"
        files = find_audio(train_dir)[0]
        return sorted(files, key=_stem_order)[: max(0, dry_run_files)], "train_soundscapes (dry run)"

    def site_index(self) -> dict[str, int]:
        """ProtoSSM site ids: sorted distinct sites of the labelled files numbered from 1."""
        sites = sorted({parse_site(stem) for stem in self.label_files})
        return {site: i + 1 for i, site in enumerate(sites)}


def load_competition(data_dir: str | Path, *, require_labels: bool = True) -> Competition:
    """Read ``sample_submission.csv``, ``taxonomy.csv`` and ``train_soundscapes_labels.csv``.

    Raises:
        ArtifactError: a file is missing or malformed; the message names it.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise ArtifactError(f"{data_dir}: competition folder not found ({COMPETITION_FOLDER_HINT})")
    if not (data_dir / "sample_submission.csv").is_file():
        from streamer.audio import find_audio

        n_audio = len(find_audio(data_dir)[0])
        hint = (f"; it holds {n_audio} audio file(s): to score recordings of your own, use 'streamer archive', "
                f"which needs the competition folder only for the class list and the prior") if n_audio else ""
        raise ArtifactError(f"{data_dir}: not a competition folder, no sample_submission.csv ({COMPETITION_FOLDER_HINT}){hint}")
    sample = _read_csv(data_dir / "sample_submission.csv", "sample submission")
    columns = list(sample.columns)
    if len(columns) < 2 or columns[0] != "row_id":
        raise ArtifactError(f"{data_dir / 'sample_submission.csv'}: expected 'row_id' followed by class columns, got {columns[:3]}")
    classes = tuple(columns[1:])
    if len(set(classes)) != len(classes):
        raise ArtifactError(f"{data_dir / 'sample_submission.csv'}: duplicate class columns")

    taxonomy = _read_csv(data_dir / "taxonomy.csv", "taxonomy")
    missing_cols = [c for c in ("primary_label", "scientific_name") if c not in taxonomy.columns]
    if missing_cols:
        raise ArtifactError(f"{data_dir / 'taxonomy.csv'}: missing columns {missing_cols}")
    tax = {row.primary_label: row for row in taxonomy.itertuples(index=False)}
    absent = [c for c in classes if c not in tax]
    if absent:
        raise ArtifactError(
            f"{data_dir / 'taxonomy.csv'}: {len(absent)} sample_submission classes are not in the taxonomy, e.g. {absent[:5]}"
        )
    class_names = tuple(str(tax[c].scientific_name) for c in classes)
    class_groups = tuple(str(getattr(tax[c], "class_name", "")) for c in classes)
    common_names = tuple(_text(getattr(tax[c], "common_name", None)) or class_names[i] for i, c in enumerate(classes))

    labels_path = data_dir / "train_soundscapes_labels.csv"
    if labels_path.is_file() or require_labels:
        labels, label_files = read_label_matrix(labels_path, classes)
    else:
        labels, label_files = np.zeros((0, N_WINDOWS_PER_FILE, len(classes)), dtype=bool), ()
    return Competition(
        data_dir=data_dir,
        classes=classes,
        class_names=class_names,
        class_groups=class_groups,
        labels=labels,
        label_files=label_files,
        common_names=common_names,
    )


def _text(value) -> str:
    """A CSV cell as text; empty for a missing value (pandas reads it as NaN)."""
    return "" if value is None or (isinstance(value, float) and value != value) else str(value).strip()


def read_label_matrix(path: Path, classes: tuple[str, ...]) -> tuple[np.ndarray, tuple[str, ...]]:
    """Label matrix of the labelled soundscapes.

    Rows are grouped by (file, end second) and their label sets unioned, so the real file's
    duplicated rows are harmless; window ``w`` is the one ending at second ``5·(w+1)``; windows
    without a row are negative; labels outside ``classes`` are dropped.

    Returns:
        bool ``[n_files, 12, n_classes]`` and the file stems in sorted order.
    """
    table = _read_csv(path, "training soundscape labels")
    missing_cols = [c for c in LABEL_COLUMNS if c not in table.columns]
    if missing_cols:
        raise ArtifactError(f"{path}: missing columns {missing_cols} (expected {', '.join(LABEL_COLUMNS)})")
    col_index = {c: i for i, c in enumerate(classes)}
    stems = sorted({file_stem(f) for f in table["filename"] if f})
    file_index = {s: i for i, s in enumerate(stems)}
    matrix = np.zeros((len(stems), N_WINDOWS_PER_FILE, len(classes)), dtype=bool)
    for line_no, row in enumerate(table.itertuples(index=False), start=2):
        if not row.filename:
            continue
        try:
            end_s = _hms_to_seconds(row.end)
        except ValueError as exc:
            raise ArtifactError(f"{path}, line {line_no}: bad end time ({exc})") from exc
        window = end_s // WINDOW_S - 1
        if end_s % WINDOW_S != 0 or not 0 <= window < N_WINDOWS_PER_FILE:
            continue  # not one of the 12 scored windows
        f = file_index[file_stem(row.filename)]
        for label in str(row.primary_label).split(";"):
            c = col_index.get(label.strip())
            if c is not None:
                matrix[f, window, c] = True
    return matrix, tuple(stems)
