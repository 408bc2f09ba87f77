"""The archive summary: what was detected, when, over the whole output folder.

Each scored input's journal line carries its detection windows per class, UTC date and UTC hour
(a window counts when the class's score is at least the summary threshold: ``--min-score``, or
0.5; at most ``--top-k`` classes per window). The summary is built from the folder alone (the
journal and the run fingerprint), so it is the same after a resumed run as after an
uninterrupted one, and ``streamer archive --summary --out DIR`` rebuilds it without scoring.

* ``_summary.csv``: ``class, common_name, scientific_name, date, hour_utc, recording,
  n_windows``: one row per class and UTC date and hour where the recording's start is known,
  else per class and recording (``date`` and ``hour_utc`` empty). Classes with the most
  detections first.
* ``_summary.png``: a heatmap of the most detected classes (rows, most first) by UTC hour of
  day (columns), or by recording when no start time is known.

The leading ``_`` keeps these files out of dataset readers (pyarrow, pandas, DuckDB) over the
folder's score files.
"""

from __future__ import annotations

import collections
import io
import logging
from pathlib import Path

from streamer.archive import fingerprint as run_fingerprint
from streamer.archive.journal import DONE, Journal
from streamer.files import atomic_write_text, save_figure

log = logging.getLogger(__name__)

SUMMARY_CSV = "_summary.csv"
SUMMARY_PNG = "_summary.png"
#: Rows of the heatmap: the most detected classes.
HEATMAP_CLASSES = 30
HEATMAP_RECORDINGS = 40


def summary_rows(out_dir: Path) -> tuple[list[dict], float | None]:
    """The summary table of the folder (see the module notes) and its threshold."""
    stored = run_fingerprint.read(out_dir) or {}
    labels = {code: (common, scientific) for code, common, scientific in
              stored.get("settings", {}).get("classes (code, common, scientific)", [])}
    threshold = stored.get("settings", {}).get("summary_min_score")
    counts: collections.Counter = collections.Counter()
    for entry in Journal(out_dir).entries.values():
        if entry.status != DONE or not entry.extra:
            continue
        recording = entry.extra.get("recording", entry.output)
        for code, date, hour, n in entry.extra.get("counts", []):
            key = (code, date, hour, "" if date else recording)
            counts[key] += n
    totals: collections.Counter = collections.Counter()
    for (code, _, _, _), n in counts.items():
        totals[code] += n
    rows = []
    for (code, date, hour, recording), n in sorted(counts.items(), key=lambda kv: (-totals[kv[0][0]], kv[0][0], kv[0][1:])):
        common, scientific = labels.get(code, ("", ""))
        rows.append({"class": code, "common_name": common, "scientific_name": scientific, "date": date,
                     "hour_utc": "" if hour < 0 else hour, "recording": recording, "n_windows": n})
    return rows, threshold


def write_summary(out_dir: Path) -> tuple[Path, Path | None]:
    """Write ``_summary.csv`` and, when matplotlib is there and anything was detected,
    ``_summary.png``; returns their paths (the PNG's ``None`` when not drawn)."""
    import csv

    out_dir = Path(out_dir)
    rows, threshold = summary_rows(out_dir)
    buf = io.StringIO()
    columns = ["class", "common_name", "scientific_name", "date", "hour_utc", "recording", "n_windows"]
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    csv_path = atomic_write_text(out_dir / SUMMARY_CSV, buf.getvalue())
    png_path = draw_heatmap(rows, out_dir / SUMMARY_PNG, threshold)
    return csv_path, png_path


def draw_heatmap(rows: list[dict], path: Path, threshold: float | None) -> Path | None:
    """Classes × UTC hour (or × recording) heatmap of detection windows; None without
    matplotlib or without detections."""
    if not rows:
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
    import numpy as np

    by_hour = any(r["hour_utc"] != "" for r in rows)
    totals: collections.Counter = collections.Counter()
    names = {}
    for r in rows:
        totals[r["class"]] += r["n_windows"]
        names[r["class"]] = r["common_name"] or r["class"]
    classes = [c for c, _ in totals.most_common(HEATMAP_CLASSES)]
    if by_hour:
        columns = list(range(24))
        col_of = lambda r: r["hour_utc"] if r["hour_utc"] != "" else None  # noqa: E731
        xlabel = "hour of day (UTC)"
    else:
        rec_totals: collections.Counter = collections.Counter()
        for r in rows:
            rec_totals[r["recording"]] += r["n_windows"]
        columns = [rec for rec, _ in rec_totals.most_common(HEATMAP_RECORDINGS)]
        col_of = lambda r: r["recording"]  # noqa: E731
        xlabel = "recording (start time unknown)"
    grid = np.zeros((len(classes), len(columns)))
    row_index = {c: i for i, c in enumerate(classes)}
    col_index = {c: j for j, c in enumerate(columns)}
    for r in rows:
        col = col_of(r)
        if r["class"] in row_index and col in col_index:
            grid[row_index[r["class"]], col_index[col]] += r["n_windows"]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(columns) + 3), max(3.0, 0.28 * len(classes) + 1.5)))
    image = ax.imshow(grid, aspect="auto", cmap="viridis")
    ax.set_yticks(range(len(classes)), [f"{names[c]} ({c})" for c in classes], fontsize=7)
    ax.set_xticks(range(len(columns)), [str(c) for c in columns], fontsize=7, rotation=0 if by_hour else 90)
    ax.set_xlabel(xlabel)
    what = f"score ≥ {threshold:g}" if threshold is not None else "detections"
    ax.set_title(f"detection windows ({what}), the {len(classes)} most detected classes", fontsize=9)
    fig.colorbar(image, ax=ax, label="5-s windows")
    return save_figure(fig, path)
