"""Where and when a recording was made: the site and the UTC hour of each 60-s chunk.

Sources, in order: a metadata CSV row for the file (``path,site,start``, optionally ``lat,lon``:
where it was recorded, for BirdNET's range model), the competition file
name pattern (``BC2026_Train_0001_S05_20250227_010002``), the ``--site`` / ``--start-utc``
options, else unknown (site ``S00``, hour 0, as the Kaggle path treats unparsable names). With a
known start time every chunk gets the hour of its own start, so a 10-hour file crosses hours.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from streamer.errors import ConfigError
from streamer.metadata import UNKNOWN_SITE

_NAME_RE = re.compile(r"^BC\d+_(?:Train|Test)_\d+_(S\d+)_(\d{8})_(\d{6})$")


@dataclass(frozen=True)
class RecordingTime:
    """A recording's site and start (``None`` when unknown)."""

    site: str = UNKNOWN_SITE
    start_utc: datetime | None = None
    lat: float | None = None
    lon: float | None = None

    def hour_at(self, offset_s: float) -> int:
        """UTC hour at ``offset_s`` seconds into the recording (0 when the start is unknown)."""
        if self.start_utc is None:
            return 0
        return (self.start_utc + timedelta(seconds=offset_s)).hour


def parse_utc(text: str) -> datetime:
    """An ISO-8601 time; without a zone it is taken as UTC."""
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise ConfigError(f"not an ISO-8601 time: {text!r}") from exc
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def from_name(stem: str) -> RecordingTime | None:
    """Site and start from a competition-style name, else ``None``."""
    match = _NAME_RE.match(stem)
    if not match:
        return None
    site, day, clock = match.groups()
    try:
        start = datetime.strptime(day + clock, "%Y%m%d%H%M%S").replace(tzinfo=timezone.utc)
    except ValueError:
        return RecordingTime(site=site)
    return RecordingTime(site=site, start_utc=start)


def read_metadata_csv(path: Path) -> dict[Path, RecordingTime]:
    """``path,site,start`` rows (and ``lat,lon`` where the CSV has them; blank: unknown) keyed by
    resolved path (relative paths: from the CSV's folder)."""
    table: dict[Path, RecordingTime] = {}
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"path", "site", "start"} - set(reader.fieldnames or ())
        if missing:
            raise ConfigError(f"{path}: missing columns {sorted(missing)} (expected path,site,start)")
        for line_no, row in enumerate(reader, start=2):
            file = Path(row["path"])
            file = file if file.is_absolute() else path.parent / file
            try:
                start = parse_utc(row["start"]) if row["start"].strip() else None
            except ConfigError as exc:
                raise ConfigError(f"{path}, line {line_no}: {exc}") from exc
            place = []
            for key in ("lat", "lon"):
                text = (row.get(key) or "").strip()
                try:
                    place.append(float(text) if text else None)
                except ValueError:
                    raise ConfigError(f"{path}, line {line_no}: {key} = {text!r} is not a number") from None
            table[file.resolve()] = RecordingTime(site=row["site"].strip() or UNKNOWN_SITE, start_utc=start,
                                                  lat=place[0], lon=place[1])
    return table


def recording_time(
    path: Path,
    *,
    metadata: dict[Path, RecordingTime] | None = None,
    site: str | None = None,
    start_utc: datetime | None = None,
) -> RecordingTime:
    """The best-known site and start of one recording (see the module notes for the order)."""
    if metadata and path.resolve() in metadata:
        return metadata[path.resolve()]
    named = from_name(path.name.rsplit(".", 1)[0])
    if named is not None:
        return named
    return RecordingTime(site=site or UNKNOWN_SITE, start_utc=start_utc)
