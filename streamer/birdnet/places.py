"""Places and BirdNET's range model, for any run whose classes have scientific names.

:class:`Location` is a place, a week and a threshold; :func:`range_species` the range model's
kept species there (BirdNET-Analyzer's list); :func:`perch_keep` carries that list over to
Perch's own labels by scientific name (names BirdNET does not know pass through).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from streamer.errors import ConfigError


@dataclass(frozen=True)
class Location:
    """A place and week for the range model (``week`` -1: the whole year) and its threshold."""

    lat: float
    lon: float
    week: int = -1
    threshold: float = 0.03

    def describe(self) -> str:
        when = "the whole year" if self.week == -1 else f"week {self.week}"
        return f"{self.lat:g}, {self.lon:g}, {when}, range-model score >= {self.threshold:g}"


def range_species(range_model: Path, labels: list[tuple[str, str]], where: Location) -> list[int]:
    """The range model's kept species at ``where``, highest score first (BirdNET-Analyzer's)."""
    from streamer.birdnet.range import RangeModel

    model = RangeModel(range_model)
    model._check_labels(labels)
    kept = model.species_list(where.lat, where.lon, where.week, where.threshold)
    if not kept:
        raise ConfigError(f"the range model keeps no species at {where.describe()}; lower --sf-thresh, or drop --lat/--lon")
    return kept


def perch_keep(perch_labels: tuple[str, ...], location: Location, birdnet_dir: Path | None) -> tuple[tuple[int, ...], tuple[str, ...], str]:
    """Perch's label positions kept by the range model at ``location`` (by scientific name;
    names BirdNET does not know pass through), the BirdNET list to write, and a note."""
    from streamer.birdnet.files import LABELS_FILE, RANGE_MODEL_FILE, find_model_dir, read_labels
    from streamer.birdnet.range import by_scientific_name

    folder = find_model_dir(birdnet_dir)
    labels = read_labels(folder / LABELS_FILE)
    ranked = range_species(folder / RANGE_MODEL_FILE, labels, location)
    verdict = by_scientific_name(ranked, labels, list(perch_labels))
    keep = tuple(i for i, v in enumerate(verdict) if v is not False)
    passed = sum(v is None for v in verdict)
    note = (f"{len(keep)} of Perch's {len(perch_labels)} labels at {location.describe()} "
            f"({len(keep) - passed} kept by BirdNET's range model, {passed} unknown to it passed through)")
    return keep, tuple(f"{labels[i][0]}_{labels[i][1]}" for i in ranked), note
