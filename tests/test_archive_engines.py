"""`streamer archive` engines: local worker processes, sequential, Ray; worker deaths, formats
and rates, the output-folder lock, memory on long inputs. Kill-and-resume and the other faults
are in test_faults_archive.py."""

import collections
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from streamer import cli
from streamer.archive.journal import Journal
from streamer.archive.output import remove_stale_temporaries
from streamer.archive.run import LOCK_NAME, OutputLock
from streamer.audio import write_audio
from streamer.errors import ConfigError

META = ["file", "window", "start_s", "end_s"]


def _args(kit, out, *inputs, extra=(), students=False):
    base = ["archive", *map(str, inputs), "--out", str(out), "--data-dir", str(kit.data_dir), "--perch", str(kit.perch_onnx),
            "--moe-dir", str(kit.moe_dir)]
    return base + ([] if students else ["--no-cnn", "--no-crnn"]) + list(extra)


def _noise_folder(folder: Path, seconds: list[int], rate: int = 32000, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i, s in enumerate(seconds):
        t = np.arange(rate * s) / rate
        tone = 0.05 * np.sin(2 * np.pi * (800 + 300 * i) * t) * (np.sin(2 * np.pi * t / 7) > 0)
        write_audio(folder / f"rec{i}.flac", tone + 0.02 * rng.standard_normal(t.shape), rate)
    return folder


def _read_all(out: Path, fmt: str = "parquet") -> dict[str, pd.DataFrame]:
    files = sorted(p for p in out.rglob(f"*.{fmt}"))
    assert files
    return {str(p.relative_to(out)): (pd.read_parquet(p) if fmt == "parquet" else pd.read_csv(p)) for p in files}


def _assert_same(a: dict, b: dict, exact: bool = True, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        if exact:
            pd.testing.assert_frame_equal(a[name], b[name], check_exact=True)
        else:
            pd.testing.assert_frame_equal(a[name][META], b[name][META])
            cls = [c for c in a[name].columns if c not in META]
            np.testing.assert_allclose(a[name][cls].to_numpy(), b[name][cls].to_numpy(), rtol=rtol, atol=atol)


def test_local_workers_equal_sequential_and_each_other(kit, tmp_path):
    src = _noise_folder(tmp_path / "in", [130, 65, 20])
    runs = {}
    for name, extra in {
        "seq": ("--engine", "sequential", "--threads", "1"),
        "local1": ("--engine", "local", "--workers", "1", "--threads", "1"),
        "local2": ("--engine", "local", "--workers", "2", "--threads", "1"),
    }.items():
        out = tmp_path / name
        assert cli.main(_args(kit, out, src, extra=extra)) == 0
        runs[name] = _read_all(out)
    assert {len(f) for f in runs["seq"].values()} == {26, 13, 4}
    _assert_same(runs["local1"], runs["local2"])  # one worker or two: the same files
    _assert_same(runs["seq"], runs["local2"])  # the in-process reference


def test_students_in_workers_match_the_torch_reference(kit, tmp_path):
    src = _noise_folder(tmp_path / "in", [65])
    seq, local = tmp_path / "seq", tmp_path / "local"
    assert cli.main(_args(kit, seq, src, students=True, extra=("--engine", "sequential", "--threads", "1"))) == 0
    assert cli.main(_args(kit, local, src, students=True, extra=("--workers", "1", "--threads", "1"))) == 0
    _assert_same(_read_all(seq), _read_all(local), exact=False, rtol=1e-4, atol=1e-5)  # onnxruntime vs torch students


def test_a_worker_killed_mid_file_is_replaced_and_the_file_redone(kit, tmp_path, caplog, monkeypatch):
    src = _noise_folder(tmp_path / "in", [130, 65])
    ref, out = tmp_path / "ref", tmp_path / "out"
    assert cli.main(_args(kit, ref, src, extra=("--workers", "1", "--threads", "1"))) == 0
    # The worker SIGKILLs itself on the run's 2nd chunk: mid-way through the 130-s input (scored first).
    monkeypatch.setenv("STREAMER_FAILPOINTS", "archive.worker_chunk=kill@2")
    assert cli.main(_args(kit, out, src, extra=("--workers", "1", "--threads", "1"))) == 0
    assert "died (killed by SIGKILL" in caplog.text
    # Without a terminal, progress is a log line per finished input; the killed attempt's chunk
    # is not counted twice (130 s done of 195 s after the first input).
    assert "[1/2] in/rec0.flac: 0.04 h; 0.04 h done, 0.02 h to go, real-time factor" in caplog.text
    assert "[2/2] in/rec1.flac: 0.02 h; 0.05 h done, 0.00 h to go, real-time factor" in caplog.text and "ETA" in caplog.text
    _assert_same(_read_all(ref), _read_all(out))
    assert not list(out.rglob("*.tmp"))


def test_an_input_that_keeps_killing_its_worker_is_reported_failed(kit, tmp_path, capsys, monkeypatch):
    src = _noise_folder(tmp_path / "in", [70])
    out = tmp_path / "out"
    monkeypatch.setenv("STREAMER_FAILPOINTS", "archive.worker_chunk=kill@2+")  # the 2nd chunk of the run and every later one
    code = cli.main(_args(kit, out, src, extra=("--workers", "1", "--threads", "1")))
    assert code == 1
    text = capsys.readouterr().out
    assert "failed: in/rec0.flac: the worker scoring it died 3 times" in text
    assert [e.status for e in Journal(out).entries.values()] == ["failed"]
    assert not list(out.rglob("*.parquet")) and not list(out.rglob("*.tmp"))


def test_48k_stereo_and_other_formats_through_the_command(kit, tmp_path):
    import soxr

    rng = np.random.default_rng(3)
    n = 48000 * 70
    t = np.arange(n) / 48000
    left = 0.1 * np.sin(2 * np.pi * 2000 * t) * (np.sin(2 * np.pi * t / 5) > 0) + 0.01 * rng.standard_normal(n)
    right = 0.05 * np.sin(2 * np.pi * 3100 * t) + 0.01 * rng.standard_normal(n)
    stereo = np.stack([left, right], axis=1).astype(np.float32)
    src = tmp_path / "in"
    src.mkdir()
    write_audio(src / "stereo48k.wav", stereo, 48000, subtype="FLOAT")
    write_audio(src / "stereo48k.flac", stereo, 48000)
    write_audio(src / "stereo48k.ogg", stereo, 48000)
    sf.write(str(src / "stereo48k.mp3"), stereo, 48000, format="MP3")
    # The expected input of the models: channels averaged, then resampled in one go.
    mono32 = soxr.resample(stereo.mean(axis=1), 48000, 32000, quality="HQ").astype(np.float32)
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    write_audio(ref_dir / "mono32k.wav", mono32, 32000, subtype="FLOAT")
    out = tmp_path / "out"
    assert cli.main(_args(kit, out, src, ref_dir, extra=("--threads", "1"))) == 0
    scores = _read_all(out)
    cls = [c for c in scores["ref/mono32k.wav.parquet"].columns if c not in META]
    expected = scores["ref/mono32k.wav.parquet"][cls].to_numpy()
    assert len(expected) == 14
    np.testing.assert_allclose(scores["in/stereo48k.wav.parquet"][cls].to_numpy(), expected, rtol=1e-4, atol=1e-5)
    flac = scores["in/stereo48k.flac.parquet"][cls].to_numpy()  # 16-bit: close, not equal
    assert np.abs(flac - expected).max() < 1e-2
    for lossy in ("in/stereo48k.ogg.parquet", "in/stereo48k.mp3.parquet"):  # lossy codecs: all windows scored
        frame = scores[lossy]
        assert frame["window"].tolist()[:14] == list(range(14)) and len(frame) in (14, 15)
        assert np.isfinite(frame[cls].to_numpy()).all()


def test_an_unknown_engine_is_refused_before_anything_is_touched(tmp_path):
    from streamer.config import ArchiveSettings

    with pytest.raises(ConfigError, match="engine must be one of local, sequential, ray, got 'pipeline'"):
        ArchiveSettings(out_dir=tmp_path / "out", engine="pipeline")
    assert not (tmp_path / "out").exists()


def test_output_folder_lock_and_stale_temporaries(tmp_path):
    held = OutputLock(tmp_path)
    with pytest.raises(ConfigError, match="another 'streamer archive' run"):
        OutputLock(tmp_path)
    held.release()
    OutputLock(tmp_path).release()
    (tmp_path / "sub").mkdir()
    stale = tmp_path / "sub" / ".x.flac.parquet.k2j3h4.tmp"
    stale.write_bytes(b"partial")
    mine = tmp_path / "sub" / ".notes.tmp"  # not a score writer's temporary: kept
    mine.write_bytes(b"keep")
    assert remove_stale_temporaries(tmp_path) == 1
    assert not stale.exists() and mine.exists() and (tmp_path / LOCK_NAME).exists()


def test_memory_stays_flat_on_a_long_input(kit, tmp_path):
    """A 16-min input must not need more memory than a 4-min one: decoded whole, it would add
    ~90 MB of float32 samples at 32 kHz to the worker (and the 22-kHz source as well). (A 1-min
    input is no baseline: it ends before the decode-ahead buffer and the arenas have grown.)"""
    peaks = {}
    for minutes in (4, 16):
        src = tmp_path / f"in{minutes}"
        src.mkdir()
        rate = 22050
        with sf.SoundFile(str(src / "long.flac"), "w", rate, 1) as handle:
            rng = np.random.default_rng(minutes)
            for _ in range(minutes):
                handle.write((0.02 * rng.standard_normal(rate * 60)).astype(np.float32))
        report = tmp_path / f"report{minutes}.json"
        assert cli.main(_args(kit, tmp_path / f"out{minutes}", src, extra=("--workers", "1", "--threads", "2", "--report-json", str(report)))) == 0
        doc = json.loads(report.read_text())
        assert abs(doc["audio_hours"] * 60 - minutes) < 1e-6
        peaks[minutes] = doc["peak_worker_rss_mb"]
    assert peaks[4] > 100  # the measurement is real (models are loaded)
    assert peaks[16] - peaks[4] < 40, peaks


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_and_local_engines_give_identical_files(kit, tmp_path, local_ray):
    src = _noise_folder(tmp_path / "in", [130, 65, 30])
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    assert cli.main(_args(kit, local, src, students=True, extra=("--workers", "2", "--threads", "1", "--embeddings"))) == 0
    assert cli.main(_args(kit, on_ray, src, students=True, extra=("--engine", "ray", "--workers", "2", "--threads", "1", "--embeddings"))) == 0
    got, want = _read_all(on_ray), _read_all(local)
    assert sum(name.startswith("_embeddings/") for name in got) == 3  # the embeddings too, from the actors
    _assert_same(want, got)
    assert len(Journal(on_ray).entries) == 3
    # Resume works the same on Ray: nothing left to do.
    assert cli.main(_args(kit, on_ray, src, students=True, extra=("--engine", "ray", "--threads", "1", "--embeddings"))) == 0


def test_a_ray_actor_killed_mid_file_is_restarted_and_the_file_redone(kit, tmp_path, local_ray, caplog, monkeypatch):
    src = _noise_folder(tmp_path / "in", [130, 65])
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    assert cli.main(_args(kit, local, src, extra=("--workers", "1", "--threads", "1"))) == 0
    # The actor SIGKILLs itself on the run's 2nd chunk, mid-way through the first input; Ray restarts it.
    monkeypatch.setenv("STREAMER_FAILPOINTS", "archive.worker_chunk=kill@2")
    assert cli.main(_args(kit, on_ray, src, extra=("--engine", "ray", "--workers", "1", "--threads", "1"))) == 0
    assert "in/rec0.flac: the Ray actor scoring it died" in caplog.text and "retrying it" in caplog.text
    _assert_same(_read_all(local), _read_all(on_ray))
    assert not list(on_ray.rglob("*.tmp"))


def test_ray_engine_reports_unreadable_inputs(kit, tmp_path, local_ray, capsys):
    src = _noise_folder(tmp_path / "in", [20])
    (src / "broken.wav").write_bytes(b"RIFF nonsense")
    out = tmp_path / "out"
    assert cli.main(_args(kit, out, src, extra=("--engine", "ray", "--threads", "1"))) == 1
    text = capsys.readouterr().out
    assert "1 scored" in text and "failed: in/broken.wav" in text


def test_progress_accounting_with_a_retry_and_a_failure():
    from streamer.archive.run import _Progress

    bar = _Progress(200.0, 2, enabled=True)
    bar.advance("a", 60.0)
    bar.advance("a", 60.0)  # the retry of a killed attempt sees the first chunk again
    assert bar.done_s == 120.0
    bar.file_done("a", True, 100.0, 100.0)
    assert bar.done_s == 100.0 and bar.bar.n == 100.0
    bar.advance("b", 30.0)
    bar.file_done("b", False, 30.0, 100.0)  # failed: its whole length is no longer to do
    assert bar.done_s == 200.0 and bar.scored_s == 100.0
    rtf, remaining, eta = bar.rates()
    assert remaining == 0.0 and eta == 0.0 and rtf > 0
    bar.close()


def test_ray_loop_waits_for_a_restarting_actor_without_counting_deaths(tmp_path, monkeypatch, caplog):
    """When an actor dies, the task it held may come back as "temporarily unavailable" (that
    counts as the death); while Ray restarts the actor, the tasks sent to it come back the same
    way. Those later answers are not deaths: the input waits and goes to the actor once it is
    back, instead of burning the input's attempts within milliseconds."""
    from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError

    from streamer.archive import engines
    from streamer.archive.scorer import ArchiveTask, TaskResult

    monkeypatch.setattr(engines, "RAY_UNAVAILABLE_PAUSE_S", 0.01)
    answers = ["unavailable"] * 5 + ["ok"]  # the death, then more answers than MAX_FILE_ATTEMPTS

    class Ref:
        def __init__(self, task):
            self.task, self.answer = task, answers.pop(0)

    class Actor:
        class score:  # noqa: N801 - mimics ray's actor.method.remote
            @staticmethod
            def remote(task):
                return Ref(task)

    class FakeRay:
        @staticmethod
        def wait(refs, num_returns, timeout):
            return refs[:1], refs[1:]

        @staticmethod
        def get(ref):
            if ref.answer == "unavailable":
                raise ActorUnavailableError("The actor is restarting", None)
            return TaskResult(ref.task.rel, True, audio_s=60.0)

    from streamer.archive.ranges import WorkQueue

    task = ArchiveTask(path=tmp_path / "a.flac", rel="a.flac", out=tmp_path / "a.parquet", when=None)
    results = []
    work = WorkQueue([task], lambda t, r: results.append(r), lambda rel, s: None, labels=None)
    engine = engines.RayEngine(None, None, (), address=None, workers=1, threads=1)
    with caplog.at_level("WARNING"):
        engine._loop(FakeRay, [Actor()], collections.deque([task]), work, (ActorUnavailableError, RayActorError, RayTaskError))
    assert [r.ok for r in results] == [True] and not answers
    assert engine.attempts["a.flac"] == 1  # the death, once
    assert caplog.text.count("a.flac: the Ray actor scoring it died") == 1
