"""The archive summary an ecologist reads: detections per recorded hour, the recording effort
itself, recordings without a start time in a panel of their own, dates named, one name for
Perch's labels. Tested on the arrays the figure draws (summary_grids), not on pixels."""

import csv

import numpy as np
import pytest

from streamer.archive import fingerprint
from streamer.archive.journal import DONE, Journal
from streamer.archive.summary import (
    EFFORT_CSV, SUMMARY_COLUMNS, SUMMARY_CSV, SUMMARY_PNG, display_name, read_summary, summary_grids, write_summary,
)

from conftest import printed_tolerance

CLASSES = [["a1", "Alpha bird", "Alpha alpha"], ["c3", "Gamma insect", "Gamma gamma"],
           ["Turdus merula", "Turdus merula", "Turdus merula"]]


def _folder(tmp_path, inputs):
    """An output folder whose journal holds ``inputs``: (recording, counts, effort)."""
    out = tmp_path / "out"
    out.mkdir()
    fingerprint.write(out, {"output_format_version": fingerprint.OUTPUT_FORMAT_VERSION,
                            "settings": {"summary_min_score": 0.5, "classes (code, common, scientific)": CLASSES}})
    journal = Journal(out)
    for recording, counts, effort in inputs:
        src = tmp_path / recording
        src.write_bytes(b"audio")
        extra = {"counts": counts, "recording": recording}
        if effort is not None:
            extra["effort"] = effort
        journal.record(src, DONE, recording + ".parquet", audio_s=sum(s for *_, s in effort or []), extra=extra)
    return out


#: The issue's case: a 1-minute file on one date, a 16-minute file on another at the same hour of
#: day (most of the audio), and a 19.5-s file without a start time, the only one where c3 is heard.
ARCHIVE = [
    ("short.flac", [["a1", "2025-03-01", 5, 6]], [["2025-03-01", 5, 60.0]]),
    ("long.flac", [["a1", "2025-03-02", 5, 12], ["Turdus merula", "2025-03-02", 6, 3]],
     [["2025-03-02", 5, 900.0], ["2025-03-02", 6, 60.0]]),
    ("untimed.flac", [["c3", "", -1, 2]], [["", -1, 19.5]]),
]


def test_rates_per_recorded_hour_effort_and_untimed_recordings(tmp_path):
    grids = summary_grids(read_summary(_folder(tmp_path, ARCHIVE)))
    assert grids.classes == ["a1", "Turdus merula", "c3"]  # most detected first
    assert grids.labels == ["Alpha bird (a1)", "Turdus merula", "Gamma insect (c3)"]  # Perch's label once
    assert grids.dates == ["2025-03-01", "2025-03-02"]  # both dates, aggregated and named
    # Effort: minutes recorded per UTC hour of day, every date's.
    want_minutes = np.zeros(24)
    want_minutes[5], want_minutes[6] = 1 + 15, 1
    np.testing.assert_allclose(grids.timed_minutes, want_minutes)
    # Rates: detection windows per recorded hour; no audio is NaN, not zero.
    assert grids.timed_windows[0, 5] == 18
    np.testing.assert_allclose(grids.timed_rate[0, 5], 18 / (16 / 60))
    np.testing.assert_allclose(grids.timed_rate[1, 6], 3 / (1 / 60))
    assert grids.timed_rate[0, 6] == 0 and grids.timed_rate[2, 5] == 0
    assert np.isnan(grids.timed_rate[:, [h for h in range(24) if h not in (5, 6)]]).all()
    # The recording without a start time is not dropped: its own panel, its own effort.
    assert grids.recordings == ["untimed.flac"] and grids.n_untimed == 1
    np.testing.assert_allclose(grids.untimed_minutes, [19.5 / 60])
    np.testing.assert_allclose(grids.untimed_rate[:, 0], [0, 0, 2 / (19.5 / 3600)])
    assert grids.untimed_windows[:, 0].tolist() == [0, 0, 2]


def test_csvs_carry_the_effort_and_the_figure_is_drawn(tmp_path):
    pytest.importorskip("matplotlib")
    out = _folder(tmp_path, ARCHIVE)
    written = write_summary(out)
    assert written == [out / SUMMARY_CSV, out / EFFORT_CSV, out / SUMMARY_PNG]
    assert (out / SUMMARY_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader((out / SUMMARY_CSV).open(encoding="utf-8")))
    assert list(rows[0]) == list(SUMMARY_COLUMNS)
    by_cell = {(r["class"], r["date"], r["hour_utc"], r["recording"]): r for r in rows}
    a1 = by_cell["a1", "2025-03-02", "5", ""]
    assert a1["n_windows"] == "12" and float(a1["recorded_min"]) == 15.0
    assert float(a1["per_recorded_hour"]) == pytest.approx(12 / 0.25, abs=printed_tolerance(2))
    c3 = by_cell["c3", "", "", "untimed.flac"]
    assert float(c3["recorded_min"]) == pytest.approx(19.5 / 60, abs=printed_tolerance(3))
    assert float(c3["per_recorded_hour"]) == pytest.approx(2 / (19.5 / 3600), abs=printed_tolerance(2))
    effort = list(csv.DictReader((out / EFFORT_CSV).open(encoding="utf-8")))
    assert [(r["date"], r["hour_utc"], r["recording"], float(r["recorded_min"])) for r in effort] == [
        ("", "", "untimed.flac", pytest.approx(0.325, abs=printed_tolerance(3))),
        ("2025-03-01", "5", "", 1.0), ("2025-03-02", "5", "", 15.0), ("2025-03-02", "6", "", 1.0)]


def test_only_untimed_recordings_and_many_of_them(tmp_path):
    inputs = [(f"r{i:02d}.flac", [["a1", "", -1, i + 1]], [["", -1, 60.0 * (i + 1)]]) for i in range(5)]
    grids = summary_grids(read_summary(_folder(tmp_path, inputs)), max_recordings=3)
    assert not grids.has_timed and grids.dates == []
    assert grids.recordings == ["r02.flac", "r03.flac", "r04.flac"] and grids.n_untimed == 5  # the most audio, by name
    np.testing.assert_allclose(grids.untimed_minutes, [3, 4, 5])
    np.testing.assert_allclose(grids.untimed_rate[0], [60, 60, 60])  # i + 1 windows in i + 1 minutes


def test_inputs_without_effort_are_left_out_with_a_warning(tmp_path, caplog):
    """An input journaled by a streamer that kept no effort cannot be divided: left out, said."""
    inputs = ARCHIVE + [("old.flac", [["a1", "2025-03-01", 5, 100]], None)]
    with caplog.at_level("WARNING"):
        summary = read_summary(_folder(tmp_path, inputs))
    assert summary.without_effort == ["old.flac"] and "1 input(s)" in caplog.text and "--overwrite" in caplog.text
    assert summary_grids(summary).timed_windows[0, 5] == 18


@pytest.mark.parametrize("names,shown", [
    (("rufhor2", "Rufous Hornero", "Furnarius rufus"), "Rufous Hornero (rufhor2)"),
    (("Turdus merula", "Turdus merula", "Turdus merula"), "Turdus merula"),
    (("47158son16", "Insect son16", "Insect son16"), "Insect son16"),
    (("x1", "", ""), "x1"),
])
def test_display_names(names, shown):
    assert display_name(*names) == shown
