"""The resume journal: finished, failed, changed and half-written records."""

import os

from streamer.archive.journal import DONE, FAILED, JOURNAL_NAME, Journal


def test_done_failed_and_changed_inputs(tmp_path):
    rec = tmp_path / "a.ogg"
    rec.write_bytes(b"123")
    out = tmp_path / "out" / "a.ogg.parquet"
    out.parent.mkdir()
    out.write_bytes(b"p")
    j = Journal(tmp_path / "out")
    assert not j.is_done(rec, out)
    j.record(rec, DONE, "a.ogg.parquet")
    assert Journal(tmp_path / "out").is_done(rec, out)  # survives a restart
    out.unlink()
    assert not Journal(tmp_path / "out").is_done(rec, out)  # output gone: redo
    out.write_bytes(b"p")
    rec.write_bytes(b"12345")  # the recording changed: redo
    assert not Journal(tmp_path / "out").is_done(rec, out)
    j.record(rec, FAILED, "a.ogg.parquet", "cannot decode")
    failed = Journal(tmp_path / "out").failed()
    assert [(e.status, e.reason) for e in failed] == [(FAILED, "cannot decode")]


def test_a_line_cut_short_is_ignored(tmp_path, caplog):
    rec = tmp_path / "a.ogg"
    rec.write_bytes(b"1")
    j = Journal(tmp_path)
    j.record(rec, DONE, "a.ogg.parquet")
    with open(tmp_path / JOURNAL_NAME, "a") as handle:
        handle.write('{"key": {"path": "/x", "si')  # a crash in the middle of a write
    with caplog.at_level("WARNING"):
        again = Journal(tmp_path)
    assert "line 2" in caplog.text
    assert len(again.entries) == 1
    other = tmp_path / "b.ogg"
    other.write_bytes(b"2")
    again.record(other, DONE, "b.ogg.parquet")  # appended after the broken line, still whole
    assert set(Journal(tmp_path).entries) == {str(rec.resolve()), str(other.resolve())}
    assert os.path.getsize(tmp_path / JOURNAL_NAME) > 0
