"""The log-mel front end equals torchaudio's MelSpectrogram formula, checked in numpy float64."""

import numpy as np
import torch

from streamer.models.experts import LogMel


def _reference_logmel(wave):
    """Textbook STFT → power → HTK triangular mel filters (unnormalised) → log(x + 1e-6)."""
    sr, n_fft, hop, n_mels, f_min, f_max = 32000, 1024, 320, 128, 20.0, 14000.0
    x = np.asarray(wave, dtype=np.float64)
    pad = n_fft // 2
    x = np.concatenate([x[1 : pad + 1][::-1], x, x[-pad - 1 : -1][::-1]])  # reflect padding
    n = np.arange(n_fft)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / n_fft)  # periodic Hann
    n_frames = 1 + (len(x) - n_fft) // hop
    frames = np.stack([x[i * hop : i * hop + n_fft] * window for i in range(n_frames)])
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2  # [frames, 513]
    hz_to_mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)  # noqa: E731
    mel_to_hz = lambda m: 700.0 * (10 ** (m / 2595.0) - 1.0)  # noqa: E731
    edges = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
    freqs = np.linspace(0, sr // 2, n_fft // 2 + 1)
    fb = np.zeros((len(freqs), n_mels))
    for m in range(n_mels):
        lo, mid, hi = edges[m], edges[m + 1], edges[m + 2]
        rising = (freqs - lo) / (mid - lo)
        falling = (hi - freqs) / (hi - mid)
        fb[:, m] = np.maximum(0.0, np.minimum(rising, falling))
    return np.log(power @ fb + 1e-6).T  # [n_mels, frames]


def test_logmel_matches_formula():
    rng = np.random.default_rng(0)
    t = np.arange(160000) / 32000.0
    wave = (0.3 * np.sin(2 * np.pi * 2500 * t) + 0.05 * rng.standard_normal(160000)).astype(np.float32)
    got = LogMel()(torch.from_numpy(wave[None]))[0, 0].double().numpy()
    ref = _reference_logmel(wave)
    assert got.shape == ref.shape == (128, 501)
    # log domain: absolute error; float32 STFT vs float64 reference
    assert np.max(np.abs(got - ref)) < 2e-3
    assert np.mean(np.abs(got - ref)) < 1e-4


def test_logmel_silence_is_log_offset():
    got = LogMel()(torch.zeros(1, 160000))
    assert torch.allclose(got, torch.full_like(got, float(np.log(1e-6))))


def test_logmel_batch_independent():
    rng = np.random.default_rng(1)
    waves = torch.from_numpy(rng.standard_normal((3, 160000)).astype(np.float32) * 0.1)
    batch = LogMel()(waves)
    single = LogMel()(waves[1:2])
    torch.testing.assert_close(batch[1:2], single, rtol=1e-5, atol=1e-5)
