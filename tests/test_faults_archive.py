"""The fault matrix of ``streamer archive``: a failpoint × action per cell, each run as the real
command in its own process group. For each cell: the documented exit code; no child process
left; and the outputs after a plain rerun (with ``--retry-failed`` where an input was reported
failed) equal to an uninterrupted run's, with no temporary file left and every input journaled
once as done. Faults are triggered at failpoints, never by timing."""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import psutil
import pytest

from streamer import failpoints
from streamer.archive.checkpoint import PARTS_FOLDER
from streamer.archive.journal import JOURNAL_NAME
from streamer.audio import write_audio

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]

LENGTHS_S = (130, 65, 20)
VICTIM = "in/rec1.flac"
BASE = ("--workers", "1", "--threads", "1", "--no-cnn", "--no-crnn")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("archive") / "in"
    folder.mkdir()
    rng = np.random.default_rng(5)
    for i, seconds in enumerate(LENGTHS_S):
        t = np.arange(32000 * seconds) / 32000
        tone = 0.05 * np.sin(2 * np.pi * (700 + 250 * i) * t) * (np.sin(2 * np.pi * t / 6) > 0)
        write_audio(folder / f"rec{i}.flac", tone + 0.02 * rng.standard_normal(t.shape), 32000)
    return folder


def _pgid(pid):
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def archive(kit, inputs, out, spec="", *extra, args=BASE, counters=None):
    """Run the real command; ``counters``: the folder its failpoints count into (kept across
    runs, for a test that counts the chunks scored by a stopped run and its rerun)."""
    env = {**os.environ, "STREAMER_FAILPOINTS": spec}
    env.pop("STREAMER_FAILPOINTS_STATE", None)
    env.pop(failpoints.COUNTERS_ENV, None)
    if counters is not None:
        env[failpoints.COUNTERS_ENV] = str(counters)
    report = out.parent / f"{out.name}.json"
    report.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "streamer", "-q", "archive", str(inputs), "--out", str(out), "--data-dir", str(kit.data_dir),
           "--perch", str(kit.perch_onnx), "--moe-dir", str(kit.moe_dir), "--report-json", str(report), *args, *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    stdout, stderr = proc.communicate(timeout=200)
    group = [p for p in psutil.process_iter() if _pgid(p.pid) == proc.pid]
    _, alive = psutil.wait_procs(group, timeout=10)  # children die with the run, whatever ended it
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], f"children left: {alive}"
    doc = json.loads(report.read_text()) if report.exists() else None
    return proc.returncode, doc, stdout + stderr


def read_all(out):
    return {str(p.relative_to(out)): pd.read_parquet(p) for p in sorted(out.rglob("*.parquet"))}


@pytest.fixture(scope="module")
def reference(kit, inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "out"
    code, _, text = archive(kit, inputs, out)
    assert code == 0, text[-3000:]
    return read_all(out)


def assert_resumed(kit, inputs, out, reference, retry_failed=False):
    """A plain rerun (no failpoint) completes the folder: equal to the uninterrupted run."""
    code, _, text = archive(kit, inputs, out, "", *(["--retry-failed"] if retry_failed else []))
    assert code == 0, text[-3000:]
    got = read_all(out)
    assert sorted(got) == sorted(reference)
    for name in reference:
        pd.testing.assert_frame_equal(got[name], reference[name], check_exact=True)
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    lines = [json.loads(line) for line in (out / JOURNAL_NAME).read_text().splitlines()]
    done = {}
    for line in lines:
        done[line["output"]] = line["status"]
    assert sorted(done.values()) == ["done"] * len(LENGTHS_S)


@pytest.mark.parametrize("spec", [
    "archive.worker_chunk=kill@2",
    "archive.worker_chunk=raise@2",
    "archive.worker_chunk=enospc@3",
    "archive.worker_setup=kill@1",
])
def test_recovered(kit, inputs, reference, tmp_path, spec):
    out = tmp_path / "out"
    code, doc, text = archive(kit, inputs, out, spec)
    assert code == 0, text[-3000:]
    assert not doc["failed"] and len(doc["done"]) == len(LENGTHS_S)
    assert_resumed(kit, inputs, out, reference)


def test_a_hung_worker_is_killed_and_its_input_redone(kit, inputs, reference, tmp_path):
    out = tmp_path / "out"
    # A healthy 60-s chunk takes well under a second here: 5 s is far above it.
    code, doc, text = archive(kit, inputs, out, "archive.worker_chunk=hang@2", "--task-timeout", "5")
    assert code == 0, text[-3000:]
    assert "(hung)" in text
    assert_resumed(kit, inputs, out, reference)


def test_a_hung_ray_actor_is_killed_and_its_input_redone(kit, inputs, reference, tmp_path):
    """The Ray engine's hang check: an actor that finishes no chunk for --task-timeout is
    killed, Ray restarts it and the input is scored again, equal to the reference."""
    pytest.importorskip("ray")
    out = tmp_path / "out"
    ray_args = ("--engine", "ray", "--workers", "1", "--threads", "1", "--no-cnn", "--no-crnn")
    code, doc, text = archive(kit, inputs, out, "archive.worker_chunk=hang@2", "--task-timeout", "5", args=ray_args)
    assert code == 0, text[-3000:]
    assert "(hung)" in text
    assert_resumed(kit, inputs, out, reference)


@pytest.mark.parametrize("spec,reason", [
    (f"archive.worker_chunk[{VICTIM}]=kill", "the worker scoring it died 3 times (last: killed by SIGKILL"),
    (f"archive.worker_chunk[{VICTIM}]=nan", "Perch gave non-finite outputs"),
])
def test_one_input_fails_alone(kit, inputs, reference, tmp_path, spec, reason):
    out = tmp_path / "out"
    code, doc, text = archive(kit, inputs, out, spec)
    assert code == 1, text[-3000:]
    assert list(doc["failed"]) == [VICTIM] and reason in doc["failed"][VICTIM]
    assert len(doc["done"]) == len(LENGTHS_S) - 1
    assert_resumed(kit, inputs, out, reference, retry_failed=True)


@pytest.mark.parametrize("spec,expected", [
    ("parent.checks=sigint", 130),  # while the model files are checked, before anything is scored
    ("archive.worker_chunk=sigint@3", 130),
    ("archive.journal_append=sigint@2", 130),
    ("archive.summary=sigint", 130),  # the last moment of a run: the summary's figure is being drawn
    ("archive.journal_append=kill@2", -9),
    ("archive.journal_append=enospc@2", 1),
])
def test_interrupted_runs_resume_to_the_same_outputs(kit, inputs, reference, tmp_path, spec, expected):
    out = tmp_path / "out"
    code, doc, text = archive(kit, inputs, out, spec)
    assert code == expected, text[-3000:]
    if expected == 130:  # Ctrl-C: the report of what was done is written before the exit
        assert doc is not None and len(doc["done"]) + len(doc["unfinished"]) == len(LENGTHS_S), text[-3000:]
        assert "Traceback" not in text
    if spec.startswith("parent.checks"):
        assert not doc["done"] and not out.exists()
    if spec.startswith("archive.summary"):  # everything was scored; the summary is whole, not half-written
        assert sorted(doc["done"]) == sorted(f"in/rec{i}.flac" for i in range(len(LENGTHS_S))) and not doc["unfinished"]
        summary = pd.read_csv(out / "_summary.csv")
        assert list(summary.columns)[-2:] == ["recorded_min", "per_recorded_hour"]
        effort = pd.read_csv(out / "_effort.csv", keep_default_na=False)
        assert effort["recorded_min"].sum() == pytest.approx(sum(LENGTHS_S) / 60, abs=len(effort) * 1e-3)
        png = out / "_summary.png"
        if png.exists():  # drawn when something was detected: whole
            data = png.read_bytes()
            assert data.startswith(b"\x89PNG\r\n\x1a\n") and data.endswith(b"IEND\xaeB`\x82")
        assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    if spec.endswith("enospc@2"):
        assert "could not append to the journal" in text
    assert_resumed(kit, inputs, out, reference)


def test_workers_that_cannot_load_their_models_stop_before_scoring(kit, inputs, tmp_path):
    out = tmp_path / "out"
    code, _, text = archive(kit, inputs, out, "archive.worker_setup=raise")
    assert code == 2, text[-3000:]
    assert "every worker process kept dying" in text
    assert not list(out.rglob("*.parquet"))


@pytest.mark.parametrize("spec", ["archive.worker_chunk=raise@2", f"archive.worker_chunk[{VICTIM}]=nan"])
def test_sequential_engine(kit, inputs, reference, tmp_path, spec):
    out = tmp_path / "out"
    code, doc, text = archive(kit, inputs, out, spec, args=("--engine", "sequential", "--threads", "1", "--no-cnn", "--no-crnn"))
    assert code == (1 if "nan" in spec else 0), text[-3000:]
    assert_resumed(kit, inputs, out, reference, retry_failed=True)


@pytest.mark.parametrize("spec", ["archive.worker_chunk=raise@2", f"archive.worker_chunk[{VICTIM}]=nan"])
def test_ray_engine(kit, inputs, reference, tmp_path, spec):
    pytest.importorskip("ray")
    out = tmp_path / "out"
    code, doc, text = archive(kit, inputs, out, spec, args=("--engine", "ray", "--workers", "1", "--threads", "1", "--no-cnn", "--no-crnn"))
    assert code == (1 if "nan" in spec else 0), text[-3000:]
    if "nan" in spec:
        assert list(doc["failed"]) == [VICTIM]
    assert_resumed(kit, inputs, out, reference, retry_failed=True)


# ---------------------------------------------------------------------------- one input split across workers

SPLIT = ("--workers", "2", "--threads", "1", "--no-cnn", "--no-crnn")
LONG_NAME = "in/long.flac"


@pytest.fixture(scope="module")
def long_input(tmp_path_factory):
    """One resampled stereo input (44.1 kHz, 250 s): two ranges of chunks on two workers."""
    from test_archive_ranges import make_stereo_44k

    folder = tmp_path_factory.mktemp("split") / "in"
    folder.mkdir()
    make_stereo_44k(folder / "long.flac", 250)
    return folder


@pytest.fixture(scope="module")
def split_reference(kit, long_input, tmp_path_factory):
    out = tmp_path_factory.mktemp("split-ref") / "out"
    code, doc, text = archive(kit, long_input, out, args=SPLIT)
    assert code == 0, text[-3000:]
    assert doc["ranges"] == {LONG_NAME: 2}
    return read_all(out)


def assert_split_resumed(kit, long_input, out, reference, retry_failed=False, args=SPLIT):
    """A plain rerun completes the folder, equal to the uninterrupted split run; no kept chunks
    or temporary files are left, and the input is journaled done. The input is resampled, and a
    run that went on after kept chunks started its resampler at another chunk than the
    reference's ranges did: the scores are equal to float32 round-off (the 32-kHz cells below
    are equal bit for bit)."""
    from test_archive_ranges import _assert_close

    code, doc, text = archive(kit, long_input, out, "", *(["--retry-failed"] if retry_failed else []), args=args)
    assert code == 0, text[-3000:]
    got = read_all(out)
    assert sorted(got) == sorted(reference)
    for name in reference:
        _assert_close(got[name], reference[name])
    assert not (out / PARTS_FOLDER).exists() and not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    status = {}
    for line in (out / JOURNAL_NAME).read_text().splitlines():
        entry = json.loads(line)
        status[entry["output"]] = entry["status"]
    assert status == {"in/long.flac.parquet": "done"}


@pytest.mark.parametrize("spec", [
    "archive.worker_chunk=kill@2",  # one range's worker dies: that range is redone
    "archive.worker_chunk=raise@3",
    "archive.worker_setup=kill@1",
])
def test_split_input_recovers(kit, long_input, split_reference, tmp_path, spec):
    out = tmp_path / "out"
    code, doc, text = archive(kit, long_input, out, spec, args=SPLIT)
    assert code == 0, text[-3000:]
    assert doc["done"] == [LONG_NAME] and doc["ranges"] == {LONG_NAME: 2}
    assert_split_resumed(kit, long_input, out, split_reference)


def test_a_hung_range_is_killed_and_redone(kit, long_input, split_reference, tmp_path):
    out = tmp_path / "out"
    code, doc, text = archive(kit, long_input, out, "archive.worker_chunk=hang@2", "--task-timeout", "5", args=SPLIT)
    assert code == 0, text[-3000:]
    assert "(hung)" in text and "range" in text
    assert_split_resumed(kit, long_input, out, split_reference)


def test_an_unscorable_range_fails_its_input(kit, long_input, split_reference, tmp_path):
    out = tmp_path / "out"
    code, doc, text = archive(kit, long_input, out, "archive.worker_chunk=nan@2", args=SPLIT)
    assert code == 1, text[-3000:]
    assert list(doc["failed"]) == [LONG_NAME] and "Perch gave non-finite outputs" in doc["failed"][LONG_NAME]
    assert not doc["done"] and not list(out.rglob("*.parquet"))
    assert not (out / PARTS_FOLDER).exists()  # its audio cannot be scored: nothing of it is kept
    assert_split_resumed(kit, long_input, out, split_reference, retry_failed=True)


def test_a_split_input_whose_files_cannot_be_written_keeps_its_chunks(kit, long_input, split_reference, tmp_path):
    """Disk full while the ranges are joined: the input fails, its scored chunks stay, and the
    retry only writes the files (no chunk is scored again)."""
    out, counters = tmp_path / "out", tmp_path / "counters"
    count = f"archive.worker_chunk[{LONG_NAME}]=count"
    code, doc, text = archive(kit, long_input, out, f"archive.join_ranges=enospc,{count}", args=SPLIT, counters=counters)
    assert code == 1, text[-3000:]
    assert list(doc["failed"]) == [LONG_NAME] and "joining its 2 ranges failed" in doc["failed"][LONG_NAME]
    assert not list(out.rglob("*.parquet")) and (out / PARTS_FOLDER).is_dir()
    assert failpoints.counted(counters, f"archive.worker_chunk[{LONG_NAME}]") == 5
    code, doc, text = archive(kit, long_input, out, count, "--retry-failed", args=SPLIT, counters=counters)
    assert code == 0 and doc["resumed"] == {LONG_NAME: pytest.approx(250.0)} and doc["audio_hours"] == 0, text[-3000:]
    assert failpoints.counted(counters, f"archive.worker_chunk[{LONG_NAME}]") == 5
    assert_split_resumed(kit, long_input, out, split_reference)


def test_an_interrupted_split_run_resumes(kit, long_input, split_reference, tmp_path):
    out, counters = tmp_path / "out", tmp_path / "counters"
    count = f"archive.worker_chunk[{LONG_NAME}]=count"
    code, doc, text = archive(kit, long_input, out, f"archive.worker_chunk=sigint@3,{count}", args=SPLIT, counters=counters)
    assert code == 130, text[-3000:]
    assert doc["unfinished"] == [LONG_NAME] and not doc["done"]  # the report is written on Ctrl-C too
    assert not list(out.rglob("*.parquet"))
    assert (out / PARTS_FOLDER).is_dir()  # the chunks finished before Ctrl-C are kept
    code, doc, text = archive(kit, long_input, out, count, args=SPLIT, counters=counters)
    assert code == 0, text[-3000:]
    kept = doc["resumed"][LONG_NAME]
    assert kept >= 60 and kept + doc["audio_hours"] * 3600 == pytest.approx(250.0)
    # At most the chunks in flight when Ctrl-C came (one per worker) were scored twice.
    assert 5 <= failpoints.counted(counters, f"archive.worker_chunk[{LONG_NAME}]") <= 5 + 2
    assert_split_resumed(kit, long_input, out, split_reference)


def test_a_split_input_on_ray(kit, long_input, split_reference, tmp_path):
    pytest.importorskip("ray")
    ray_args = ("--engine", "ray", "--workers", "2", "--threads", "1", "--no-cnn", "--no-crnn")
    out = tmp_path / "out"
    code, doc, text = archive(kit, long_input, out, "archive.worker_chunk=raise@2", args=ray_args)
    assert code == 0, text[-3000:]
    assert doc["ranges"] == {LONG_NAME: 2}
    assert_split_resumed(kit, long_input, out, split_reference, args=ray_args)  # equal to the local engine's


# ---------------------------------------------------------------------------- resuming inside one long input

LONG32_NAME = "in/long32.flac"
COUNTED = f"archive.worker_chunk[{LONG32_NAME}]"
WHOLE = BASE + ("--embeddings",)


@pytest.fixture(scope="module")
def long32(tmp_path_factory):
    """250 s of the real field recording stored at 32 kHz (5 chunks, the last of 10 s): nothing
    is resampled, so a run that goes on at any chunk decodes the very samples an uninterrupted
    run does, and its files are equal bit for bit."""
    import soundfile as sf
    import soxr
    from test_archive_ranges import LONG

    folder = tmp_path_factory.mktemp("long32") / "in"
    folder.mkdir()
    mono, rate = sf.read(str(LONG), dtype="float32", frames=250 * 22000)
    write_audio(folder / "long32.flac", soxr.resample(mono, rate, 32000), 32000)
    return folder


@pytest.fixture(scope="module")
def long32_reference(kit, long32, tmp_path_factory):
    out = tmp_path_factory.mktemp("long32-ref") / "out"
    code, doc, text = archive(kit, long32, out, args=WHOLE)
    assert code == 0 and doc["ranges"] == {} and not doc["resumed"], text[-3000:]
    return read_all(out)


def assert_whole_resumed(got_dir, reference):
    got = read_all(got_dir)
    assert sorted(got) == sorted(reference) == ["_embeddings/in/long32.flac.parquet", "in/long32.flac.parquet"]
    for name in reference:
        pd.testing.assert_frame_equal(got[name], reference[name], check_exact=True)
    assert not (got_dir / PARTS_FOLDER).exists() and not [p for p in got_dir.rglob("*") if p.name.endswith(".tmp")]
    status = [json.loads(line)["status"] for line in (got_dir / JOURNAL_NAME).read_text().splitlines()]
    assert status == ["done"]


@pytest.mark.parametrize("spec,args", [
    ("archive.worker_chunk=kill@3", WHOLE),  # the worker dies while scoring the third chunk
    ("archive.chunk_keep=enospc@3", WHOLE),  # the disk is full when the third chunk is to be kept
    ("archive.worker_chunk=raise@3", ("--engine", "sequential", "--threads", "1", "--no-cnn", "--no-crnn", "--embeddings")),
    ("archive.worker_chunk=kill@3", ("--engine", "ray", "--workers", "1", "--threads", "1", "--no-cnn", "--no-crnn", "--embeddings")),
])
def test_a_retried_input_goes_on_after_its_kept_chunks(kit, long32, long32_reference, tmp_path, spec, args):
    """Within one run: the retry scores only the chunk that was in flight again."""
    if "ray" in args:
        pytest.importorskip("ray")
    out, counters = tmp_path / "out", tmp_path / "counters"
    code, doc, text = archive(kit, long32, out, f"{spec},{COUNTED}=count", args=args, counters=counters)
    assert code == 0 and doc["done"] == [LONG32_NAME], text[-3000:]
    assert failpoints.counted(counters, COUNTED) == 5 + 1
    assert doc["audio_hours"] * 3600 == pytest.approx(250.0)
    assert_whole_resumed(out, long32_reference)


def test_a_retried_input_whose_files_cannot_be_written_scores_nothing_again(kit, long32, long32_reference, tmp_path):
    out, counters = tmp_path / "out", tmp_path / "counters"
    code, doc, text = archive(kit, long32, out, f"archive.join_ranges=enospc@1,{COUNTED}=count", args=WHOLE, counters=counters)
    assert code == 0 and doc["done"] == [LONG32_NAME], text[-3000:]
    assert failpoints.counted(counters, COUNTED) == 5
    assert_whole_resumed(out, long32_reference)


@pytest.mark.parametrize("spec,expected,least_kept_s", [
    ("archive.worker_chunk=sigint@3", 130, 120),  # Ctrl-C while the third chunk is scored
    ("archive.chunk_done=kill@3", -9, 180),  # the whole run killed once the third chunk is kept
])
def test_a_stopped_run_goes_on_inside_its_input(kit, long32, long32_reference, tmp_path, spec, expected, least_kept_s):
    """Across runs: the rerun keeps what the stopped run finished and scores only the rest."""
    out, counters = tmp_path / "out", tmp_path / "counters"
    code, doc, text = archive(kit, long32, out, f"{spec},{COUNTED}=count", args=WHOLE, counters=counters)
    assert code == expected, text[-3000:]
    assert not list(out.rglob("*.parquet")) and (out / PARTS_FOLDER).is_dir()
    from streamer.archive.run import folder_status

    assert "1 input(s) partly scored" in folder_status(out)
    code, doc, text = archive(kit, long32, out, f"{COUNTED}=count", args=WHOLE, counters=counters)
    assert code == 0, text[-3000:]
    kept = doc["resumed"][LONG32_NAME]
    assert kept >= least_kept_s and kept + doc["audio_hours"] * 3600 == pytest.approx(250.0)
    assert "resumed inside 1 input(s)" in text
    # One worker: at most the one chunk in flight when the run stopped was scored twice.
    assert 5 <= failpoints.counted(counters, COUNTED) <= 5 + 1
    assert_whole_resumed(out, long32_reference)


def test_chunks_kept_under_other_settings_are_refused_then_removed_with_overwrite(kit, long32, tmp_path):
    out, counters = tmp_path / "out", tmp_path / "counters"
    code, _, text = archive(kit, long32, out, f"archive.worker_chunk=sigint@3,{COUNTED}=count", args=WHOLE, counters=counters)
    assert code == 130 and (out / PARTS_FOLDER).is_dir(), text[-3000:]
    code, _, text = archive(kit, long32, out, "", "--min-score", "0.5", args=WHOLE)
    assert code == 2 and "--overwrite" in text, text[-3000:]
    assert (out / PARTS_FOLDER).is_dir()  # refused: nothing touched
    code, doc, text = archive(kit, long32, out, f"{COUNTED}=count", "--min-score", "0.5", "--overwrite", args=WHOLE,
                              counters=counters)
    assert code == 0 and not doc["resumed"] and doc["audio_hours"] * 3600 == pytest.approx(250.0), text[-3000:]
    assert failpoints.counted(counters, COUNTED) >= 3 + 5  # scored again from its start
    assert not (out / PARTS_FOLDER).exists()
