"""The archive's command line when the user gets something wrong: every bad ``--out``, a missing
folder for ``--status``, abbreviated or misspelt flags, an empty or unreadable recording, a list
whose paths do not resolve. Each is one clear line and exit 2 (or a documented failure of that
input alone), before any model loads."""

import logging
import math

import numpy as np
import pytest

from streamer import cli, stages
from streamer.archive import scorer
from streamer.archive.fingerprint import FINGERPRINT_NAME
from streamer.archive.run import _Progress
from streamer.audio import write_audio
from streamer.errors import ConfigError

from conftest import archive_args



@pytest.fixture
def src(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    write_audio(folder / "rec.flac", 0.05 * np.random.default_rng(1).standard_normal(32000 * 7), 32000)
    return folder


@pytest.fixture
def no_models_load(monkeypatch):
    """Anything past the output checks fails the test: the refusal must come first."""
    def boom(*args, **kwargs):
        raise AssertionError("the run went on past the output checks")

    monkeypatch.setattr(stages, "prepare", boom)
    monkeypatch.setattr(stages, "prepare_perch_only", boom)


@pytest.mark.parametrize("case,needle", [
    ("existing_file", "is a file; give a folder"),
    ("below_a_file", "is a file, not a folder"),
    ("named_like_a_csv", "names a folder of outputs (one file per input, plus the summary), not one .csv file; give a folder name such as"),
    ("existing_plain_folder_named_like_a_csv", "not one .csv file"),
])
def test_a_bad_out_is_one_line_and_exit_2_before_any_model_loads(kit, src, tmp_path, capsys, no_models_load, case, needle):
    (tmp_path / "afile").write_text("x")
    out = {"existing_file": tmp_path / "afile", "below_a_file": tmp_path / "afile" / "scores",
           "named_like_a_csv": tmp_path / "x.csv", "existing_plain_folder_named_like_a_csv": tmp_path / "y.csv"}[case]
    if case.startswith("existing_plain"):
        out.mkdir()
    assert cli.main(archive_args(kit, out, src, "--format", "csv")) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1 and needle in errors[0] and str(out) in errors[0], err
    assert "Traceback" not in err
    assert (tmp_path / "afile").read_text() == "x"
    if case == "named_like_a_csv":
        assert not out.exists()  # no folder x.csv/ made


def test_a_streamer_folder_named_like_a_file_is_accepted(tmp_path):
    from streamer.archive.run import check_out_dir

    out = tmp_path / "scores.csv"
    out.mkdir()
    with pytest.raises(ConfigError, match="not one .csv file"):
        check_out_dir(out)
    (out / FINGERPRINT_NAME).write_text("{}")  # an archive folder of an earlier run
    assert check_out_dir(out) == out
    assert check_out_dir(tmp_path / "new" / "scores") == tmp_path / "new" / "scores"  # created later, by the run


@pytest.mark.parametrize("flag", ["--status", "--summary"])
def test_status_and_summary_of_a_missing_folder_exit_2(tmp_path, caplog, flag):
    with caplog.at_level("ERROR"):
        assert cli.main(["archive", flag, "--out", str(tmp_path / "nope")]) == 2
    assert "no such folder" in caplog.text
    (tmp_path / "afile").write_text("x")
    assert cli.main(["archive", flag, "--out", str(tmp_path / "afile")]) == 2
    assert "is not a folder" in caplog.text


@pytest.mark.parametrize("argv,usage,needle", [
    (["archive", "in", "--out", "o", "--min-scor", "0.6"], "usage: streamer archive", "unrecognized arguments: --min-scor 0.6"),
    (["archive", "in", "--out", "o", "--fromat", "raven"], "usage: streamer archive", "unrecognized arguments: --fromat"),
    (["infer", "--data-dir", "d", "--perch", "p", "--moe-dir", "m", "--budget", "5"], "usage: streamer infer",
     "unrecognized arguments: --budget 5"),
    (["--log-lev", "DEBUG", "archive", "--status", "--out", "o"], "usage: streamer", "invalid choice: 'DEBUG'"),  # not --log-level
    (["archive", "--log-lev", "DEBUG", "--status", "--out", "o"], "usage: streamer archive", "unrecognized arguments: --log-lev"),
])
def test_no_abbreviations_and_the_command_s_own_usage(capsys, argv, usage, needle):
    """argparse would take --min-scor for --min-score; a typo is an error, reported with the
    usage of the command it was given to."""
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(usage + " ") and needle in err, err


def test_every_parser_refuses_abbreviations():
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices
    assert not parser.allow_abbrev and not [name for name, p in commands.items() if p.allow_abbrev]
    assert not cli._global_options(True).allow_abbrev and not cli._global_options(False).allow_abbrev


def test_empty_and_unreadable_inputs_fail_before_any_model_loads(kit, tmp_path, capsys, monkeypatch):
    """A 0-byte file and one whose header is not audio: failed at once with the reason (no model
    loaded for them: here none at all), the path printed once, reported and journaled."""
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "empty.wav").write_bytes(b"")
    (folder / "garbage.flac").write_bytes(b"not audio at all" * 64)

    def boom(*args, **kwargs):
        raise AssertionError("models were loaded for inputs that failed their header check")

    monkeypatch.setattr(scorer.ArchiveScorer, "__init__", boom)
    out = tmp_path / "out"
    assert cli.main(archive_args(kit, out, folder, "--report-json", str(tmp_path / "r.json"))) == 1
    captured = capsys.readouterr()
    text = captured.out + captured.err
    for name, reason in (("empty.wav", "empty file (0 bytes)"), ("garbage.flac", "not audio soundfile can read")):
        assert (folder / name).resolve() == folder / name  # so one count finds every form of the path
        assert text.count(str(folder / name)) == 1, text  # the warning names it; the reason does not repeat it
        assert f"failed: in/{name}: {reason}" in text
    assert "nan" not in text
    import json

    doc = json.loads((tmp_path / "r.json").read_text())
    assert sorted(doc["failed"]) == ["in/empty.wav", "in/garbage.flac"] and not doc["done"]


def test_the_eta_is_never_nan(caplog):
    progress = _Progress(120.0, 2, enabled=False)
    with caplog.at_level(logging.INFO, logger="streamer.archive.run"):
        progress.file_done("a.flac", False, 0.0, 60.0)  # the first input failed: no rate yet
        assert "ETA unknown" in caplog.text and "nan" not in caplog.text
        progress.file_done("b.flac", False, 0.0, 60.0)
    assert "ETA 0 s" in caplog.text and "nan" not in caplog.text
    assert all(math.isfinite(v) for v in progress.rates())
