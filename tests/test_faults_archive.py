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


def archive(kit, inputs, out, spec="", *extra, args=BASE):
    env = {**os.environ, "STREAMER_FAILPOINTS": spec}
    env.pop("STREAMER_FAILPOINTS_STATE", None)
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
    """A plain rerun completes the folder, equal to the uninterrupted split run; no range arrays
    or temporary files are left, and the input is journaled done."""
    code, doc, text = archive(kit, long_input, out, "", *(["--retry-failed"] if retry_failed else []), args=args)
    assert code == 0, text[-3000:]
    got = read_all(out)
    assert sorted(got) == sorted(reference)
    for name in reference:
        pd.testing.assert_frame_equal(got[name], reference[name], check_exact=True)
    assert not (out / ".streamer-ranges").exists() and not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
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


@pytest.mark.parametrize("spec,reason", [
    ("archive.worker_chunk=nan@2", "Perch gave non-finite outputs"),  # one range unscorable: the input fails
    ("archive.join_ranges=enospc", "joining its 2 ranges failed"),
])
def test_a_failed_range_fails_its_input(kit, long_input, split_reference, tmp_path, spec, reason):
    out = tmp_path / "out"
    code, doc, text = archive(kit, long_input, out, spec, args=SPLIT)
    assert code == 1, text[-3000:]
    assert list(doc["failed"]) == [LONG_NAME] and reason in doc["failed"][LONG_NAME]
    assert not doc["done"] and not list(out.rglob("*.parquet"))
    assert not (out / ".streamer-ranges").exists()
    assert_split_resumed(kit, long_input, out, split_reference, retry_failed=True)


def test_an_interrupted_split_run_resumes(kit, long_input, split_reference, tmp_path):
    out = tmp_path / "out"
    code, doc, text = archive(kit, long_input, out, "archive.worker_chunk=sigint@3", args=SPLIT)
    assert code == 130, text[-3000:]
    assert doc["unfinished"] == [LONG_NAME] and not doc["done"]  # the report is written on Ctrl-C too
    assert not list(out.rglob("*.parquet"))
    assert not (out / ".streamer-ranges").exists()  # the finished range is not kept: the input is redone
    assert_split_resumed(kit, long_input, out, split_reference)


def test_a_split_input_on_ray(kit, long_input, split_reference, tmp_path):
    pytest.importorskip("ray")
    ray_args = ("--engine", "ray", "--workers", "2", "--threads", "1", "--no-cnn", "--no-crnn")
    out = tmp_path / "out"
    code, doc, text = archive(kit, long_input, out, "archive.worker_chunk=raise@2", args=ray_args)
    assert code == 0, text[-3000:]
    assert doc["ranges"] == {LONG_NAME: 2}
    assert_split_resumed(kit, long_input, out, split_reference, args=ray_args)  # equal to the local engine's
