"""Failpoints (parsing, counting across processes, actions) and the file-writing rules (atomic,
normal permissions, no truncated submission ever installed)."""

import multiprocessing as mp
import os
import stat

import numpy as np
import pytest

from streamer import failpoints
from streamer.errors import ArtifactError, ConfigError, OutputWriteError
from streamer.audio import write_audio
from streamer.files import atomic_write_text, check_writable_file, make_temp_dir, remove_stale_temporaries, temporary_sibling
from streamer.infer.submission import SubmissionWriter


@pytest.fixture
def arm(monkeypatch, tmp_path):
    def _arm(spec: str) -> None:
        monkeypatch.setenv(failpoints.ENV, spec)
        monkeypatch.setenv(failpoints.STATE_ENV, str(tmp_path / "fp-state"))
        monkeypatch.setenv(failpoints.MAIN_PID_ENV, str(os.getpid()))
        failpoints.configure()

    return _arm


def test_parse_grammar_and_errors():
    rules = failpoints.parse("consumer.mid_inference=kill@3, parent.row_write[BC_1]=enospc@2+,decoder.read=nan")
    assert [(r.point, r.key, r.action, r.n, r.and_later) for r in rules] == [
        ("consumer.mid_inference", None, "kill", 3, False),
        ("parent.row_write", "BC_1", "enospc", 2, True),
        ("decoder.read", None, "nan", None, False),
    ]
    for bad, needle in (("nope.point=kill", "unknown failpoint"), ("decoder.read=explode", "unknown action"),
                        ("decoder.read", "cannot read"), ("decoder.read=kill@0", "counts start at 1")):
        with pytest.raises(ConfigError, match=needle):
            failpoints.parse(bad)


def test_unarmed_hit_does_nothing():
    failpoints.configure("")
    assert not failpoints.active()
    assert failpoints.hit("parent.row_write", "x") is None


def test_counts_and_keys(arm):
    arm("parent.reduction=raise@2,decoder.read[b/c.flac]=nan@1+")
    failpoints.hit("parent.reduction")  # 1st: nothing
    with pytest.raises(failpoints.FailpointError, match="parent.reduction"):
        failpoints.hit("parent.reduction")  # 2nd: raises
    failpoints.hit("parent.reduction")  # 3rd: nothing again
    assert failpoints.hit("decoder.read", "a") is None  # another key: not counted
    assert failpoints.hit("decoder.read", "b/c.flac") == "nan"  # a key may be a relative path
    assert failpoints.hit("decoder.read", "b/c.flac") == "nan"  # @1+: every later hit too


def test_rules_of_one_point_share_one_count_per_hit(arm, tmp_path):
    """A counting rule beside a firing one does not shift its count; the counters are read
    back from the folder a test names."""
    arm("parent.reduction=count,parent.reduction=raise@3,decoder.read[b/c.flac]=count")
    failpoints.hit("parent.reduction")
    failpoints.hit("parent.reduction")
    with pytest.raises(failpoints.FailpointError):
        failpoints.hit("parent.reduction")
    failpoints.hit("decoder.read", "b/c.flac")
    failpoints.hit("decoder.read", "other")
    state = tmp_path / "fp-state"
    assert failpoints.counted(state, "parent.reduction") == 3
    assert failpoints.counted(state, "decoder.read[b/c.flac]") == 1 and failpoints.counted(state, "decoder.read") == 0


def test_a_run_counts_into_the_folder_the_test_names(monkeypatch, tmp_path):
    monkeypatch.setenv(failpoints.ENV, "parent.reduction=count")
    monkeypatch.setenv(failpoints.COUNTERS_ENV, str(tmp_path / "mine"))
    for name in (failpoints.STATE_ENV, failpoints.MAIN_PID_ENV, failpoints.MAIN_HOST_ENV):
        monkeypatch.setenv(name, "")  # restored after the test: configure() sets them
    for _ in range(2):  # two runs in a row, each started fresh, count on
        failpoints.configure(fresh=True)
        failpoints.hit("parent.reduction")
    assert failpoints.counted(tmp_path / "mine", "parent.reduction") == 2


def test_enospc_is_an_oserror(arm):
    arm("parent.before_rename=enospc")
    with pytest.raises(OSError) as info:
        failpoints.hit("parent.before_rename")
    assert info.value.errno == 28


def _hit_in_child(queue) -> None:
    failpoints.configure()
    try:
        failpoints.hit("decoder.read")
        queue.put("passed")
    except failpoints.FailpointError:
        queue.put("raised")


def test_hits_are_counted_across_processes(arm):
    """The 2nd hit of the run raises, whichever process makes it."""
    arm("decoder.read=raise@2")
    failpoints.hit("decoder.read")  # the 1st, here
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    process = ctx.Process(target=_hit_in_child, args=(queue,))
    process.start()
    assert queue.get(timeout=60) == "raised"
    process.join(timeout=30)


def test_kill_action_kills_the_process(arm):
    arm("decoder.read=kill")
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    process = ctx.Process(target=_hit_in_child, args=(queue,))
    process.start()
    process.join(timeout=60)
    assert process.exitcode == -9


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_get_the_umask_s_permissions(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        writer = SubmissionWriter(tmp_path / "sub.csv", ["s1"], ("c1", "c2"))
        writer.set_file(0, np.full((12, 2), 0.5, np.float32))
        writer.close()
        fd, tmp = temporary_sibling(tmp_path / "b.bin")
        os.close(fd)
        folder = make_temp_dir(tmp_path, ".kit-")
        write_audio(tmp_path / "a.flac", np.zeros(3200, np.float32), 32000)
    finally:
        os.umask(old)
    assert _mode(folder) == 0o777 & ~umask
    assert _mode(tmp_path / "a.flac") == 0o666 & ~umask
    expected = 0o666 & ~umask
    assert _mode(tmp_path / "a.txt") == expected
    assert _mode(tmp_path / "sub.csv") == expected
    assert _mode(tmp) == expected


def test_a_failed_row_write_never_installs_a_short_csv(tmp_path, arm):
    out = tmp_path / "sub.csv"
    out.write_text("the previous submission\n")
    arm("parent.row_write=enospc@2")
    writer = SubmissionWriter(out, ["s1", "s2", "s3"], ("c1",))
    writer.set_file(0, np.full((12, 1), 0.5, np.float32))
    with pytest.raises(OutputWriteError, match="No space left on device"):
        writer.set_file(1, np.full((12, 1), 0.5, np.float32))
    with pytest.raises(OutputWriteError):  # later blocks do not wait forever: the writer is broken
        writer.set_file(2, np.full((12, 1), 0.5, np.float32))
    with pytest.raises(OutputWriteError):
        writer.close()
    assert out.read_text() == "the previous submission\n"  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fp-state", "sub.csv"]  # no temporary file left


def test_a_failed_rename_leaves_the_destination_alone(tmp_path, arm):
    out = tmp_path / "sub.csv"
    arm("parent.before_rename=raise")
    writer = SubmissionWriter(out, ["s1"], ("c1",))
    writer.set_file(0, np.full((12, 1), 0.25, np.float32))
    with pytest.raises(failpoints.FailpointError):
        writer.close()
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["fp-state"]


def test_rows_are_utf8_whatever_the_locale(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONIOENCODING", "ascii")
    writer = SubmissionWriter(tmp_path / "sub.csv", ["café_1"], ("c1",))
    writer.set_file(0, np.full((12, 1), 0.5, np.float32))
    writer.close()
    assert (tmp_path / "sub.csv").read_text(encoding="utf-8").splitlines()[1].startswith("café_1_5,")


def test_destinations_that_cannot_be_written_are_refused(tmp_path):
    (tmp_path / "adir").mkdir()
    with pytest.raises(ConfigError, match="is a folder"):
        check_writable_file(tmp_path / "adir", "--out")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError, match="is not a folder"):
        check_writable_file(tmp_path / "afile" / "sub.csv", "--out")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as a user that ignores folder permissions")
        with pytest.raises(ConfigError, match="cannot write there"):
            check_writable_file(locked / "sub.csv", "--out")
    finally:
        locked.chmod(0o700)
    assert check_writable_file(tmp_path / "new" / "sub.csv", "--out") == tmp_path / "new" / "sub.csv"
    assert not list((tmp_path / "new").iterdir())  # the probe left nothing


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    dead = tmp_path / f".sub.csv.{2**22 + 12345}.abc.tmp"
    live = tmp_path / f".sub.csv.{os.getpid()}.def.tmp"
    other = tmp_path / ".other.csv.1.ghi.tmp"
    for p in (dead, live, other):
        p.write_text("x")
    assert remove_stale_temporaries(tmp_path / "sub.csv") == 1
    assert not dead.exists() and live.exists() and other.exists()


def test_every_audio_file_of_test_soundscapes_is_found(kit_copy, caplog):
    from streamer.audio import write_audio
    from streamer.metadata import load_competition
    from streamer.stages import list_jobs

    test_dir = kit_copy.data_dir / "test_soundscapes"
    for p in test_dir.iterdir():
        p.unlink()
    tone = np.sin(np.arange(32000) / 5.0).astype(np.float32) * 0.1
    write_audio(test_dir / "b_upper.OGG", tone, 32000)
    write_audio(test_dir / "a_flac.flac", tone, 32000)
    write_audio(test_dir / "c.flac", tone, 32000)
    (test_dir / "c.flac").rename(test_dir / "c_noext")  # no extension: soundfile is asked, and reads it
    (test_dir / "notes.txt").write_text("not audio")
    (test_dir / ".DS_Store").write_bytes(b"\0")
    competition = load_competition(kit_copy.data_dir)
    with caplog.at_level("WARNING"):
        files, source = competition.audio_files(20)
    assert [p.name for p in files] == ["a_flac.flac", "b_upper.OGG", "c_noext"] and source == "test_soundscapes"
    assert "notes.txt" in caplog.text and ".DS_Store" not in caplog.text
    (test_dir / "a_flac.ogg").write_bytes((test_dir / "b_upper.OGG").read_bytes())
    with pytest.raises(ArtifactError, match="same name stem 'a_flac'"):
        list_jobs(competition.audio_files(20)[0])
    for p in test_dir.iterdir():
        if p.name != "notes.txt" and not p.name.startswith("."):
            p.unlink()
    with pytest.raises(ArtifactError, match="holds 1 file\\(s\\) but none is audio"):
        competition.audio_files(20)


@pytest.mark.parametrize("what", ["out_is_a_folder", "out_below_a_file", "report_is_a_folder"])
def test_unwritable_outputs_are_refused_before_anything_runs(kit, tmp_path, monkeypatch, caplog, what):
    from streamer import cli, stages

    from conftest import infer_args

    def boom(*args, **kwargs):
        raise AssertionError("the run went on past the output checks")

    monkeypatch.setattr(stages, "read_frame", boom)
    monkeypatch.setattr(stages, "prepare", boom)
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("x")
    out, extra = tmp_path / "sub.csv", []
    if what == "out_is_a_folder":
        out = tmp_path / "adir"
    elif what == "out_below_a_file":
        out = tmp_path / "afile" / "sub.csv"
    else:
        extra = ["--report-json", str(tmp_path / "adir")]
    with caplog.at_level("ERROR"):
        assert cli.main(infer_args(kit, out, *extra)) == 2
    assert ("is a folder" if what != "out_below_a_file" else "is not a folder") in caplog.text
