"""Site and per-chunk UTC hour of archive recordings."""

from datetime import datetime, timezone
from pathlib import Path

import pytest

from streamer.archive.timing import RecordingTime, parse_utc, read_metadata_csv, recording_time
from streamer.errors import ConfigError


def test_competition_name_gives_site_and_hours_across_midnight():
    t = recording_time(Path("/x/BC2026_Train_0007_S13_20250101_223000.ogg"))
    assert t.site == "S13" and t.start_utc == datetime(2025, 1, 1, 22, 30, tzinfo=timezone.utc)
    assert [t.hour_at(s) for s in (0, 1799, 1800, 5400)] == [22, 22, 23, 0]


def test_options_then_unknown():
    start = parse_utc("2024-06-01T05:59:30")
    t = recording_time(Path("recorder_007.flac"), site="S42", start_utc=start)
    assert t.site == "S42" and t.hour_at(0) == 5 and t.hour_at(60) == 6
    unknown = recording_time(Path("recorder_007.flac"))
    assert unknown == RecordingTime() and unknown.hour_at(99999) == 0


def test_metadata_csv_wins(tmp_path):
    rec = tmp_path / "audio" / "BC2026_Train_0007_S13_20250101_223000.ogg"
    rec.parent.mkdir()
    rec.write_bytes(b"")
    csv = tmp_path / "meta.csv"
    csv.write_text("path,site,start\naudio/BC2026_Train_0007_S13_20250101_223000.ogg,S99,2020-02-02T10:00:00+02:00\n")
    meta = read_metadata_csv(csv)
    t = recording_time(rec, metadata=meta)
    assert t.site == "S99" and t.hour_at(0) == 8  # converted to UTC


def test_bad_metadata(tmp_path):
    csv = tmp_path / "meta.csv"
    csv.write_text("file,site\nx,S1\n")
    with pytest.raises(ConfigError, match="missing columns"):
        read_metadata_csv(csv)
    csv.write_text("path,site,start\nx.ogg,S1,yesterday\n")
    with pytest.raises(ConfigError, match="line 2"):
        read_metadata_csv(csv)
