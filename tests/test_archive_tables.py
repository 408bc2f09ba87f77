"""Detections, the Raven and Audacity tables (read back with crowsetta, an annotation library of
the bioacoustics ecosystem), the archive summary, and the per-input Parquet files read as one
table."""

import csv
import shutil

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pytest

from streamer import cli
from streamer.archive.journal import Journal
from streamer.archive.tables import RAVEN_COLUMNS, EventBuilder, TableWriter
from streamer.audio import write_audio
from streamer.metadata import WINDOW_S

from conftest import printed_tolerance

CLASSES = ("a1", "b2", "c3")
COMMON = ("Alpha bird", "Beta frog", "Gamma insect")
SCIENTIFIC = ("Alpha alpha", "Beta beta", "Gamma gamma")


def marked_scores() -> np.ndarray:
    """30 windows whose detections are known: a1 in windows 2-5 and 11 (scores rising to 0.9 in
    window 4), b2 in 4-4 and 6-7, c3 only below the threshold (0.49) except window 20 (0.5)."""
    p = np.full((30, 3), 0.1, np.float32)
    p[2:6, 0] = [0.6, 0.7, 0.9, 0.55]
    p[11, 0] = 0.8
    p[4, 1], p[6:8, 1] = 0.95, [0.5, 0.51]
    p[:, 2] = 0.49
    p[20, 2] = 0.5
    return p


EXPECTED_MERGED = [  # (class, first window, last window, best score), by start then class order
    (0, 2, 5, 0.9), (1, 4, 4, 0.95), (1, 6, 7, 0.51), (0, 11, 11, 0.8), (2, 20, 20, 0.5),
]


@pytest.mark.parametrize("chunk", [30, 12, 7, 1])
def test_merged_events_whatever_the_chunking(chunk):
    builder = EventBuilder(3, min_score=0.5, merge=True)
    p = marked_scores()
    events = []
    for start in range(0, len(p), chunk):  # merging carries across chunks
        events += builder.add(start, p[start:start + chunk])
    events += builder.close()
    got = sorted(((e.cls, e.first, e.last, round(e.score, 2)) for e in events), key=lambda e: (e[1], e[0]))
    assert got == EXPECTED_MERGED


def test_threshold_and_top_k_without_merging():
    p = marked_scores()
    events = EventBuilder(3, min_score=0.5).add(0, p)
    assert len(events) == 4 + 1 + 1 + 2 + 1  # one event per window kept
    assert all(e.first == e.last for e in events)
    top1 = EventBuilder(3, min_score=0.5, top_k=1).add(0, p[4:5])  # a1 0.9 and b2 0.95: only b2
    assert [(e.cls, e.score) for e in top1] == [(1, pytest.approx(0.95))]
    assert EventBuilder(3, min_score=0.96).add(0, p) == []


def _write(tmp_path, fmt, name):
    writer = TableWriter(tmp_path / name, f"site/{name}.flac", CLASSES, COMMON, SCIENTIFIC, fmt=fmt,
                         builder=EventBuilder(3, min_score=0.5, merge=True))
    p = marked_scores()
    writer.write_chunk(0, p[:12])
    writer.write_chunk(12, p[12:])
    return writer.close()


def test_raven_table_reads_in_crowsetta(tmp_path):
    crowsetta = pytest.importorskip("crowsetta")
    path = _write(tmp_path, "raven", "rec.selections.txt")
    header = path.read_text(encoding="utf-8").splitlines()[0].split("\t")
    assert tuple(header) == RAVEN_COLUMNS
    raven = crowsetta.formats.bbox.Raven.from_file(path, annot_col="Common Name")
    bboxes = raven.to_bbox()
    expected = [(f * WINDOW_S, (l + 1) * WINDOW_S, COMMON[c]) for c, f, l, _ in EXPECTED_MERGED]
    assert [(b.onset, b.offset, b.label) for b in bboxes] == expected
    assert {(b.low_freq, b.high_freq) for b in bboxes} == {(0.0, 16000.0)}
    rows = list(csv.DictReader(path.open(encoding="utf-8"), delimiter="\t"))
    assert [r["Selection"] for r in rows] == ["1", "2", "3", "4", "5"]
    assert {r["Begin File"] for r in rows} == {"rec.selections.txt.flac"}
    assert [float(r["Score"]) for r in rows] == pytest.approx([s for *_, s in EXPECTED_MERGED], abs=1e-4)
    assert rows[0]["Scientific Name"] == "Alpha alpha" and rows[0]["Class"] == "a1"


def test_audacity_labels_read_in_crowsetta(tmp_path):
    crowsetta = pytest.importorskip("crowsetta")
    path = _write(tmp_path, "audacity", "rec.txt")
    seq = crowsetta.formats.seq.AudSeq.from_file(path).to_seq()
    assert list(seq.onsets_s) == [f * WINDOW_S for _, f, _, _ in EXPECTED_MERGED]
    assert list(seq.offsets_s) == [(l + 1) * WINDOW_S for _, _, l, _ in EXPECTED_MERGED]
    assert list(seq.labels) == [f"{COMMON[c]} ({s:.2f})" for c, _, _, s in EXPECTED_MERGED]


def _long_and_short_events() -> np.ndarray:
    """b2 in windows 3-4 (closes in the first 12-window chunk) while a1 runs from window 0 to 30
    (closes in the third): the events end in the other order than they begin."""
    p = np.full((36, 3), 0.1, np.float32)
    p[0:31, 0] = 0.9
    p[3:5, 1] = 0.8
    p[14, 2] = 0.7  # c3 begins after a1 and ends before it
    return p


@pytest.mark.parametrize("fmt", ["raven", "audacity", "csv"])
def test_tables_are_in_order_of_begin_time_not_end_time(tmp_path, fmt):
    """Selection 1 is the event that begins first (a1, 0-155 s), even though b2 (15-25 s) and c3
    (70-75 s) ended long before it; Raven Pro and people read a table top-down in time."""
    name = {"raven": "rec.selections.txt", "audacity": "rec.txt", "csv": "rec.csv"}[fmt]
    writer = TableWriter(tmp_path / name, "rec.flac", CLASSES, COMMON, SCIENTIFIC, fmt=fmt,
                         builder=EventBuilder(3, min_score=0.5, merge=True))
    p = _long_and_short_events()
    for start in range(0, len(p), 12):
        writer.write_chunk(start, p[start:start + 12])
    path = writer.close()
    if fmt == "raven":
        rows = list(csv.DictReader(path.open(encoding="utf-8"), delimiter="\t"))
        got = [(float(r["Begin Time (s)"]), float(r["End Time (s)"]), r["Class"]) for r in rows]
        assert [r["Selection"] for r in rows] == ["1", "2", "3"]
    elif fmt == "audacity":
        got = [(float(a), float(b), label.split(" (")[0]) for a, b, label in
               (line.split("\t") for line in path.read_text(encoding="utf-8").splitlines())]
        got = [(a, b, CLASSES[COMMON.index(label)]) for a, b, label in got]
    else:
        frame = pd.read_csv(path)
        got = list(zip(frame["start_s"], frame["end_s"], frame["class"]))
    assert got == [(0.0, 155.0, "a1"), (15.0, 25.0, "b2"), (70.0, 75.0, "c3")]


def test_an_event_ends_where_the_recording_ends(tmp_path):
    """A 19.5-s recording: 4 windows, the last one 4.5 s of audio. Its last selection ends at
    19.5 s, not 20.0 (Raven would show a selection past the end of the file); merged or not, in
    every format."""
    crowsetta = pytest.importorskip("crowsetta")
    p = np.full((4, 3), 0.1, np.float32)
    p[1:4, 0] = 0.9  # a1 in windows 1-3: 5.0 to the end
    p[3, 1] = 0.6  # b2 in the last window alone
    for merge in (True, False):
        for fmt, name in (("raven", "r.selections.txt"), ("audacity", "r.txt"), ("parquet", "r.parquet")):
            writer = TableWriter(tmp_path / f"{merge}" / name, "r.flac", CLASSES, COMMON, SCIENTIFIC, fmt=fmt,
                                 builder=EventBuilder(3, min_score=0.5, merge=merge))
            writer.write_chunk(0, p, audio_end_s=19.5)
            path = writer.close()
            if fmt == "raven":
                boxes = crowsetta.formats.bbox.Raven.from_file(path, annot_col="Class").to_bbox()
                got = [(b.onset, b.offset, b.label) for b in boxes]
            elif fmt == "audacity":
                seq = crowsetta.formats.seq.AudSeq.from_file(path).to_seq()
                got = [(a, b, CLASSES[COMMON.index(lab.split(" (")[0])]) for a, b, lab in zip(seq.onsets_s, seq.offsets_s, seq.labels)]
            else:
                frame = pd.read_parquet(path)
                got = list(zip(frame["start_s"], frame["end_s"], frame["class"]))
            if merge:
                assert got == [(5.0, 19.5, "a1"), (15.0, 19.5, "b2")], (fmt, got)
            else:
                assert got == [(5.0, 10.0, "a1"), (10.0, 15.0, "a1"), (15.0, 19.5, "a1"), (15.0, 19.5, "b2")], (fmt, got)


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_detections_in_parquet_and_csv(tmp_path, fmt):
    path = _write(tmp_path, fmt, f"rec.{fmt}")
    frame = pd.read_parquet(path) if fmt == "parquet" else pd.read_csv(path)
    assert list(frame.columns) == ["file", "start_s", "end_s", "class", "common_name", "scientific_name", "score",
                                   "first_window", "last_window"]
    assert list(zip(frame["class"], frame["first_window"], frame["last_window"])) == [
        (CLASSES[c], f, l) for c, f, l, _ in EXPECTED_MERGED]


# ---------------------------------------------------------------------------- through the command


def _args(kit, out, src, *extra):
    return ["archive", str(src), "--out", str(out), "--data-dir", str(kit.data_dir), "--perch", str(kit.perch_onnx),
            "--moe-dir", str(kit.moe_dir), "--engine", "sequential", "--threads", "1", *extra]


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tables") / "in"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for i, seconds in enumerate((75, 40)):
        t = np.arange(32000 * seconds) / 32000
        write_audio(folder / f"BC2026_Train_000{i + 1}_S0{i + 3}_20250301_0{5 + i}5900.flac",
                    0.1 * np.sin(2 * np.pi * (900 + 400 * i) * t) + 0.02 * rng.standard_normal(t.size), 32000)
    return folder


@pytest.fixture(scope="module")
def wide(kit, recordings, tmp_path_factory):
    out = tmp_path_factory.mktemp("wide") / "out"
    assert cli.main(_args(kit, out, recordings)) == 0
    return out


def _scores(frame):
    return frame[[c for c in frame.columns if c not in ("file", "window", "start_s", "end_s")]]


def test_tables_hold_the_detections_of_the_scores(kit, recordings, wide, tmp_path):
    """The Raven table of a run is exactly the merged detections of the same run's scores."""
    crowsetta = pytest.importorskip("crowsetta")
    out = tmp_path / "raven"
    # A threshold the stand-in's random models reach in a few windows.
    all_scores = np.concatenate([_scores(pd.read_parquet(p)).to_numpy() for p in sorted(wide.rglob("*.parquet"))])
    threshold = float(np.quantile(all_scores.max(axis=1), 0.5))
    assert cli.main(_args(kit, out, recordings, "--format", "raven", "--min-score", str(threshold), "--archive-table")) == 0
    for parquet in sorted(wide.rglob("*.parquet")):
        frame = pd.read_parquet(parquet)
        classes = list(_scores(frame).columns)
        builder = EventBuilder(len(classes), min_score=threshold, top_k=3, merge=True)
        expected = builder.add(0, _scores(frame).to_numpy()) + builder.close()
        table = out / parquet.relative_to(wide).with_suffix("").with_suffix(".flac.selections.txt")
        raven = crowsetta.formats.bbox.Raven.from_file(table, annot_col="Class")
        got = [(b.onset, b.offset, b.label) for b in raven.to_bbox()]
        assert got == [(float(e.first * 5), float((e.last + 1) * 5), classes[e.cls]) for e in sorted(expected, key=lambda e: (e.first, e.cls))]
        assert got  # the threshold was chosen so that there is something to compare
    archive_table = crowsetta.formats.bbox.Raven.from_file(out / "_archive.selections.txt", annot_col="Class")
    per_input = sum(len(crowsetta.formats.bbox.Raven.from_file(p, annot_col="Class").to_bbox())
                    for p in out.rglob("*.flac.selections.txt"))
    assert len(archive_table.to_bbox()) == per_input
    rows = list(csv.DictReader((out / "_archive.selections.txt").open(encoding="utf-8"), delimiter="\t"))
    second = [r for r in rows if r["Begin File"].startswith("BC2026_Train_0002")]
    assert all(float(r["Begin Time (s)"]) == pytest.approx(75.0 + float(r["File Offset (s)"])) for r in second)


def test_summary_counts_by_hour_and_rebuilds_from_the_folder(kit, recordings, wide, tmp_path):
    summary = wide / "_summary.csv"
    assert summary.is_file() and (wide / "_summary.png").is_file()
    frame = pd.read_csv(summary, keep_default_na=False)
    assert list(frame.columns) == ["class", "common_name", "scientific_name", "date", "hour_utc", "recording", "n_windows",
                                   "recorded_min", "per_recorded_hour"]
    # Counted from the scores: windows at >= 0.5 (the default), by the UTC hour of each window.
    expected = {}
    for parquet in sorted(wide.rglob("*.parquet")):
        scores = pd.read_parquet(parquet)
        start_hour = 5 if "0001" in parquet.name else 6
        for w, row in enumerate(_scores(scores).to_numpy()):
            hour = (start_hour + (59 * 60 + w * WINDOW_S) // 3600) % 24  # the recordings start at hh:59:00
            for c in np.flatnonzero(row >= 0.5):
                key = (_scores(scores).columns[c], hour)
                expected[key] = expected.get(key, 0) + 1
    got = {(r["class"], int(r["hour_utc"])): int(r["n_windows"]) for _, r in frame.iterrows()}
    assert got == expected and got
    assert set(frame["date"]) == {"2025-03-01"}
    # The effort: the 75-s recording starts at 05:59:00 (60 s in hour 5, 15 s in hour 6), the 40-s
    # one at 06:59:00 (40 s in hour 6); each row says how much was recorded in its hour.
    effort = pd.read_csv(wide / "_effort.csv", keep_default_na=False)
    assert [(r.date, r.hour_utc, r.recording, r.recorded_min) for r in effort.itertuples()] == [
        ("2025-03-01", 5, "", 1.0), ("2025-03-01", 6, "", pytest.approx(55 / 60, abs=printed_tolerance(3)))]
    minutes = {5: 1.0, 6: 55 / 60}
    for r in frame.itertuples():
        assert r.recorded_min == pytest.approx(minutes[r.hour_utc], abs=printed_tolerance(3))
        assert r.per_recorded_hour == pytest.approx(r.n_windows / (minutes[r.hour_utc] / 60), abs=printed_tolerance(2))
    before = summary.read_bytes()
    summary.unlink()
    assert cli.main(["archive", "--summary", "--out", str(wide)]) == 0  # from the folder alone
    assert summary.read_bytes() == before


def test_untimed_and_timed_recordings_in_one_archive(kit, recordings, tmp_path):
    """A 19.5-s 44.1-kHz recording without a start time beside the timed ones: its last Raven
    selection ends at 19.5 s, and the summary gives it its own column and effort instead of
    dropping it."""
    crowsetta = pytest.importorskip("crowsetta")
    from streamer.archive.summary import read_summary, summary_grids

    folder = tmp_path / "in"
    shutil.copytree(recordings, folder)
    rng = np.random.default_rng(5)
    t = np.arange(int(44100 * 19.5)) / 44100
    write_audio(folder / "field" / "untimed.flac", 0.1 * np.sin(2 * np.pi * 700 * t) + 0.02 * rng.standard_normal(t.size), 44100)
    out = tmp_path / "out"
    # A threshold that every window of the short file reaches, so its last window holds events.
    assert cli.main(_args(kit, out, folder, "--format", "raven", "--min-score", "0", "--top-k", "1")) == 0
    boxes = crowsetta.formats.bbox.Raven.from_file(out / "in" / "field" / "untimed.flac.selections.txt", annot_col="Class").to_bbox()
    assert boxes and max(b.offset for b in boxes) == 19.5 and min(b.onset for b in boxes) == 0.0
    assert [b.onset for b in boxes] == sorted(b.onset for b in boxes)
    grids = summary_grids(read_summary(out))
    assert grids.recordings == ["in/field/untimed.flac"] and grids.dates == ["2025-03-01"]
    np.testing.assert_allclose(grids.untimed_minutes, [19.5 / 60])
    np.testing.assert_allclose(grids.timed_minutes[[5, 6]], [1.0, 55 / 60])
    assert grids.untimed_windows.sum() == 4  # every window of it, top-1 at score >= 0


def test_parquet_outputs_read_as_one_table(wide):
    n_rows = sum(len(pd.read_parquet(p)) for p in wide.rglob("*.parquet"))
    table = ds.dataset(wide, format="parquet").to_table()  # the README's one-liner
    assert table.num_rows == n_rows == 15 + 8
    frame = pd.read_parquet(wide)  # pandas over the folder
    assert len(frame) == n_rows
    names = sorted(f"in/{p.name.removesuffix('.parquet')}" for p in wide.rglob("*.parquet"))
    assert sorted(set(frame["file"])) == sorted(set(table.column("file").to_pylist())) == names
    assert len(Journal(wide).entries) == 2
