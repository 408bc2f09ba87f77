"""Which species an archive scores: a species list, or BirdNET's range model at a place and week.

BirdNET users ask first for "only the birds that live here": BirdNET-Analyzer's ``--lat --lon
--week`` runs its range model and keeps the species whose score is at least ``--sf_thresh``
(0.03); ``--slist`` names them in a file instead. The archive does the same, before any audio
is read: the kept species become the output's columns (in the label list's order), and the
kept list is written beside the outputs as ``_species_list.txt`` (the range model's order,
highest score first; one ``Scientific_Common`` line each, the format ``--slist`` reads).

For Perch's own labels (``--labels perch``) the BirdNET list is carried over by scientific
name: a Perch class BirdNET kept stays, one BirdNET knows but did not keep goes, and one
BirdNET does not know (an insect, a frog, another taxonomy's name) passes through.
"""

from __future__ import annotations

from pathlib import Path

from streamer.birdnet.places import Location, range_species
from streamer.errors import ConfigError

__all__ = ["Location", "PlaceFilter", "own_classes_plan", "read_names", "range_species"]

#: The kept list's file in the output folder (a leading underscore, as the folder's other tables).
SPECIES_FILE = "_species_list.txt"


def read_names(path: Path, scientific: tuple[str, ...], common: tuple[str, ...]) -> tuple[int, ...]:
    """Label positions of the names in a species-list file: ``Scientific_Common`` lines (the
    label file's own, BirdNET-Analyzer's ``--slist``) or scientific names
    (:func:`streamer.stages.read_species_list`).

    Raises:
        ConfigError: unreadable, empty, or an unknown name (with the closest ones).
    """
    from streamer.stages import read_species_list

    index: dict[str, int] = {}
    for i, (s, c) in enumerate(zip(scientific, common)):
        index.setdefault(f"{s}_{c}", i)
        index.setdefault(s, i)
    return read_species_list(path, index, what="the model's label list")


def own_classes_plan(config, recipe, *, species_list: Path | None = None, location: Location | None = None):
    """The plan of a recipe of its model's own labels, its columns narrowed by a species list
    or the range model (:func:`streamer.stages.prepare_own_classes`); with a location, the plan
    carries the kept list to write beside the outputs."""
    from dataclasses import replace

    from streamer.recipes.bind import bind_litert
    from streamer.stages import litert_roots, prepare_own_classes

    if species_list is None and location is None:
        return prepare_own_classes(config, recipe)
    front = bind_litert(recipe, litert_roots(recipe, config))
    if front is None:
        raise ConfigError(f"recipe {recipe.name!r} has no LiteRT front-end to take a species list for")
    labels = list(zip(front.scientific, front.common))
    if species_list is not None:
        keep = read_names(species_list, front.scientific, front.common)
        note = f"{len(keep)} of {len(labels)} species, from {species_list}"
        return prepare_own_classes(config, recipe, keep=tuple(sorted(keep)), keep_note=note, front=front)
    if front.range_model is None:
        raise ConfigError(f"--lat/--lon: recipe {recipe.name!r} names no range model (frontends.{front.name}.range_model)")
    ranked = range_species(front.range_model, labels, location)
    note = f"{len(ranked)} of {len(labels)} species at {location.describe()}"
    plan = prepare_own_classes(config, recipe, keep=tuple(sorted(ranked)), keep_note=note, front=front)
    return replace(plan, species=tuple(f"{labels[i][0]}_{labels[i][1]}" for i in ranked))




class PlaceFilter:
    """Each recording's own species list (``--range-from-metadata``): the range model at the
    recording's place (the metadata CSV's ``lat,lon``) in the week of its start (or ``--week``),
    as a mask over the run's columns, matched by scientific name (BirdNET's own labels match
    one to one; for Perch's, names BirdNET does not know stay). Lists are computed once per
    place and week. A recording without a place keeps every column."""

    def __init__(self, scientific: tuple[str, ...], threshold: float, week: int | None, birdnet_dir: Path | None,
                 range_model: Path | None = None) -> None:
        from streamer.birdnet.files import LABELS_FILE, RANGE_MODEL_FILE, find_model_dir, read_labels
        from streamer.birdnet.range import RangeModel, check_threshold

        folder = find_model_dir(birdnet_dir) if range_model is None else Path(range_model).parent
        self.labels = read_labels(folder / LABELS_FILE)
        self.model = RangeModel(range_model if range_model is not None else folder / RANGE_MODEL_FILE)
        self.model._check_labels(self.labels)
        self.scientific = tuple(scientific)
        self.threshold = check_threshold(threshold)
        self.week = week
        self._cache: dict[tuple, tuple] = {}

    def week_of(self, when) -> int:
        from streamer.birdnet.range import week_of

        if self.week is not None:
            return self.week
        return week_of(when.start_utc.date()) if when.start_utc is not None else -1

    def mask(self, when):
        """``(mask over the columns, the kept BirdNET species in the model's order, week)`` of a
        recording, or ``None`` when it has no place."""
        import numpy as np

        from streamer.birdnet.range import by_scientific_name

        if when.lat is None or when.lon is None:
            return None
        week = self.week_of(when)
        key = (when.lat, when.lon, week)
        if key not in self._cache:
            kept = self.model.species_list(when.lat, when.lon, week, self.threshold)
            verdict = by_scientific_name(kept, self.labels, list(self.scientific))
            self._cache[key] = (np.array([v is not False for v in verdict], dtype=bool), tuple(kept), week)
        return self._cache[key]

    def rows(self, recording: str, when) -> list[str]:
        """The recording's lines of ``_species_lists.csv``."""
        got = self.mask(when)
        if got is None:
            return []
        _, kept, week = got
        return [",".join(_csv_field(v) for v in (recording, f"{when.lat:g}", f"{when.lon:g}", str(week),
                                                 self.labels[i][0], self.labels[i][1])) for i in kept]


#: Per-recording lists (``--range-from-metadata``), one row per recording and species kept.
SPECIES_LISTS_FILE = "_species_lists.csv"
SPECIES_LISTS_HEADER = "recording,lat,lon,week,scientific_name,common_name"


def _csv_field(value: str) -> str:
    return '"' + value.replace('"', '""') + '"' if any(c in value for c in ',"\n') else value
