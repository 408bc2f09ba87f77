"""``streamer clips``: cut the audio of detections or search hits into files to review by ear.

The events come from an archive folder: its detection tables (every format the archive writes
with a threshold: streamer's or BirdNET-Analyzer's CSV, Parquet, Raven tables) or a search's
hits (``--hits``). Each event's source recording is found through the folder's journal. The
clips keep the recording's own rate and channels, with ``pad`` seconds either side (as far as
the recording goes), and are named ``<class>_<score>_<recording>_<start>.flac`` so that a
folder listing sorts them by class, then score. ``per_class`` keeps each class's best events;
``sample`` adds a seeded random sample of each class's other events, which is what estimating
the precision at a threshold needs (the best ones alone overstate it). Named classes
(``--class``, :mod:`streamer.archive.classnames`) narrow the events to theirs: a folder's
names are every class it scored (``.classes.tsv``), so a class without an event is known but
has no clip, and a name it never scored is refused; a search's are its queries. A Kaleidoscope CSV of
the kept events (``INDIR, FOLDER, IN FILE, OFFSET, DURATION, TOP1MATCH, TOP1DIST``) lets
Kaleidoscope open them in the recordings themselves.
"""

from __future__ import annotations

import csv
import io
import random
import re
from dataclasses import dataclass
from pathlib import Path

from streamer.errors import ConfigError

KALEIDOSCOPE_COLUMNS = ("INDIR", "FOLDER", "IN FILE", "OFFSET", "DURATION", "TOP1MATCH", "TOP1DIST")
CLIP_FORMATS = ("flac", "wav")


@dataclass(frozen=True)
class Event:
    recording: str  # the archive's name for the recording
    path: Path  # the recording itself
    start_s: float
    end_s: float
    label: str
    score: float
    names: tuple[str, ...]  # the class's code, common and scientific name, as many as the table has


def recordings(folder: Path) -> dict[str, tuple[Path, Path]]:
    """The folder's finished inputs: ``{archive name: (recording, its output file)}``."""
    from streamer.archive.journal import DONE, Journal

    if not (Path(folder) / ".streamer-run.json").is_file():
        raise ConfigError(f"{folder}: not an archive folder (no run fingerprint)")
    out = {}
    for entry in Journal(Path(folder)).entries.values():
        if entry.status == DONE:
            extra = entry.extra or {}
            name = extra.get("recording", entry.output)
            # a rescored folder's journal is keyed by the embeddings it read; "source" is the recording
            out[name] = (Path(extra.get("source", entry.key.path)), Path(folder) / entry.output)
    if not out:
        raise ConfigError(f"{folder}: no finished input in its journal")
    return out


def _rows(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(str(path)).to_pylist()
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle, delimiter="\t" if path.name.endswith(".selections.txt") else ","))


def table_events(name: str, recording: Path, table: Path) -> list[Event]:
    """One detection table's events (streamer's columns or BirdNET-Analyzer's)."""
    rows = _rows(table)
    out = []
    for row in rows:
        if "score" in row and "start_s" in row:  # streamer's detections (Parquet or CSV)
            start, end = float(row["start_s"]), float(row["end_s"])
            label, score = row.get("common_name") or row.get("class"), float(row["score"])
            names = (row.get("class"), row.get("common_name"), row.get("scientific_name"))
        elif "Start (s)" in row:  # BirdNET-Analyzer's CSV
            start, end, label, score = float(row["Start (s)"]), float(row["End (s)"]), row["Common name"], float(row["Confidence"])
            names = (row["Scientific name"], row["Common name"])
        elif "Begin Time (s)" in row:  # Raven, either style
            if row.get("Common Name") == "nocall":
                continue
            start, end = float(row["Begin Time (s)"]), float(row["End Time (s)"])
            label = row.get("Common Name") or row.get("Class")
            score = float(row.get("Score") or row.get("Confidence"))
            names = (row.get("Class") or row.get("Species Code"), row.get("Common Name"), row.get("Scientific Name"))
        else:
            raise ConfigError(f"{table}: not a detection table (every score, not detections: score the archive with "
                              "--min-score, or use --format raven/csv with a threshold)")
        out.append(Event(name, recording, start, end, str(label), score, tuple(str(n) for n in names if n)))
    return out


def folder_events(folder: Path, classes: tuple[str, ...] = ()) -> list[Event]:
    """The folder's detections; with ``classes`` (``--class``), only theirs."""
    from streamer.archive.summary import read_class_names

    events = []
    for name, (recording, table) in sorted(recordings(folder).items()):
        if table.suffix == ".txt" and not table.name.endswith(".selections.txt"):
            raise ConfigError(f"{table}: Audacity label tracks carry no scores to rank; score the archive as csv, parquet or raven")
        events += table_events(name, recording, table)
    if not classes:
        return events
    scored = [(code, *names) for code, names in read_class_names(folder).items()]
    # a folder of a streamer before .classes.tsv: the classes its tables have
    where = str(folder) if scored else f"the detection tables of {folder}"
    return only_classes(events, classes, scored or sorted({e.names for e in events}), where)


def hit_events(folder: Path, hits: Path, classes: tuple[str, ...] = ()) -> list[Event]:
    """A search's hits (``streamer search --out``): each query is the class, the similarity the
    score; with ``classes`` (``--class``), only those queries'."""
    known = recordings(folder)
    out = []
    for row in _rows(hits):
        if "similarity" not in row:
            raise ConfigError(f"{hits}: not a search's hits (columns query, rank, file, start_s, end_s, similarity)")
        if row["file"] not in known:
            raise ConfigError(f"{hits}: {row['file']!r} is not a finished input of {folder}")
        out.append(Event(row["file"], known[row["file"]][0], float(row["start_s"]), float(row["end_s"]), row["query"],
                         float(row["similarity"]), (row["query"],)))
    return only_classes(out, classes, sorted({e.names for e in out}), f"the queries of {hits}") if classes else out


def only_classes(events: list[Event], classes: tuple[str, ...], known: list[tuple[str, ...]], where: str) -> list[Event]:
    """The events of the ``known`` classes (each its names) that ``classes`` name; an unknown
    name is refused before any clip is cut."""
    from streamer.archive.classnames import named_classes

    wanted = {n.casefold() for i in named_classes(classes, known, where) for n in known[i]}
    return [e for e in events if any(n.casefold() in wanted for n in e.names)]


def select(events: list[Event], per_class: int | None, sample: int | None, seed: int = 0) -> list[Event]:
    """Each class's ``per_class`` best events, and a random sample of ``sample`` of its others
    (``None`` for both: every event)."""
    if per_class is None and sample is None:
        return list(events)
    rng = random.Random(seed)
    by_class: dict[str, list[Event]] = {}
    for e in events:
        by_class.setdefault(e.label, []).append(e)
    kept = []
    for label in sorted(by_class):
        ranked = sorted(by_class[label], key=lambda e: (-e.score, e.recording, e.start_s))
        best = ranked[: per_class or 0]
        rest = ranked[len(best):]
        kept += best + (rng.sample(rest, min(sample, len(rest))) if sample else [])
    return kept


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "-", text).strip("-") or "x"


def clip_name(e: Event, fmt: str) -> str:
    return f"{_safe(e.label)}_{e.score:.4f}_{_safe(Path(e.recording).name)}_{e.start_s:08.2f}s.{fmt}"


def cut(events: list[Event], out_dir: Path, *, pad_s: float = 1.0, fmt: str = "flac") -> list[Path]:
    """Write each event's audio (``pad_s`` either side, within the recording) to ``out_dir``."""
    import soundfile as sf

    from streamer.audio import write_audio

    if fmt not in CLIP_FORMATS:
        raise ConfigError(f"clip format must be one of {', '.join(CLIP_FORMATS)}, got {fmt!r}")
    if pad_s < 0:
        raise ConfigError(f"--pad must be >= 0, got {pad_s}")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for e in events:
        try:
            with sf.SoundFile(str(e.path)) as handle:
                rate = handle.samplerate
                a = max(0, int(round((e.start_s - pad_s) * rate)))
                b = min(handle.frames, int(round((e.end_s + pad_s) * rate)))
                handle.seek(a)
                data = handle.read(max(0, b - a), dtype="float32", always_2d=True)
        except Exception as exc:  # soundfile raises several types for a missing or unreadable file
            raise ConfigError(f"{e.path}: cannot read the recording of {e.recording} ({type(exc).__name__}: {exc})") from None
        path = out_dir / clip_name(e, fmt)
        write_audio(path, data, rate, subtype="PCM_16" if fmt == "flac" else "FLOAT")
        written.append(path)
    return written


def write_kaleidoscope(events: list[Event], path: Path) -> Path:
    """The events as a Kaleidoscope CSV: each in its own recording (INDIR/FOLDER/IN FILE),
    OFFSET and DURATION in seconds, the class as TOP1MATCH and the score as TOP1DIST."""
    from streamer.files import atomic_write_text

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(KALEIDOSCOPE_COLUMNS)
    for e in events:
        folder = e.path.parent
        writer.writerow([str(folder.parent), folder.name, e.path.name, f"{e.start_s:g}", f"{e.end_s - e.start_s:g}", e.label,
                         f"{e.score:.4f}"])
    return atomic_write_text(path, buf.getvalue())
