"""Writes the audio inputs of the BirdNET peer fixture (tests/data/birdnet_peer/).

    python benchmarks/birdnet_peer/make_audio.py derived [AUDIO_DIR]    (default tests/data/audio)
    python benchmarks/birdnet_peer/make_audio.py synthetic OUT_DIR

``derived`` writes the two committed excerpts of the Jura 24-h survey
(tests/data/audio/jura_S4A03895_20190522_24h_16min_22k.ogg: 96 ten-second clips, 15 min
apart from midnight, 22 000 Hz mono; clip i covers seconds [10 i, 10 i + 10) and was recorded
at i * 15 min after 00:00):

* ``jura_dawn_44k1_stereo.flac``: 45.5 s, 44 100 Hz, 2 channels. Channel 1 = seconds
  200.0-245.5 (clips 20-24, 05:00-06:00, the dawn chorus), channel 2 = seconds 310.0-355.5
  (clips 31-35, 07:45-08:45) at half amplitude (-6 dB): the channels differ, so the mean of
  the channels matters. 45.5 s = 15 full 3-s windows + 0.5 s, a last window the peer drops.
* ``jura_excerpt_48k.flac``: 30 s, 48 000 Hz mono, seconds 280-310 (clips 28-30,
  07:00-07:30): exactly 10 windows at the model's rate (the peer does not resample it).

Both are resampled from the 22 kHz original with soxr (quality 'HQ'), quantised by this script
(round(x * 32767), clipped) and written with soundfile as FLAC PCM_16 (compression level 1.0),
so that they are the same bytes on every run with the same libsndfile.

``synthetic`` writes two 20-s 48 kHz mono WAV PCM_16 files that are not committed (white noise
does not compress); tests can rebuild them bit for bit from this description alone:

* ``silence_20s_48k.wav``: 960 000 zeros;
* ``white_noise_20s_48k.wav``: uniform white noise of RMS -20 dBFS, integer arithmetic only:
  ``raw = numpy.random.PCG64(20261207).random_raw(960000)`` (uint64; this bit stream is stable
  across NumPy versions), ``v = raw >> 32`` (uint32), ``s = (v * 11355) >> 32`` (0..11354),
  sample = ``s - 5677`` as int16 (range -5677..5677; RMS ~ 5677/sqrt(3) = 3278 ~ 0.1 of 32768).
"""

from __future__ import annotations

import os
import sys

import numpy as np
import soundfile as sf

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
JURA = "jura_S4A03895_20190522_24h_16min_22k.ogg"

NOISE_SEED = 20261207
NOISE_FRAMES = 20 * 48000
NOISE_HALF_RANGE = 5677


def _excerpt(x: np.ndarray, sr: int, start_s: float, dur_s: float) -> np.ndarray:
    a = int(round(start_s * sr))
    return x[a : a + int(round(dur_s * sr))]


def _resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    import soxr

    return soxr.resample(x.astype(np.float64), sr_in, sr_out, quality="HQ")


def _to_int16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * 32767.0), -32768, 32767).astype(np.int16)


def derived(audio_dir: str) -> None:
    x, sr = sf.read(os.path.join(audio_dir, JURA), dtype="float64")
    assert sr == 22000 and x.ndim == 1, (sr, x.shape)

    ch1 = _resample(_excerpt(x, sr, 200.0, 45.5), sr, 44100)
    ch2 = 0.5 * _resample(_excerpt(x, sr, 310.0, 45.5), sr, 44100)
    assert len(ch1) == len(ch2) == int(45.5 * 44100), (len(ch1), len(ch2))
    stereo = _to_int16(np.stack([ch1, ch2], axis=1))
    out = os.path.join(audio_dir, "jura_dawn_44k1_stereo.flac")
    sf.write(out, stereo, 44100, format="FLAC", subtype="PCM_16", compression_level=1.0)
    print(out, stereo.shape)

    mono = _to_int16(_resample(_excerpt(x, sr, 280.0, 30.0), sr, 48000))
    assert len(mono) == 30 * 48000, len(mono)
    out = os.path.join(audio_dir, "jura_excerpt_48k.flac")
    sf.write(out, mono, 48000, format="FLAC", subtype="PCM_16", compression_level=1.0)
    print(out, mono.shape)


def white_noise_int16() -> np.ndarray:
    raw = np.random.PCG64(NOISE_SEED).random_raw(NOISE_FRAMES).astype(np.uint64)
    v = raw >> np.uint64(32)
    s = (v * np.uint64(2 * NOISE_HALF_RANGE + 1)) >> np.uint64(32)
    return (s.astype(np.int64) - NOISE_HALF_RANGE).astype(np.int16)


def synthetic(out_dir: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    sf.write(os.path.join(out_dir, "silence_20s_48k.wav"), np.zeros(NOISE_FRAMES, np.int16), 48000, subtype="PCM_16")
    noise = white_noise_int16()
    sf.write(os.path.join(out_dir, "white_noise_20s_48k.wav"), noise, 48000, subtype="PCM_16")
    rms = np.sqrt(np.mean(noise.astype(np.float64) ** 2)) / 32768.0
    print(f"{out_dir}: silence_20s_48k.wav, white_noise_20s_48k.wav (RMS {20 * np.log10(rms):.2f} dBFS)")


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "derived":
        derived(sys.argv[2] if len(sys.argv) > 2 else os.path.join(REPO, "tests", "data", "audio"))
    elif len(sys.argv) == 3 and sys.argv[1] == "synthetic":
        synthetic(sys.argv[2])
    else:
        sys.exit(__doc__)
