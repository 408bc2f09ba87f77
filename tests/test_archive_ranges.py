"""One long recording on every CPU: an input split into ranges of 60-s chunks, scored by several
workers and joined back, equals one worker's run (to float32 round-off). Faults in split runs
are in test_faults_archive.py."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from streamer import audio, cli
from streamer.archive.journal import DONE, Journal
from streamer.archive.checkpoint import PARTS_FOLDER
from streamer.archive.journal import FileKey
from streamer.archive.ranges import WorkQueue, makespan, plan_splits
from streamer.archive.scorer import CHUNK_SAMPLES, ArchiveTask

from conftest import printed_tolerance

LONG = Path(__file__).resolve().parent / "data" / "audio" / "jura_S4A03895_20190522_24h_16min_22k.ogg"
META = ["file", "window", "start_s", "end_s"]


def make_stereo_44k(path: Path, seconds: float) -> Path:
    """``seconds`` of the real 22-kHz field recording as a 44.1-kHz stereo FLAC (the second
    channel delayed and quieter), so decoding averages channels and resamples."""
    import soxr

    mono, rate = sf.read(str(LONG), dtype="float32", frames=int(seconds * 22000))
    stereo = np.stack([mono, 0.5 * np.roll(mono, 1000)], axis=1)
    audio.write_audio(path, soxr.resample(stereo, rate, 44100), 44100)
    return path


@pytest.fixture(scope="module")
def long_input(tmp_path_factory):
    """6.5 minutes: 7 chunks (the last one half real), two ranges on two workers."""
    folder = tmp_path_factory.mktemp("ranges") / "in"
    folder.mkdir()
    return make_stereo_44k(folder / "site_A.flac", 390)


def _args(kit, out, src, *extra):
    return ["archive", str(src), "--out", str(out), "--data-dir", str(kit.data_dir), "--perch", str(kit.perch_onnx),
            "--moe-dir", str(kit.moe_dir), "--threads", "1", "--report-json", str(out.parent / f"{out.name}.json"), *extra]


def _report(out: Path) -> dict:
    return json.loads((out.parent / f"{out.name}.json").read_text())


def _assert_close(a: pd.DataFrame, b: pd.DataFrame, atol: float = 1e-5) -> None:
    pd.testing.assert_frame_equal(a[META], b[META])
    cols = [c for c in a.columns if c not in META]
    assert list(cols) == [c for c in b.columns if c not in META]
    if cols == ["embedding"]:
        np.testing.assert_allclose(np.stack(a["embedding"]), np.stack(b["embedding"]), rtol=1e-5, atol=atol)
    else:
        np.testing.assert_allclose(a[cols].to_numpy(), b[cols].to_numpy(), rtol=1e-5, atol=atol)


# ---------------------------------------------------------------------------- planning


@pytest.mark.parametrize("chunks,workers,expected", [
    ([128], 2, [2]),  # one long input: one range per worker
    ([16, 16, 16, 16], 2, [1, 1, 1, 1]),  # enough inputs: nothing split
    ([60, 60, 60], 2, [2, 1, 1]),  # 60+30 on each worker
    ([600] + [1] * 9, 2, [2] + [1] * 9),
    ([32], 4, [4]),
    ([3], 2, [1]),  # a range is at least MIN_RANGE_CHUNKS chunks
    ([7], 2, [2]),  # 4 + 3; three ranges (2 + 3 + 2) would end no sooner
    ([60, 60], 3, [3, 3]),  # two steps without gain, then the ideal
    ([0, 0], 2, [1, 1]),  # unknown durations are never split
    ([128], 1, [1]),
])
def test_splitting_only_what_balancing_needs(chunks, workers, expected):
    assert plan_splits(chunks, workers) == expected


def test_makespan_is_longest_first_on_the_first_free_worker():
    assert makespan([3, 3, 2, 2, 2], 2) == 7.0  # 3+2+2 | 3+2
    assert makespan([5], 3) == 5.0


def test_ranges_cover_the_input_in_order_and_the_last_reads_to_the_end(tmp_path):
    from types import SimpleNamespace

    task = ArchiveTask(path=tmp_path / "a.flac", rel="a.flac", out=tmp_path / "a.parquet", when=None, audio_s=7 * 60 - 30,
                       key=FileKey("a.flac", 1, 1))
    labels = SimpleNamespace(codes=("x",))
    units = WorkQueue([task], None, None, labels, out_dir=tmp_path).plan(3)
    spans = [u.span for u in units]
    assert sorted((s.first, s.end) for s in spans) == [(0, 2), (2, 5), (5, None)]
    assert sorted(u.audio_s for u in units) == [90.0, 120.0, 180.0]
    assert len({s.part for s in spans}) == 3 and all(u.rel == "a.flac" and u.out == task.out for u in units)
    assert not any(s.joins for s in spans)
    whole = WorkQueue([task], None, None, labels, out_dir=tmp_path).plan(1)  # one span, which writes the files itself
    assert [(u.span.first, u.span.end, u.span.joins, u.label) for u in whole] == [(0, None, True, "a.flac")]
    one_chunk = replace(task, audio_s=59.0)  # its only chunk is the one in flight: scored straight into its files
    assert WorkQueue([one_chunk], None, None, labels, out_dir=tmp_path).plan(2) == [one_chunk]


# ---------------------------------------------------------------------------- decoding a range


def test_a_range_decodes_as_the_whole_file(long_input, tmp_path):
    whole = list(audio.iter_chunks(long_input, CHUNK_SAMPLES))
    assert len(whole) == 7 and whole[-1].n_real == 30 * 32000
    parts = [c for a, b in ((0, 2), (2, 5), (5, None)) for c in audio.iter_chunks(long_input, CHUNK_SAMPLES, a, b)]
    assert [(c.index, c.n_real) for c in parts] == [(c.index, c.n_real) for c in whole]
    worst = max(float(np.abs(p.samples - w.samples).max()) for p, w in zip(parts, whole))
    assert worst < 1e-6, worst  # float32 round-off of the resampler
    assert list(audio.iter_chunks(long_input, CHUNK_SAMPLES, 7)) == []  # past the end: nothing, no error
    # At 32 kHz nothing is resampled: the range's samples are the file's, exactly.
    flat = tmp_path / "flat.wav"
    audio.write_audio(flat, whole[2].samples[: 100 * 32000 // 60], 32000, subtype="FLOAT")
    small = CHUNK_SAMPLES // 6  # 10-s chunks
    ref = list(audio.iter_chunks(flat, small))
    got = list(audio.iter_chunks(flat, small, 0, 4)) + list(audio.iter_chunks(flat, small, 4))
    assert [(c.index, c.n_real) for c in got] == [(c.index, c.n_real) for c in ref]
    assert all(np.array_equal(a.samples, b.samples) for a, b in zip(got, ref))


def test_without_the_warm_up_the_seam_would_show(long_input, monkeypatch):
    """The check above can fail: a resampler started at the range itself gives other samples at
    its start (its filter sees silence before them)."""
    whole = list(audio.iter_chunks(long_input, CHUNK_SAMPLES))
    monkeypatch.setattr(audio, "RANGE_WARMUP_S", 0)
    first = next(audio.iter_chunks(long_input, CHUNK_SAMPLES, 2, 3))
    assert float(np.abs(first.samples[:200] - whole[2].samples[:200]).max()) > 1e-3


# ---------------------------------------------------------------------------- whole runs


@pytest.fixture(scope="module")
def single_worker(kit, long_input, tmp_path_factory):
    """The reference: one worker scores the whole input (scores, embeddings, a merged Raven table)."""
    root = tmp_path_factory.mktemp("single")
    out = root / "scores"
    assert cli.main(_args(kit, out, long_input, "--workers", "1", "--embeddings")) == 0
    raven = root / "raven"
    assert cli.main(_args(kit, raven, long_input, "--workers", "1", "--format", "raven", "--min-score", "0.2")) == 0
    assert _report(out)["ranges"] == {}
    return out, raven


def test_two_workers_on_one_input_equal_one_worker(kit, long_input, single_worker, tmp_path):
    ref_scores, ref_raven = single_worker
    out = tmp_path / "scores"
    assert cli.main(_args(kit, out, long_input, "--workers", "2", "--embeddings")) == 0
    report = _report(out)
    assert report["ranges"] == {"site_A.flac": 2} and report["layout"].startswith("2 worker(s) x 1 thread(s)")
    assert abs(report["audio_hours"] * 3600 - 390) < 1e-6
    name = "site_A.flac.parquet"
    got, want = pd.read_parquet(out / name), pd.read_parquet(ref_scores / name)
    assert len(got) == 78 and got["window"].tolist() == list(range(78))
    _assert_close(got, want)
    # The same row groups as one worker writes (one per hour: here one).
    assert pq.ParquetFile(out / name).num_row_groups == pq.ParquetFile(ref_scores / name).num_row_groups == 1
    emb = f"_embeddings/{name}"
    _assert_close(pd.read_parquet(out / emb), pd.read_parquet(ref_scores / emb))
    pd.testing.assert_frame_equal(pd.read_csv(out / "_summary.csv"), pd.read_csv(ref_scores / "_summary.csv"))
    assert not (out / PARTS_FOLDER).exists() and not list(out.rglob("*.tmp"))
    entries = list(Journal(out).entries.values())
    assert [(e.status, e.output) for e in entries] == [(DONE, name)]

    # Events merged across the seam between the ranges (window 23 | 24) come out whole.
    raven = tmp_path / "raven"
    assert cli.main(_args(kit, raven, long_input, "--workers", "2", "--format", "raven", "--min-score", "0.2")) == 0
    table = "site_A.flac.selections.txt"
    got_t = pd.read_csv(raven / table, sep="\t")
    want_t = pd.read_csv(ref_raven / table, sep="\t")
    spans_seam = (got_t["Begin Time (s)"] < 120) & (got_t["End Time (s)"] > 120)
    assert spans_seam.any(), "no event crosses the seam: the test would not show a broken merge"
    pd.testing.assert_frame_equal(got_t.drop(columns="Score"), want_t.drop(columns="Score"))
    # The table prints 4 decimals: equal to one unit of the last one (the unrounded scores are
    # compared strictly above, in the Parquet file).
    np.testing.assert_allclose(got_t["Score"], want_t["Score"], rtol=0, atol=printed_tolerance(4))

    # --no-split: one worker scores it whole.
    whole = tmp_path / "whole"
    assert cli.main(_args(kit, whole, long_input, "--workers", "2", "--no-split")) == 0
    assert _report(whole)["ranges"] == {} and _report(whole)["layout"].startswith("1 worker(s)")


def test_embeddings_alone_and_perch_labels_through_the_python_api(kit, long_input, tmp_path):
    """--labels none (no score rows in the ranges) and --labels perch (Perch's own labels),
    split and whole, through run_archive."""
    from streamer.archive.inputs import expand_inputs
    from streamer.archive.run import run_archive
    from streamer.config import ArchiveSettings, InferConfig
    from streamer.stages import prepare_perch_only

    entries = expand_inputs([long_input])
    outputs = {}
    for labels, extra in (("none", {"embeddings": "float16"}), ("perch", {"top_k": 3})):
        for split in (True, False):
            config = InferConfig.create(perch=kit.perch_onnx, workers=2, threads=1, progress=False)
            out = tmp_path / f"{labels}-{split}"
            report = run_archive(prepare_perch_only(config), entries, ArchiveSettings(out_dir=out, labels=labels, split=split, **extra))
            assert report.done == ["site_A.flac"] and report.ranges == ({"site_A.flac": 2} if split else {})
            files = sorted(p.relative_to(out) for p in out.rglob("*.parquet"))
            outputs[labels, split] = {str(p): pd.read_parquet(out / p) for p in files}
    emb = "_embeddings/site_A.flac.parquet"
    assert list(outputs["none", True]) == [emb]
    _assert_close(outputs["none", True][emb], outputs["none", False][emb], atol=2e-3)  # float16 storage: its rounding
    got, want = outputs["perch", True]["site_A.flac.parquet"], outputs["perch", False]["site_A.flac.parquet"]
    assert len(got) == 78 * 3
    pd.testing.assert_frame_equal(got[META + ["rank"]], want[META + ["rank"]])
    np.testing.assert_allclose(got["score"], want["score"], atol=1e-5)
    assert (got["class"] == want["class"]).mean() > 0.99  # only near-ties may swap places


def test_a_file_shorter_than_its_header_says(kit, tmp_path, monkeypatch):
    """A recording whose header claims 10 minutes while its data ends at 2.5 (a recorder that
    died before it rewrote the header): the second range starts past the data and holds nothing,
    the first ends with the last real chunk; the join equals one worker's run."""
    from streamer.archive import run as archive_run

    src = tmp_path / "in"
    src.mkdir()
    wav = src / "cut.wav"
    tone = 0.05 * np.sin(2 * np.pi * 900 * np.arange(32000 * 150) / 32000) + 0.01
    audio.write_audio(wav, tone.astype(np.float32), 32000, subtype="FLOAT")
    monkeypatch.setattr(archive_run, "probe_input", lambda path: (600.0, None))  # what the plan believes
    runs = {}
    for workers in ("2", "1"):
        out = tmp_path / f"out{workers}"
        assert cli.main(_args(kit, out, src, "--workers", workers)) == 0
        assert _report(out)["ranges"] == ({"in/cut.wav": 2} if workers == "2" else {})
        runs[workers] = pd.read_parquet(out / "in" / "cut.wav.parquet")
    assert len(runs["2"]) == 30  # 150 s: 2 chunks and a half
    _assert_close(runs["2"], runs["1"])
