"""The archive summary: what was detected, when, and how much was recorded, over the whole folder.

Each scored input's journal line carries its detection windows per class, UTC date and UTC hour
(a window counts when the class's score is at least the summary threshold: ``--min-score``, or
0.5; at most ``--top-k`` classes per window) and its *effort*: the seconds of audio recorded per
UTC date and hour (each 5-s window in the hour it starts in, as its detections are). A
recording without a known start time has one cell of its own instead of dates and hours. The
summary is built from the folder alone (the journal and the run fingerprint), so it is the same
after a resumed run as after an uninterrupted one, and ``streamer archive --summary --out DIR``
rebuilds it without scoring.

* ``_summary.csv``: ``class, common_name, scientific_name, date, hour_utc, recording,
  n_windows, recorded_min, per_recorded_hour``: one row per class and UTC date and hour where
  the recording's start is known, else per class and recording (``date`` and ``hour_utc``
  empty); ``recorded_min`` is the audio recorded in that cell (every input's), and
  ``per_recorded_hour`` is ``n_windows`` per hour of it. Classes with the most detections first.
* ``_effort.csv``: ``date, hour_utc, recording, recorded_min``: every cell with audio, whether
  anything was detected in it or not (the denominators of any rate).
* ``_summary.png``: for the most detected classes (rows), detection windows per recorded hour:
  by UTC hour of day with the dates aggregated (the dates are named), and in a panel of its own
  by recording for the recordings without a start time; under each, the minutes recorded per
  column. A cell with no audio is grey, not zero.

The arrays drawn come from :func:`summary_grids` (tested as data, not pixels). The leading
``_`` keeps these files out of dataset readers (pyarrow, pandas, DuckDB) over the folder's
score files.
"""

from __future__ import annotations

import collections
import csv
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from streamer import failpoints
from streamer.archive import fingerprint as run_fingerprint
from streamer.archive.journal import DONE, Journal
from streamer.files import atomic_write_text, save_figure

log = logging.getLogger(__name__)

SUMMARY_CSV = "_summary.csv"
EFFORT_CSV = "_effort.csv"
SUMMARY_PNG = "_summary.png"
#: Every file of the summary (what ``--overwrite`` removes).
SUMMARY_FILES = (SUMMARY_CSV, EFFORT_CSV, SUMMARY_PNG)
SUMMARY_COLUMNS = ("class", "common_name", "scientific_name", "date", "hour_utc", "recording", "n_windows",
                   "recorded_min", "per_recorded_hour")
EFFORT_COLUMNS = ("date", "hour_utc", "recording", "recorded_min")
#: Rows of the heatmap: the most detected classes.
HEATMAP_CLASSES = 30
#: Columns of the panel of recordings without a start time: those with the most audio.
HEATMAP_RECORDINGS = 40
#: Decimals written in the CSVs.
MINUTES_DECIMALS = 3
RATE_DECIMALS = 2

Cell = tuple[str, int, str]  # (UTC date, UTC hour, recording): ("", -1, rec) without a start time


@dataclass
class FolderSummary:
    """What the journal of a folder says, per class and cell.

    Attributes:
        windows: ``(class, cell) → detection windows``.
        effort_s: ``cell → seconds of audio recorded``.
        names: ``class → (common name, scientific name)``.
        threshold: the summary's score threshold (``None`` when the folder does not say).
        without_effort: inputs done by a streamer that kept no effort: left out of everything.
    """

    windows: dict[tuple[str, Cell], int] = field(default_factory=dict)
    effort_s: dict[Cell, float] = field(default_factory=dict)
    names: dict[str, tuple[str, str]] = field(default_factory=dict)
    threshold: float | None = None
    without_effort: list[str] = field(default_factory=list)

    def totals(self) -> collections.Counter:
        """Detection windows per class."""
        totals: collections.Counter = collections.Counter()
        for (code, _), n in self.windows.items():
            totals[code] += n
        return totals


#: The folder's class names (code, common and scientific name per line, tab-separated), what the
#: summary names its classes by; written at every run's start.
CLASS_NAMES_FILE = ".classes.tsv"


def write_class_names(out_dir: Path, labels) -> None:
    from streamer.files import atomic_write_text

    rows = ("\t".join(x.replace("\t", " ").replace("\n", " ") for x in t) for t in zip(labels.codes, labels.common, labels.scientific))
    atomic_write_text(Path(out_dir) / CLASS_NAMES_FILE, "".join(r + "\n" for r in rows))


def read_class_names(out_dir: Path) -> dict:
    """``{code: (common, scientific)}`` of every class the folder scored (none before ``.classes.tsv``)."""
    path = Path(out_dir) / CLASS_NAMES_FILE
    if not path.is_file():
        return {}
    names = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split("\t")
        if len(parts) == 3:
            names[parts[0]] = (parts[1], parts[2])
    return names


def read_summary(out_dir: Path) -> FolderSummary:
    """The counts and effort of every input the journal of ``out_dir`` has as done."""
    stored = run_fingerprint.read(out_dir) or {}
    settings = stored.get("settings", {})
    summary = FolderSummary(threshold=settings.get("summary_min_score"))
    summary.names = read_class_names(out_dir) or {code: (common, scientific) for code, common, scientific in
                                              settings.get("classes (code, common, scientific)", [])}
    windows: collections.Counter = collections.Counter()
    effort: collections.Counter = collections.Counter()
    for entry in Journal(out_dir).entries.values():
        if entry.status != DONE or not entry.extra:
            continue
        recording = entry.extra.get("recording", entry.output)
        if "effort" not in entry.extra:
            summary.without_effort.append(recording)
            continue
        for date, hour, seconds in entry.extra["effort"]:
            effort[_cell(date, hour, recording)] += seconds
        for code, date, hour, n in entry.extra.get("counts", []):
            windows[(code, _cell(date, hour, recording))] += n
    summary.windows, summary.effort_s = dict(windows), dict(effort)
    if summary.without_effort:
        log.warning("%d input(s) in %s were scored by an earlier streamer that kept no recording effort: the summary "
                    "leaves them out (rescore them with --overwrite)", len(summary.without_effort), out_dir)
    return summary


def _cell(date: str, hour: int, recording: str) -> Cell:
    return (date, hour, "") if date else ("", -1, recording)


def display_name(code: str, common: str, scientific: str) -> str:
    """A class as the figure names it: ``Common name (code)``, or one name when the others
    repeat it (Perch's own labels: code, common and scientific name are the same)."""
    name = common or scientific or code
    return name if name == code or common == scientific else f"{name} ({code})"


def summary_rows(out_dir: Path) -> tuple[list[dict], float | None]:
    """The rows of ``_summary.csv`` (see the module notes) and the threshold."""
    summary = read_summary(out_dir)
    return _rows(summary), summary.threshold


def _rows(summary: FolderSummary) -> list[dict]:
    totals = summary.totals()
    rows = []
    order = sorted(summary.windows.items(), key=lambda kv: (-totals[kv[0][0]], kv[0][0], kv[0][1]))
    for (code, (date, hour, recording)), n in order:
        common, scientific = summary.names.get(code, ("", ""))
        seconds = summary.effort_s.get((date, hour, recording), 0.0)
        rows.append({"class": code, "common_name": common, "scientific_name": scientific, "date": date,
                     "hour_utc": "" if hour < 0 else hour, "recording": recording, "n_windows": n,
                     "recorded_min": round(seconds / 60, MINUTES_DECIMALS),
                     "per_recorded_hour": round(n / (seconds / 3600), RATE_DECIMALS) if seconds > 0 else ""})
    return rows


def _effort_rows(summary: FolderSummary) -> list[dict]:
    return [{"date": date, "hour_utc": "" if hour < 0 else hour, "recording": recording,
             "recorded_min": round(seconds / 60, MINUTES_DECIMALS)}
            for (date, hour, recording), seconds in sorted(summary.effort_s.items())]


@dataclass
class SummaryGrids:
    """What ``_summary.png`` draws (rates are detection windows per recorded hour; NaN where
    nothing was recorded).

    Attributes:
        classes, labels: the rows (most detected first) and how they are named.
        dates: the UTC dates aggregated in the hour-of-day panel.
        timed_windows ``[classes, 24]``, timed_minutes ``[24]``, timed_rate ``[classes, 24]``:
            recordings with a start time, by UTC hour of day.
        recordings: recordings without a start time shown (those with the most audio, in
            name order); ``n_untimed`` how many there are in all.
        untimed_windows ``[classes, recordings]``, untimed_minutes ``[recordings]``,
        untimed_rate ``[classes, recordings]``: those recordings, each a column.
        threshold: the summary's score threshold.
    """

    classes: list[str]
    labels: list[str]
    dates: list[str]
    timed_windows: np.ndarray
    timed_minutes: np.ndarray
    timed_rate: np.ndarray
    recordings: list[str]
    n_untimed: int
    untimed_windows: np.ndarray
    untimed_minutes: np.ndarray
    untimed_rate: np.ndarray
    threshold: float | None = None

    @property
    def has_timed(self) -> bool:
        return bool(self.timed_minutes.sum() > 0)

    @property
    def has_untimed(self) -> bool:
        return bool(self.recordings)


def _rate(windows: np.ndarray, minutes: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(minutes > 0, windows / (minutes / 60.0), np.nan)


def summary_grids(summary: FolderSummary, *, max_classes: int = HEATMAP_CLASSES,
                  max_recordings: int = HEATMAP_RECORDINGS) -> SummaryGrids:
    """The arrays of the figure (see :class:`SummaryGrids`)."""
    classes = [c for c, _ in sorted(summary.totals().items(), key=lambda kv: (-kv[1], kv[0]))[:max_classes]]
    labels = [display_name(c, *summary.names.get(c, ("", ""))) for c in classes]
    row = {c: i for i, c in enumerate(classes)}
    dates = sorted({date for date, _, _ in summary.effort_s if date})
    untimed_s = {rec: s for (date, _, rec), s in summary.effort_s.items() if not date}
    shown = sorted(sorted(untimed_s, key=lambda r: (-untimed_s[r], r))[:max_recordings])
    col = {rec: j for j, rec in enumerate(shown)}
    timed_windows = np.zeros((len(classes), 24))
    untimed_windows = np.zeros((len(classes), len(shown)))
    for (code, (date, hour, rec)), n in summary.windows.items():
        if code not in row:
            continue
        if date:
            timed_windows[row[code], hour] += n
        elif rec in col:
            untimed_windows[row[code], col[rec]] += n
    timed_minutes = np.zeros(24)
    for (date, hour, _), seconds in summary.effort_s.items():
        if date:
            timed_minutes[hour] += seconds / 60
    untimed_minutes = np.array([untimed_s[rec] / 60 for rec in shown])
    return SummaryGrids(classes, labels, dates, timed_windows, timed_minutes, _rate(timed_windows, timed_minutes),
                        shown, len(untimed_s), untimed_windows, untimed_minutes, _rate(untimed_windows, untimed_minutes),
                        summary.threshold)


def _csv_text(columns, rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_summary(out_dir: Path) -> list[Path]:
    """Write ``_summary.csv``, ``_effort.csv`` and, when matplotlib is there and anything was
    detected, ``_summary.png`` (each atomically); returns the paths written."""
    out_dir = Path(out_dir)
    summary = read_summary(out_dir)
    written = [atomic_write_text(out_dir / SUMMARY_CSV, _csv_text(SUMMARY_COLUMNS, _rows(summary))),
               atomic_write_text(out_dir / EFFORT_CSV, _csv_text(EFFORT_COLUMNS, _effort_rows(summary)))]
    failpoints.hit("archive.summary")
    png = draw_summary(summary_grids(summary), out_dir / SUMMARY_PNG) if summary.windows else None
    return written + ([png] if png is not None else [])


def draw_summary(grids: SummaryGrids, path: Path) -> Path | None:
    """The figure of :func:`summary_grids`' arrays; None without matplotlib or without anything
    to draw."""
    if not grids.classes or not (grids.has_timed or grids.has_untimed):
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        from streamer.install import install_hint

        # A warning, not info: -q hides info, and the user would never learn why the picture is missing.
        log.warning("no %s drawn: it needs matplotlib, the plots extra (%s)", path.name, install_hint("plots"))
        return None

    panels = []  # (title, column labels, rate, minutes recorded, rotate the labels, x label)
    if grids.has_timed:
        span = grids.dates[0] if len(grids.dates) == 1 else f"{grids.dates[0]} to {grids.dates[-1]}"
        panels.append((f"by UTC hour of day\n{len(grids.dates)} date(s) aggregated: {span}",
                       [str(h) for h in range(24)], grids.timed_rate, grids.timed_minutes, False, "hour of day (UTC)"))
    if grids.has_untimed:
        which = "" if len(grids.recordings) == grids.n_untimed else f", the {len(grids.recordings)} with the most audio"
        panels.append((f"no start time: by recording\n({grids.n_untimed} recording(s){which})",
                       list(grids.recordings), grids.untimed_rate, grids.untimed_minutes, True, "recording"))
    n_classes = len(grids.classes)
    widths = [max(len(labels), 4) for _, labels, *_ in panels]
    fig = plt.figure(figsize=(max(7.0, 0.35 * sum(widths) + 4), max(4.0, 0.28 * n_classes + 3.2)), layout="constrained")
    grid = fig.add_gridspec(2, len(panels), width_ratios=widths, height_ratios=[max(3.0, 0.28 * n_classes + 1), 1.4])
    finite = [r[np.isfinite(r)] for _, _, r, *_ in panels]
    vmax = max([float(f.max()) for f in finite if f.size] + [1e-9])
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="0.85")  # no audio: grey, not zero
    heat_axes, image = [], None
    for j, (title, labels, rate, minutes, rotate, xlabel) in enumerate(panels):
        ax = fig.add_subplot(grid[0, j])
        image = ax.imshow(np.ma.masked_invalid(rate), aspect="auto", cmap=cmap, vmin=0.0, vmax=vmax, interpolation="nearest")
        ax.set_yticks(range(n_classes), grids.labels if j == 0 else [""] * n_classes, fontsize=7)
        ax.tick_params(axis="x", labelbottom=False)
        ax.set_title(title, fontsize=8)
        heat_axes.append(ax)
        bars = fig.add_subplot(grid[1, j], sharex=ax)
        bars.bar(range(len(labels)), minutes, color="0.4", width=0.8)
        bars.set_xticks(range(len(labels)), labels, fontsize=7, rotation=90 if rotate else 0)
        bars.set_xlabel(xlabel, fontsize=8)
        bars.tick_params(axis="y", labelsize=7)
        if j == 0:
            bars.set_ylabel("minutes\nrecorded", fontsize=8)
    fig.colorbar(image, ax=heat_axes, label="windows per recorded hour", shrink=0.9)
    what = f"score ≥ {grids.threshold:g}" if grids.threshold is not None else "a detection"
    fig.suptitle(f"5-s windows with {what} per hour of audio recorded, the {n_classes} most detected classes "
                 f"(grey: nothing recorded)", fontsize=9)
    return save_figure(fig, path)
