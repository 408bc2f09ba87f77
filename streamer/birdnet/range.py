"""BirdNET 2.4's species-range model: which species to expect at a place in a week of the year.

The model (``BirdNET_GLOBAL_6K_V2.4_MData_Model_V2_FP16.tflite``) takes one float32 row
``[latitude, longitude, week]`` and gives a score in [0, 1] for each of BirdNET's 6,522 classes, in
the label list's order: an estimate of the share of eBird checklists that report the species
there in that week. ``week`` is BirdNET's week (1..48, four to a month, :func:`week_of`) or -1
for the whole year.

The species list is what BirdNET-Analyzer 2.4.0 makes of those scores (its ``species`` command,
and its ``analyze`` with ``--lat/--lon``): the classes whose score is at least the threshold
(``>=``, default 0.03), by score from high to low with ties in label order, or sorted by their
``Scientific_Common`` label. The model runs as the peer runs it, on the built-in kernels without
the default (XNNPACK) delegate; LiteRT's kernels are not TensorFlow 2.21's to the bit, but the
scores agree within 4e-7 (XNNPACK's within 2e-6), and the peer's lists for the Jura (47.3, 7.0,
week 21), Ithaca (42.48, -76.45, all year) and the Pantanal (-16.5, -56.7, week 10) come out
the same line for line in both orders. Only a score within about 1e-6 of the threshold could
fall on the other side of it.

Unlike the peer, (-1, -1) is a place here like any other: the peer's ``analyze`` reads
``--lat -1 --lon -1`` as "no place given", this module is only called with a place.

Another model's classes can be filtered by the same list through their scientific names
(:func:`by_scientific_name`); classes BirdNET does not know pass through unfiltered.
"""

from __future__ import annotations

import datetime as _dt
import math
import numbers
from pathlib import Path
from typing import Iterable, Literal, Sequence

import numpy as np

from streamer.birdnet.files import label_line
from streamer.errors import ArtifactError, ConfigError, DependencyError
from streamer.files import atomic_write_text

#: BirdNET's weeks: 1..48, four to a month; -1 asks for the whole year.
FIRST_WEEK, LAST_WEEK, ALL_YEAR = 1, 48, -1
#: The peer's default ``--sf_thresh``.
DEFAULT_THRESHOLD = 0.03
#: The thresholds the peer's command line accepts (it clamps to them; here, others are an error).
MIN_THRESHOLD, MAX_THRESHOLD = 0.0001, 0.99
#: The peer's species-list file name when it is given a folder.
SPECIES_LIST_FILE = "species_list.txt"

Order = Literal["freq", "alpha"]


def _import_interpreter():
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError as exc:
        raise DependencyError(
            f"BirdNET's range model needs LiteRT ({exc}): pip install \"birdclef-streamer[birdnet]\""
        ) from exc
    return Interpreter, OpResolverType


def _real(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{what} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ConfigError(f"{what} must be finite, got {value}")
    return value


def check_query(lat, lon, week) -> tuple[float, float, int]:
    """``(lat, lon, week)`` checked: latitude in [-90, 90], longitude in [-180, 180], week an
    integer in 1..48 or -1 (the whole year). Raises :class:`ConfigError` (one line) otherwise.

    The peer itself checks none of these (its model extrapolates silently); the ranges are those
    its documentation and the BirdNET team's ``birdnet`` package give."""
    lat = _real(lat, "latitude")
    lon = _real(lon, "longitude")
    if not -90.0 <= lat <= 90.0:
        raise ConfigError(f"latitude {lat:g} is outside [-90, 90]")
    if not -180.0 <= lon <= 180.0:
        raise ConfigError(f"longitude {lon:g} is outside [-180, 180]")
    if isinstance(week, bool) or not isinstance(week, numbers.Integral):
        raise ConfigError(f"week must be an integer in 1..48 or -1 (all year), got {week!r}")
    week = int(week)
    if week != ALL_YEAR and not FIRST_WEEK <= week <= LAST_WEEK:
        raise ConfigError(f"week {week} is outside 1..48 (use -1 for all year)")
    return lat, lon, week


def check_threshold(threshold) -> float:
    """The species-list threshold, checked to lie in the peer's range [0.0001, 0.99]."""
    threshold = _real(threshold, "species-list threshold")
    if not MIN_THRESHOLD <= threshold <= MAX_THRESHOLD:
        raise ConfigError(f"species-list threshold {threshold:g} is outside [{MIN_THRESHOLD:g}, {MAX_THRESHOLD:g}]")
    return threshold


def week_of(date: _dt.date) -> int:
    """BirdNET's week (1..48) of a calendar date: four weeks to a month, split as eBird's bar
    charts split it (days 1-7, 8-14, 15-21, 22 to the month's end), the weekly eBird checklist
    frequencies the range model was trained on. A ``datetime`` counts by its own calendar date
    (convert it to the recording's local time first)."""
    if not isinstance(date, _dt.date):
        raise ConfigError(f"week_of needs a date, got {date!r}")
    return (date.month - 1) * 4 + min(4, (date.day - 1) // 7 + 1)


def order_by_score(kept: Iterable[int], scores: np.ndarray) -> list[int]:
    """``kept`` by score from high to low, ties in label order (the peer's stable sort)."""
    return sorted(kept, key=lambda i: (-float(scores[i]), i))


def order_by_label(kept: Iterable[int], labels: Sequence[tuple[str, str]]) -> list[int]:
    """``kept`` sorted by their ``Scientific_Common`` label (code-point order, as the peer's
    ``--sortby alpha`` sorts the label lines)."""
    return sorted(kept, key=lambda i: (label_line(labels[i]), i))


class RangeModel:
    """BirdNET 2.4's species-range model, loaded once (a few ms) and queried per place and week.

    Args:
        path: the ``.tflite`` file (``files.find_model_dir(...) / files.RANGE_MODEL_FILE``).
        threads: LiteRT's threads (the peer's default is 1; one query is tiny).
    """

    def __init__(self, path: str | Path, threads: int = 1) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ArtifactError(f"{self.path}: BirdNET range model not found")
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ConfigError(f"range-model threads must be a positive integer, got {threads!r}")
        Interpreter, OpResolverType = _import_interpreter()
        try:
            self._interpreter = Interpreter(
                model_path=str(self.path),
                num_threads=threads,
                experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
            )
            self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ArtifactError(f"{self.path}: not a loadable LiteRT model ({exc})") from exc
        inputs = self._interpreter.get_input_details()
        outputs = self._interpreter.get_output_details()
        if len(inputs) != 1 or int(inputs[0]["shape"][-1]) != 3 or len(outputs) < 1:
            raise ArtifactError(f"{self.path}: not a BirdNET range model (expects one [lat, lon, week] input)")
        self._input = inputs[0]["index"]
        self._output = outputs[0]["index"]
        self.n_classes = int(outputs[0]["shape"][-1])

    def scores(self, lat: float, lon: float, week: int) -> np.ndarray:
        """The model's score for each class (float32, label order) at ``(lat, lon)`` in ``week``
        (1..48, or -1 for the whole year). Out-of-range values raise :class:`ConfigError`."""
        lat, lon, week = check_query(lat, lon, week)
        row = np.array([[lat, lon, week]], dtype=np.float32)
        self._interpreter.set_tensor(self._input, row)
        self._interpreter.invoke()
        return np.array(self._interpreter.get_tensor(self._output)[0], dtype=np.float32, copy=True)

    def species_list(
        self,
        lat: float,
        lon: float,
        week: int,
        threshold: float = DEFAULT_THRESHOLD,
        order: Order = "freq",
        labels: Sequence[tuple[str, str]] | None = None,
    ) -> list[int]:
        """The classes expected at the place in the week: indices whose score is ``>=
        threshold``, by score (``order="freq"``, high to low, ties in label order) or by label
        (``order="alpha"``, needs ``labels``) -- the peer's two orders."""
        threshold = check_threshold(threshold)
        scores = self.scores(lat, lon, week)
        kept = np.flatnonzero(scores >= threshold).tolist()
        if order == "freq":
            return order_by_score(kept, scores)
        if order == "alpha":
            if labels is None:
                raise ConfigError("an alphabetical species list needs the label list")
            self._check_labels(labels)
            return order_by_label(kept, labels)
        raise ConfigError(f"species-list order must be 'freq' or 'alpha', got {order!r}")

    def _check_labels(self, labels: Sequence) -> None:
        if len(labels) != self.n_classes:
            raise ArtifactError(
                f"{self.path}: the range model scores {self.n_classes} classes, the label list has {len(labels)}"
            )


def _normalise_name(name: str) -> str:
    return " ".join(name.split()).casefold()


def by_scientific_name(
    kept: Iterable[int], labels: Sequence[tuple[str, str]], other_names: Sequence[str]
) -> list[bool | None]:
    """BirdNET's species list carried over to another model's classes (Perch's, say) by
    scientific name, compared case-insensitively with runs of whitespace made one space.

    For each name in ``other_names``: True when BirdNET kept that species, False when BirdNET
    knows it but did not keep it, None when BirdNET does not know the name (no bird at all,
    another taxonomy's name, an insect): such classes are not for the range model to judge and
    pass through unfiltered -- treat None as True when masking."""
    known: dict[str, bool] = {}
    for scientific, _common in labels:
        known.setdefault(_normalise_name(scientific), False)
    for index in kept:
        known[_normalise_name(labels[index][0])] = True
    return [known.get(_normalise_name(name)) for name in other_names]


def write_species_list(
    path: str | Path,
    kept: Iterable[int],
    labels: Sequence[tuple[str, str]],
    alphabetical: bool = False,
) -> Path:
    """Write a species list as the peer writes one: a ``Scientific_Common`` line per species,
    each ending in a newline, nothing else (an empty list is an empty file). The file is
    written atomically (a temporary sibling renamed into place) with the mode a plain ``open``
    gives under the umask.

    ``path`` is the file, or a folder to write ``species_list.txt`` into. ``kept`` is written
    in its own order (:meth:`RangeModel.species_list` gives either of the peer's), or sorted by
    label when ``alphabetical``. Returns the file written.

    Note the peer's ``analyze --slist`` reads an empty list as "no filter", not "no species"."""
    kept = list(kept)
    for index in kept:
        if isinstance(index, bool) or not isinstance(index, numbers.Integral) or not 0 <= index < len(labels):
            raise ConfigError(f"species index {index!r} is not one of the {len(labels)} labels")
    if alphabetical:
        kept = order_by_label(kept, labels)
    path = Path(path)
    if path.is_dir():
        path = path / SPECIES_LIST_FILE
    text = "".join(label_line(labels[i]) + "\n" for i in kept)
    return atomic_write_text(path, text)


__all__ = [
    "ALL_YEAR",
    "DEFAULT_THRESHOLD",
    "RangeModel",
    "by_scientific_name",
    "check_query",
    "check_threshold",
    "order_by_label",
    "order_by_score",
    "week_of",
    "write_species_list",
]
