"""`streamer demo` and `streamer make-standins` from the command line."""

import pandas as pd

from streamer import cli
from streamer.demo import kit_dir


def test_demo_builds_kit_once_and_writes_submission(tmp_path, capsys, monkeypatch):
    cache = tmp_path / "cache"
    assert cli.main(["demo", "--cache-dir", str(cache)]) == 0
    printed = capsys.readouterr().out
    out = cache / "demo" / "submission.csv"
    assert f"submission: {out}" in printed and "72 rows = 6 files x 12 windows" in printed
    sub = pd.read_csv(out)
    assert sub.shape == (72, 235)

    # second run reuses the cached kit: building it again would fail here
    import streamer.standins as standins

    def no_rebuild(*a, **k):
        raise AssertionError("the cached kit was rebuilt")

    monkeypatch.setattr(standins, "make_standins", no_rebuild)
    out2 = tmp_path / "again.csv"
    assert cli.main(["demo", "--cache-dir", str(cache), "--out", str(out2)]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(out2), sub)
    assert (kit_dir(cache) / "KIT_COMPLETE").is_file()


def test_incomplete_kit_is_rebuilt(tmp_path):
    from streamer.demo import ensure_kit

    target = kit_dir(tmp_path)
    (target / "perch").mkdir(parents=True)  # a half-written kit from an interrupted build
    kit = ensure_kit(tmp_path)
    assert kit.perch_onnx.is_file() and (target / "KIT_COMPLETE").is_file()


def test_make_standins_command(tmp_path, capsys):
    assert cli.main(["make-standins", str(tmp_path / "kit"), "--seed", "3"]) == 0
    printed = capsys.readouterr().out
    assert "--moe-dir" in printed and (tmp_path / "kit" / "perch" / "perch_v2.onnx").is_file()


def test_bad_flag_values_exit_2(tmp_path, capsys):
    code = cli.main(["infer", "--data-dir", str(tmp_path), "--perch", str(tmp_path), "--moe-dir", str(tmp_path), "--blend-cnn", "-1"])
    assert code == 2
    try:
        cli.main(["infer", "--data-dir", "x", "--perch", "y", "--moe-dir", "z", "--threads", "zero"])
    except SystemExit as exc:  # argparse's own usage error
        assert exc.code == 2
    else:
        raise AssertionError("argparse accepted --threads zero")


def test_global_options_before_or_after_the_command():
    parser = cli.build_parser()
    for argv, level, quiet in (
        (["infer", "--data-dir", "d", "--perch", "p", "--moe-dir", "m"], "INFO", False),
        (["-q", "infer", "--data-dir", "d", "--perch", "p", "--moe-dir", "m"], "INFO", True),
        (["infer", "--quiet", "--log-level", "DEBUG", "--data-dir", "d", "--perch", "p", "--moe-dir", "m"], "DEBUG", True),
        (["--log-level", "ERROR", "archive", "--status", "--out", "o"], "ERROR", False),
        (["archive", "-q", "--status", "--out", "o"], "INFO", True),
    ):
        args = parser.parse_args(argv)
        assert (args.log_level, args.quiet) == (level, quiet), argv


def test_every_command_shows_examples(capsys):
    import pytest

    for command in ("infer", "archive", "score", "cache", "sweep", "bench", "bench-archive", "tune", "make-standins", "demo"):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        assert f"examples:\n  streamer {command}" in capsys.readouterr().out


def test_a_folder_of_recordings_as_data_dir_points_to_archive(kit, tmp_path, caplog):
    import shutil

    from conftest import infer_args

    recordings = tmp_path / "recordings"
    shutil.copytree(kit.data_dir / "test_soundscapes", recordings)
    with caplog.at_level("ERROR"):
        assert cli.main(infer_args(kit, tmp_path / "sub.csv", "--data-dir", str(recordings))) == 2
    assert "not a competition folder, no sample_submission.csv" in caplog.text
    assert "use 'streamer archive'" in caplog.text


def test_no_audio_anywhere_is_said_plainly(kit_copy):
    import shutil

    from streamer.metadata import load_competition

    shutil.rmtree(kit_copy.data_dir / "test_soundscapes")
    shutil.rmtree(kit_copy.data_dir / "train_soundscapes")
    files, source = load_competition(kit_copy.data_dir).audio_files(20)
    assert files == [] and "there is no train_soundscapes/" in source
