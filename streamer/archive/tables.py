"""Detections and the tables ecologists open: Raven Pro selection tables, Audacity label tracks,
and detection lists in Parquet/CSV.

A *detection* is a class in a 5-s window whose score is at least ``min_score`` (at most
``top_k`` classes per window, the best first). With ``merge``, detections of one class in
consecutive windows become one *event* spanning them, with the highest score among them; merging
carries across the 60-s chunks a recording is scored in. Events are written in order of begin
time, then class order (an event is held back until no event still open began before it), and
an event's end is clipped to the recording's end (its last window is a partial one).

Formats (one file per input, written to a temporary sibling and renamed into place):

* ``raven``: ``<input>.selections.txt``, a Raven Pro selection table: tab-separated, Raven's
  columns in Raven's order (``Selection``, ``View``, ``Channel``, ``Begin Time (s)``,
  ``End Time (s)``, ``Low Freq (Hz)``, ``High Freq (Hz)``), then ``Begin File`` and
  ``File Offset (s)`` (so tables of many files can be joined into one), ``Class``,
  ``Common Name``, ``Scientific Name`` and ``Score``. The frequency band is the whole band the
  models see (0 to 16 kHz).
* ``audacity``: ``<input>.txt``, an Audacity label track: ``start<TAB>end<TAB>label`` per line,
  seconds with a decimal point; the label is the common name and the score.
* ``parquet`` / ``csv`` detections: ``file, start_s, end_s, class, common_name,
  scientific_name, score, first_window, last_window``.
"""

from __future__ import annotations

import csv
import heapq
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamer.files import install, temporary_sibling
from streamer.metadata import WINDOW_S

#: The frequency band of every selection: what the models see of 32-kHz audio.
LOW_FREQ_HZ = 0.0
HIGH_FREQ_HZ = 16000.0
RAVEN_COLUMNS = ("Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)", "High Freq (Hz)",
                 "Begin File", "File Offset (s)", "Class", "Common Name", "Scientific Name", "Score")
DETECTION_COLUMNS = ("file", "start_s", "end_s", "class", "common_name", "scientific_name", "score",
                     "first_window", "last_window")
#: Output file name endings by format.
SUFFIXES = {"raven": ".selections.txt", "audacity": ".txt"}
#: Table styles: ``streamer`` (the columns above) or ``birdnet-analyzer`` (BirdNET-Analyzer's
#: own columns, number formats and row order, so scripts written for its tables read these).
TABLE_STYLES = ("streamer", "birdnet-analyzer")
#: BirdNET-Analyzer's columns: its Raven selection table, its CSV, its Audacity labels.
BNA_RAVEN_COLUMNS = ("Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)", "High Freq (Hz)",
                     "Common Name", "Species Code", "Confidence", "Begin Path", "File Offset (s)")
BNA_CSV_COLUMNS = ("Start (s)", "End (s)", "Scientific name", "Common name", "Confidence", "File")


def _bna_time(seconds: float) -> str:
    """A time as BirdNET-Analyzer writes it: Python's repr of the value rounded to 0.01 s."""
    return str(round(float(seconds), 2))


@dataclass(frozen=True)
class Event:
    """Class ``cls`` detected in windows ``first .. last`` (inclusive) with best score ``score``."""

    cls: int
    first: int
    last: int
    score: float


class EventBuilder:
    """Turns chunks of window scores into events (see the module notes)."""

    def __init__(self, n_classes: int, *, min_score: float, top_k: int | None = None, merge: bool = False) -> None:
        self.n_classes = n_classes
        self.min_score = float(min_score)
        self.top_k = top_k
        self.merge = merge
        self.open: dict[int, Event] = {}  # class → its event still growing (merge only)

    def detections(self, probs: np.ndarray) -> list[list[tuple[int, float]]]:
        """Per window, the (class, score) kept, best first."""
        out = []
        for row in probs:
            idx = np.flatnonzero(row >= self.min_score)
            idx = idx[np.argsort(-row[idx], kind="stable")]
            if self.top_k is not None:
                idx = idx[: self.top_k]
            out.append([(int(c), float(row[c])) for c in idx])
        return out

    def add(self, first_window: int, probs: np.ndarray) -> list[Event]:
        """The events that ended within these windows ``[n, C]`` starting at ``first_window``."""
        closed: list[Event] = []
        for offset, kept in enumerate(self.detections(np.asarray(probs, dtype=np.float32))):
            window = first_window + offset
            if not self.merge:
                closed += [Event(c, window, window, s) for c, s in kept]
                continue
            seen = set()
            for c, s in kept:
                seen.add(c)
                event = self.open.get(c)
                if event is not None and event.last == window - 1:
                    self.open[c] = Event(c, event.first, window, max(event.score, s))
                else:
                    if event is not None:
                        closed.append(event)
                    self.open[c] = Event(c, window, window, s)
            for c in [c for c, e in self.open.items() if c not in seen and e.last < window]:
                closed.append(self.open.pop(c))
        return sorted(closed, key=lambda e: (e.first, e.cls))

    def close(self) -> list[Event]:
        closed = sorted(self.open.values(), key=lambda e: (e.first, e.cls))
        self.open.clear()
        return closed

    def earliest_open(self) -> tuple[int, int] | None:
        """``(first window, class)`` of the earliest event still open (merge only), else None."""
        return min(((e.first, e.cls) for e in self.open.values()), default=None)


def _num(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".") if value != int(value) else f"{value:.1f}"


class TableWriter:
    """Streams one input's events to its table (raven, audacity, or detections in Parquet/CSV).

    Args:
        path: destination file.
        file_label: the input's relative path (``file`` column; Raven's ``Begin File`` is its
            base name).
        classes, common_names, scientific_names: aligned per class.
        fmt: ``raven``, ``audacity``, ``parquet`` or ``csv``.
        builder: the detection rules.
    """

    def __init__(self, path: Path, file_label: str, classes, common_names, scientific_names, *, fmt: str,
                 builder: EventBuilder, window_s: float = WINDOW_S, high_freq_hz: float = HIGH_FREQ_HZ,
                 style: str = "streamer", source_path: str | None = None) -> None:
        if style not in TABLE_STYLES:
            raise ValueError(f"style must be one of {TABLE_STYLES}, got {style!r}")
        self.path = Path(path)
        self.window_s = float(window_s)
        self.high_freq_hz = float(high_freq_hz)
        self.style = style
        self.source_path = source_path if source_path is not None else file_label
        self.file_label = file_label
        self.classes, self.common, self.scientific = tuple(classes), tuple(common_names), tuple(scientific_names)
        self.fmt = fmt
        self.builder = builder
        fd, self._tmp = temporary_sibling(self.path)
        os.close(fd)
        self.n_rows = 0
        self._text = None
        self._rows: list[tuple[Event, float]] = []  # parquet/csv: one table written at close (events are few)
        self._held: list[tuple[int, int, int, Event, float]] = []  # closed, waiting for events open before them
        self._audio_end_s: float | None = None
        if fmt in ("raven", "audacity") or (fmt == "csv" and style == "birdnet-analyzer"):
            self._text = open(self._tmp, "w", encoding="utf-8", newline="")
            header = {"raven": RAVEN_COLUMNS if style == "streamer" else BNA_RAVEN_COLUMNS,
                      "csv": BNA_CSV_COLUMNS}.get(fmt)
            if header is not None:
                self._text.write(("\t" if fmt == "raven" else ",").join(header) + "\n")

    def write_chunk(self, first_window: int, probs: np.ndarray, audio_end_s: float | None = None) -> None:
        """The scores ``[n, C]`` of windows ``first_window …``; ``audio_end_s``: where the
        recording's real audio ends, if within these windows (seconds from its start; an event
        ending in the last, partial window ends there). Without it the windows are whole."""
        if audio_end_s is not None:
            self._audio_end_s = float(audio_end_s)
        self._hold(self.builder.add(first_window, probs))
        self._emit(self._release(self.builder.earliest_open()))

    def _hold(self, events: list[Event]) -> None:
        for e in events:
            end_s = self._end(e) if self._audio_end_s is None else min(self._end(e), self._audio_end_s)
            # BirdNET-Analyzer lists a window's species from the highest confidence down
            order = -e.score if self.style == "birdnet-analyzer" else e.cls
            heapq.heappush(self._held, (e.first, order, e.cls, e.last, e, end_s))

    def _start(self, e: Event) -> float:
        return float(e.first * self.window_s)

    def _end(self, e: Event) -> float:
        return float((e.last + 1) * self.window_s)

    def _release(self, before: tuple[int, int] | None) -> list[tuple[Event, float]]:
        """The held events that begin before ``(first window, class)`` (all of them for None):
        an event closes when it ends, so one that began earlier may still be open."""
        out = []
        while self._held and (before is None or self._held[0][0] < before[0]
                              or (self.style == "streamer" and self._held[0][:2] < before)):
            *_, e, end_s = heapq.heappop(self._held)
            out.append((e, end_s))
        return out

    def _emit(self, events: list[tuple[Event, float]]) -> None:
        if self._text is None:
            self._rows += events
            return
        if self.style == "birdnet-analyzer":
            self._emit_bna(events)
            return
        begin_file = Path(self.file_label).name
        for e, end_s in events:
            self.n_rows += 1
            if self.fmt == "raven":
                fields = [str(self.n_rows), "Spectrogram 1", "1", _num(self._start(e)), _num(end_s), _num(LOW_FREQ_HZ),
                          _num(self.high_freq_hz), begin_file, _num(self._start(e)), self.classes[e.cls], self.common[e.cls],
                          self.scientific[e.cls], f"{e.score:.4f}"]
                self._text.write("\t".join(f.replace("\t", " ") for f in fields) + "\n")
            else:
                label = f"{self.common[e.cls]} ({e.score:.2f})".replace("\t", " ")
                self._text.write(f"{self._start(e):.6f}\t{end_s:.6f}\t{label}\n")

    def _emit_bna(self, events: list[tuple[Event, float]]) -> None:
        """Rows as BirdNET-Analyzer writes them (its analyze command's table, csv and audacity
        result types): times rounded to 0.01 s, confidences to 4 decimals, the input's path;
        Raven's ``Species Code`` is the label itself, as BirdNET-Analyzer writes it for a label
        its eBird code list lacks (streamer does not ship that list)."""
        for e, end_s in events:
            self.n_rows += 1
            start, end = _bna_time(self._start(e)), _bna_time(end_s)
            sci, common, score = self.scientific[e.cls], self.common[e.cls], f"{e.score:.4f}"
            if self.fmt == "raven":
                fields = [str(self.n_rows), "Spectrogram 1", "1", start, end, "0", str(int(self.high_freq_hz)), common,
                          self.classes[e.cls], score, self.source_path, start]
                self._text.write("\t".join(f.replace("\t", " ") for f in fields) + "\n")
            elif self.fmt == "csv":
                buf = io.StringIO()
                csv.writer(buf, lineterminator="\n").writerow([start, end, sci, common, score, self.source_path])
                self._text.write(buf.getvalue())
            else:
                self._text.write(f"{start}\t{end}\t{sci}, {common}\t{score}\n".replace("\r", " "))

    def close(self) -> Path:
        self._hold(self.builder.close())
        self._emit(self._release(None))
        if self.style == "birdnet-analyzer" and self.fmt == "raven" and self.n_rows == 0:
            # BirdNET-Analyzer's table of a recording without detections: one 'nocall' row
            self._text.write("\t".join(["1", "Spectrogram 1", "1", "0", "3", "0", str(int(self.high_freq_hz)), "nocall",
                                         "nocall", "1.0", self.source_path, "0"]) + "\n")
        if self._text is not None:
            self._text.close()
        else:
            self._write_table()
        return install(self._tmp, self.path)

    def _write_table(self) -> None:
        import pyarrow as pa

        rows = self._rows  # released in order of begin, then class
        events = [e for e, _ in rows]
        self.n_rows = len(events)
        table = pa.table({
            "file": pa.array([self.file_label] * len(events), pa.string()),
            "start_s": pa.array([self._start(e) for e in events], pa.float64()),
            "end_s": pa.array([end_s for _, end_s in rows], pa.float64()),
            "class": pa.array([self.classes[e.cls] for e in events], pa.string()),
            "common_name": pa.array([self.common[e.cls] for e in events], pa.string()),
            "scientific_name": pa.array([self.scientific[e.cls] for e in events], pa.string()),
            "score": pa.array([e.score for e in events], pa.float32()),
            "first_window": pa.array([e.first for e in events], pa.int64()),
            "last_window": pa.array([e.last for e in events], pa.int64()),
        })
        if self.fmt == "parquet":
            import pyarrow.parquet as pq

            pq.write_table(table, str(self._tmp))
        else:
            import pyarrow.csv as pacsv

            pacsv.write_csv(table, str(self._tmp))

    def abort(self) -> None:
        if self._text is not None and not self._text.closed:
            self._text.close()
        self._tmp.unlink(missing_ok=True)


def read_raven(path: Path) -> list[dict]:
    """The rows of a Raven selection table (for the archive-wide table)."""
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def write_archive_raven(tables: list[tuple[Path, float]], out: Path) -> int:
    """One Raven selection table for many inputs: their rows in order, ``Selection`` renumbered,
    ``Begin Time (s)`` / ``End Time (s)`` on one timeline (each input starts where the one before
    ended, as Raven shows a file sequence), ``Begin File`` and ``File Offset (s)`` kept; rows in
    order of begin time, then of the inputs' order. Returns the number of rows."""
    from streamer.files import atomic_write_text

    rows = []
    offset = 0.0
    for order, (path, duration_s) in enumerate(tables):
        for row in read_raven(path):
            begin = offset + float(row["Begin Time (s)"])
            rows.append((begin, order, len(rows), dict(row, **{"End Time (s)": _num(offset + float(row["End Time (s)"]))})))
        offset += duration_s
    buf = io.StringIO()
    buf.write("\t".join(RAVEN_COLUMNS) + "\n")
    for n, (begin, _, _, row) in enumerate(sorted(rows, key=lambda r: r[:3]), start=1):
        row["Selection"] = str(n)
        row["Begin Time (s)"] = _num(begin)
        buf.write("\t".join(row[c] for c in RAVEN_COLUMNS) + "\n")
    n = len(rows)
    atomic_write_text(out, buf.getvalue())
    return n
