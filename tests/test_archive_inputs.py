"""Archive inputs: folders, files and list files, with stable, safe output names."""

from pathlib import PurePosixPath

import pytest

from streamer.archive.inputs import expand_inputs
from streamer.errors import ConfigError


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_folder_file_and_list(tmp_path):
    root = tmp_path / "site_a"
    a = _touch(root / "2024" / "a.flac")
    b = _touch(root / "b.WAV")
    _touch(root / "notes.md")  # not audio
    single = _touch(tmp_path / "elsewhere" / "c.ogg")
    listed = _touch(tmp_path / "lists" / "deep" / "d.mp3")
    lst = tmp_path / "lists" / "todo.txt"
    lst.write_text("# recordings\n\ndeep/d.mp3\n")
    got = expand_inputs([root, single, lst])
    assert [(e.path, e.rel) for e in got] == [
        (a, PurePosixPath("site_a/2024/a.flac")),
        (b, PurePosixPath("site_a/b.WAV")),
        (single, PurePosixPath("c.ogg")),
        (listed, PurePosixPath("deep/d.mp3")),
    ]


def test_same_file_twice_is_scored_once(tmp_path):
    f = _touch(tmp_path / "x.ogg")
    assert len(expand_inputs([f, tmp_path / "x.ogg"])) == 1


def test_clashing_names_and_missing_paths(tmp_path):
    a = _touch(tmp_path / "one" / "x.ogg")
    b = _touch(tmp_path / "two" / "x.ogg")
    with pytest.raises(ConfigError, match="x.ogg.parquet"):
        expand_inputs([a, b])
    with pytest.raises(ConfigError, match="no such file"):
        expand_inputs([tmp_path / "nope.ogg"])
    lst = tmp_path / "l.txt"
    lst.write_text("missing.ogg\n")
    with pytest.raises(ConfigError, match="line 1"):
        expand_inputs([lst])


def test_a_list_resolves_its_paths_against_its_own_folder_and_says_so(tmp_path, monkeypatch):
    """A list travels with its recordings: its relative paths mean the same from any working
    directory, and a missing one is named as resolved, with where that came from."""
    rec = _touch(tmp_path / "survey" / "night" / "a.flac")
    lst = tmp_path / "survey" / "todo.txt"
    lst.write_text("night/a.flac\nnight/b.flac\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with pytest.raises(ConfigError) as error:
        expand_inputs([lst])
    message = str(error.value)
    assert message == (f"{tmp_path / 'survey' / 'night' / 'b.flac'}: no such file; listed in {lst} (line 2), "
                       f"resolved against its folder {(tmp_path / 'survey').resolve()}")
    lst.write_text("night/a.flac\n")
    assert [e.path.resolve() for e in expand_inputs([lst])] == [rec.resolve()]


def test_list_entries_cannot_escape_the_output_folder(tmp_path):
    f = _touch(tmp_path / "a" / "rec.ogg")
    lst = tmp_path / "a" / "sub" / "l.txt"
    lst.parent.mkdir()
    lst.write_text("../rec.ogg\n")
    (entry,) = expand_inputs([lst])
    assert entry.path.resolve() == f.resolve() and entry.rel == PurePosixPath("rec.ogg")


def test_no_audio_at_all_is_an_error_and_an_empty_folder_a_warning(tmp_path, caplog):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt.bak").write_text("not audio")
    with pytest.raises(ConfigError, match="no audio files found in .*empty"):
        expand_inputs([empty])
    full = tmp_path / "full"
    full.mkdir()
    (full / "a.wav").write_bytes(b"")
    assert [str(e.rel) for e in expand_inputs([empty, full])] == ["full/a.wav"]
    assert "empty: no audio files in this folder" in caplog.text
