"""`streamer archive`: long files in chunks, resume, failures, formats."""

import numpy as np
import pandas as pd
import soundfile as sf

from streamer import cli
from streamer.audio import iter_chunks, write_audio

from pathlib import Path

LONG = Path(__file__).resolve().parent / "data" / "audio" / "jura_S4A03895_20190522_24h_16min_22k.ogg"


def _args(kit, out, *inputs, extra=()):
    return ["archive", *map(str, inputs), "--out", str(out), "--data-dir", str(kit.data_dir), "--perch", str(kit.perch_onnx),
            "--moe-dir", str(kit.moe_dir), "--no-cnn", "--no-crnn", *extra]


def test_long_file_equals_its_chunks_scored_separately(kit, tmp_path):
    chunks = list(iter_chunks(LONG, 12 * 160000))
    assert len(chunks) == 16
    pieces = tmp_path / "pieces"
    pieces.mkdir()
    for c in chunks[:2]:
        write_audio(pieces / f"part{c.index}.wav", c.samples[: c.n_real], 32000, subtype="FLOAT")  # lossless
    out = tmp_path / "out"
    assert cli.main(_args(kit, out, LONG, pieces)) == 0
    whole = pd.read_parquet(out / f"{LONG.name}.parquet")
    assert len(whole) == 16 * 12 and whole["window"].tolist() == list(range(192))
    assert whole["end_s"].iloc[-1] == 960.0
    classes = [c for c in whole.columns if c not in ("file", "window", "start_s", "end_s")]
    for k in range(2):
        part = pd.read_parquet(out / "pieces" / f"part{k}.wav.parquet")
        np.testing.assert_allclose(whole[classes].to_numpy()[12 * k : 12 * (k + 1)], part[classes].to_numpy(), rtol=1e-5, atol=1e-6)


def test_resume_skips_finished_and_redoes_missing(kit, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        write_audio(src / f"r{i}.flac", 0.05 * rng.standard_normal(32000 * 70), 32000)  # 70 s: 2 chunks
    out = tmp_path / "out"
    assert cli.main(_args(kit, out, src)) == 0
    first = {p.name: pd.read_parquet(p) for p in (out / "in").glob("*.parquet")}
    assert {len(f) for f in first.values()} == {14}  # 12 + 2 real windows, padding not emitted
    capsys.readouterr()
    assert cli.main(_args(kit, out, src)) == 0
    assert "0 scored, 2 already finished" in capsys.readouterr().out
    (out / "in" / "r1.flac.parquet").unlink()
    assert cli.main(_args(kit, out, src)) == 0
    assert "1 scored, 1 already finished" in capsys.readouterr().out
    pd.testing.assert_frame_equal(pd.read_parquet(out / "in" / "r1.flac.parquet"), first["r1.flac.parquet"])


def test_failed_inputs_are_reported_and_retried_on_request(kit, tmp_path, capsys):
    bad = tmp_path / "bad.ogg"
    bad.write_bytes(b"not audio")
    good = tmp_path / "good.wav"
    write_audio(good, np.zeros(32000 * 5, np.float32) + 0.01, 32000, subtype="FLOAT")
    out = tmp_path / "out"
    assert cli.main(_args(kit, out, bad, good)) == 1
    text = capsys.readouterr().out
    assert "1 scored" in text and "failed: bad.ogg" in text and not (out / "bad.ogg.parquet").exists()
    assert cli.main(_args(kit, out, bad, good)) == 1
    assert "not retried without --retry-failed" in capsys.readouterr().out
    write_audio(tmp_path / "fixed.wav", np.zeros(32000, np.float32) + 0.01, 32000, subtype="FLOAT")
    bad.write_bytes((tmp_path / "fixed.wav").read_bytes())  # the file was repaired
    assert cli.main(_args(kit, out, bad, good, extra=("--retry-failed",))) == 0
    assert len(pd.read_parquet(out / "bad.ogg.parquet")) == 1


def test_csv_top_k_with_site_and_start_options(kit, tmp_path):
    rec = tmp_path / "recorder.wav"
    write_audio(rec, 0.02 * np.random.default_rng(1).standard_normal(32000 * 130), 32000, subtype="FLOAT")
    out = tmp_path / "out"
    assert cli.main(_args(kit, out, rec, extra=("--format", "csv", "--top-k", "3", "--site", "S03", "--start-utc", "2025-01-01T23:59:30"))) == 0
    frame = pd.read_csv(out / "recorder.wav.csv")
    assert list(frame.columns) == ["file", "window", "start_s", "end_s", "rank", "class", "score"]
    assert len(frame) == 26 * 3 and frame["rank"].tolist()[:3] == [1, 2, 3]
    assert sf.info(str(rec)).duration == 130.0
