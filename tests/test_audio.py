"""Decoding real and broken audio: padding, cutting, channel mixing, resampling, errors."""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from streamer.audio import WINDOW_SAMPLES, read_span, write_audio
from streamer.errors import AudioDecodeError
from streamer.stages import FileJob, decode_job

REAL = Path(__file__).resolve().parents[1] / "streamer" / "data" / "audio"
MINUTE = 12 * WINDOW_SAMPLES


def test_real_minute_decodes_exactly():
    path = REAL / "BC2026_Test_0001_S90_20190522_000000.ogg"
    audio = read_span(path, MINUTE)
    ref, sr = sf.read(path, dtype="float32")
    assert sr == 32000 and audio.samples.dtype == np.float32
    np.testing.assert_array_equal(audio.samples, ref[:MINUTE])
    assert audio.notes == ()


def test_short_file_is_zero_padded():
    path = REAL / "birds_10s_32k.ogg"
    audio = read_span(path, MINUTE)
    ref, _ = sf.read(path, dtype="float32")
    assert audio.samples.shape == (MINUTE,)
    np.testing.assert_array_equal(audio.samples[: len(ref)], ref)
    assert not audio.samples[len(ref) :].any()
    assert audio.n_source_samples == len(ref)
    assert any("padded" in n for n in audio.notes)


def test_long_file_is_cut(tmp_path):
    rng = np.random.default_rng(0)
    x = (0.1 * rng.standard_normal(32000 * 70)).astype(np.float32)
    path = tmp_path / "long.ogg"
    write_audio(path, x, 32000)
    audio = read_span(path, MINUTE)
    full, _ = sf.read(path, dtype="float32")
    np.testing.assert_array_equal(audio.samples, full[:MINUTE])
    assert any("cut" in n for n in audio.notes)


def test_stereo_is_averaged(tmp_path):
    rng = np.random.default_rng(1)
    left = (0.2 * rng.standard_normal(32000 * 6)).astype(np.float32)
    right = (0.2 * rng.standard_normal(32000 * 6)).astype(np.float32)
    path = tmp_path / "stereo.wav"
    write_audio(path, np.stack([left, right], axis=1), 32000, subtype="FLOAT")
    audio = read_span(path, MINUTE)
    np.testing.assert_allclose(audio.samples[: len(left)], (left + right) / 2, atol=1e-7)
    assert any("2 channels" in n for n in audio.notes)


@pytest.mark.parametrize("rate", [48000, 22050, 44100, 16000])
def test_other_rates_are_resampled(tmp_path, rate):
    t = np.arange(int(rate * 7)) / rate
    tone = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    path = tmp_path / f"tone_{rate}.wav"
    write_audio(path, tone, rate, subtype="FLOAT")
    audio = read_span(path, MINUTE)
    assert audio.source_rate_hz == rate
    seg = audio.samples[32000:64000]  # one second in the middle of the tone
    spectrum = np.abs(np.fft.rfft(seg))
    assert abs(int(np.argmax(spectrum)) - 1000) <= 1  # 1 Hz bins: the tone stays at 1 kHz
    assert 0.3 < np.sqrt(np.mean(seg**2)) < 0.4  # RMS of a 0.5 sine ≈ 0.354
    assert not audio.samples[int(7.1 * 32000) :].any()  # padded past the end


def test_nonfinite_samples_are_zeroed(tmp_path):
    x = np.zeros(32000, np.float32)
    x[100] = np.nan
    x[200] = np.inf
    x[300] = 0.25
    path = tmp_path / "nan.wav"
    write_audio(path, x, 32000, subtype="FLOAT")
    audio = read_span(path, MINUTE)
    assert np.isfinite(audio.samples).all() and audio.samples[300] == np.float32(0.25)


def _broken_files(tmp_path):
    real = (REAL / "BC2026_Test_0001_S90_20190522_000000.ogg").read_bytes()
    files = {
        "empty": b"",
        "not_audio": b"this is a text file, not an OGG stream\n" * 20,
        "corrupt": bytes(np.random.default_rng(2).integers(0, 256, 50000, dtype=np.uint8)),
        "header_only": real[:200],
    }
    paths = {}
    for name, data in files.items():
        p = tmp_path / f"{name}.ogg"
        p.write_bytes(data)
        paths[name] = p
    return paths


@pytest.mark.parametrize("name", ["empty", "not_audio", "corrupt", "header_only"])
def test_unreadable_files_raise_decode_error(tmp_path, name):
    path = _broken_files(tmp_path)[name]
    with pytest.raises(AudioDecodeError, match=name):
        read_span(path, MINUTE)
    record = decode_job(FileJob(0, path, name))
    assert record.windows is None and name in record.error


def test_truncated_file_keeps_decoded_part(tmp_path):
    real = (REAL / "BC2026_Test_0002_S90_20190522_060000.ogg").read_bytes()
    path = tmp_path / "truncated.ogg"
    path.write_bytes(real[: len(real) // 3])
    record = decode_job(FileJob(0, path, "truncated"))
    if record.windows is None:  # libsndfile may refuse the whole stream: then it is a fallback
        assert "truncated" in record.error
    else:
        full, _ = sf.read(REAL / "BC2026_Test_0002_S90_20190522_060000.ogg", dtype="float32")
        flat = record.windows.reshape(-1)
        n = int(np.flatnonzero(flat).max()) + 1
        assert 0 < n < MINUTE
        np.testing.assert_allclose(flat[: n // 2], full[: n // 2], atol=1e-6)


LONG = Path(__file__).resolve().parent / "data" / "audio" / "jura_S4A03895_20190522_24h_16min_22k.ogg"


def test_long_archive_file_reads_only_what_it_needs(monkeypatch):
    """A 16-min, 22 kHz recording: only the first minute (plus the resampler's margin) is read."""
    read_frames = []
    real_read = sf.SoundFile.read

    def counting_read(self, frames=-1, *args, **kwargs):
        assert frames > 0, "an unbounded read would load the whole file"
        out = real_read(self, frames, *args, **kwargs)
        read_frames.append(out.shape[0])
        return out

    monkeypatch.setattr(sf.SoundFile, "read", counting_read)
    audio = read_span(LONG, MINUTE)
    assert audio.source_rate_hz == 22000 and audio.samples.shape == (MINUTE,)
    assert sum(read_frames) <= int(60.25 * 22000) + 1
    assert any("cut" in n for n in audio.notes) and any("resampled" in n for n in audio.notes)
    assert np.abs(audio.samples).max() > 0.001  # real sound, not padding


@pytest.mark.parametrize("name", ["BC2026_Test_0001_S90_20190522_000000.ogg", "birds_10s_32k.ogg"])
def test_decoding_into_a_given_buffer_equals_the_plain_result(name):
    plain = read_span(REAL / name, MINUTE)
    buf = np.full(MINUTE, 7.0, np.float32)  # garbage that must be overwritten (padding included)
    direct = read_span(REAL / name, MINUTE, out=buf)
    assert direct.samples is buf
    np.testing.assert_array_equal(buf, plain.samples)
    assert direct.notes == plain.notes


def test_decoding_into_a_buffer_with_resampling(tmp_path):
    path = tmp_path / "tone.wav"
    write_audio(path, 0.1 * np.ones(22050 * 3, np.float32), 22050, subtype="FLOAT")
    buf = np.full(MINUTE, 7.0, np.float32)
    direct = read_span(path, MINUTE, out=buf)
    np.testing.assert_array_equal(buf, read_span(path, MINUTE).samples)
    assert direct.samples is buf


def test_chunks_of_a_long_resampled_file_are_seamless_and_bounded(monkeypatch):
    """The 16-min, 22 kHz real recording: 16 chunks of 60 s, streamed with bounded reads."""
    from streamer.audio import iter_chunks

    sizes = []
    real_read = sf.SoundFile.read

    def spy(self, frames=-1, *args, **kwargs):
        assert 0 < frames <= 1 << 18
        out = real_read(self, frames, *args, **kwargs)
        sizes.append(out.shape[0])
        return out

    monkeypatch.setattr(sf.SoundFile, "read", spy)
    chunks = list(iter_chunks(LONG, MINUTE))
    assert [c.index for c in chunks] == list(range(16))
    assert all(c.n_real == MINUTE for c in chunks)  # 16 min exactly
    assert chunks[3].start_s == 180.0
    first = read_span(LONG, MINUTE).samples
    # the first chunk matches the one-minute decoder away from the cut (which it resamples alone)
    np.testing.assert_allclose(chunks[0].samples[: MINUTE - 32000], first[: MINUTE - 32000], atol=1e-5)


def test_chunks_equal_whole_file_resampling(tmp_path):
    import soxr

    from streamer.audio import iter_chunks

    rng = np.random.default_rng(5)
    stereo = (0.1 * rng.standard_normal((48000 * 25, 2))).astype(np.float32)
    path = tmp_path / "st48.wav"
    write_audio(path, stereo, 48000, subtype="FLOAT")
    whole = soxr.resample(stereo.mean(axis=1, dtype=np.float32), 48000, 32000, quality="HQ")
    chunks = list(iter_chunks(path, 10 * 32000))
    assert [c.n_real for c in chunks] == [320000, 320000, len(whole) - 640000]
    joined = np.concatenate([c.samples[: c.n_real] for c in chunks])
    np.testing.assert_allclose(joined, whole, atol=1e-6)
    assert not chunks[-1].samples[chunks[-1].n_real :].any()


def test_chunks_of_broken_files(tmp_path):
    from streamer.audio import iter_chunks
    from streamer.errors import AudioDecodeError

    empty = tmp_path / "empty.ogg"
    empty.write_bytes(b"")
    with pytest.raises(AudioDecodeError, match="empty.ogg"):
        list(iter_chunks(empty, MINUTE))
