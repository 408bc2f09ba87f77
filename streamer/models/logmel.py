"""The students' log-mel front end in numpy alone.

A process whose students run in onnxruntime needs the log-mel input but nothing else from torch;
importing torch for it would cost over a second and a few hundred MB of resident memory. This
module computes the same numbers as :class:`streamer.models.experts.LogMel` with numpy and the
standard library only (it must never import torch, directly or through another module).

The settings below are the students' (torchaudio ``MelSpectrogram`` with these values, then
``log(mel + 1e-6)``); living in this torch-free module, they can be the one definition that
both front ends use.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

#: Log-mel settings of the students (torchaudio ``MelSpectrogram`` defaults
#: plus these values; natural log with this offset, no other scaling).
MEL_SAMPLE_RATE_HZ = 32000
MEL_N_FFT = 1024
MEL_WIN_LENGTH = 1024
MEL_HOP_LENGTH = 320
MEL_F_MIN_HZ = 20.0
MEL_F_MAX_HZ = 14000.0
MEL_N_MELS = 128
MEL_LOG_OFFSET = 1e-6

#: Frames transformed per step. Bounds the scratch memory (about 12 KB per frame: the windowed
#: frame, its spectrum and its power) and keeps one step's data in the CPU cache.
FRAMES_PER_CHUNK = 128


def _hz_to_mel_htk(freq_hz):
    return 2595.0 * np.log10(1.0 + np.asarray(freq_hz, dtype=np.float64) / 700.0)


def _mel_to_hz_htk(mel):
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank_np(
    n_freqs: int = MEL_N_FFT // 2 + 1,
    f_min_hz: float = MEL_F_MIN_HZ,
    f_max_hz: float = MEL_F_MAX_HZ,
    n_mels: int = MEL_N_MELS,
    sample_rate_hz: int = MEL_SAMPLE_RATE_HZ,
) -> np.ndarray:
    """Triangular HTK mel filters without area normalisation, as torchaudio builds them.

    Computed in float64 and rounded once; equals ``experts.mel_filterbank`` (which works in
    float32 throughout) to float32 round-off.

    Returns:
        float32 array ``[n_freqs, n_mels]``.
    """
    all_freqs = np.linspace(0.0, sample_rate_hz // 2, n_freqs)
    m_pts = np.linspace(_hz_to_mel_htk(f_min_hz), _hz_to_mel_htk(f_max_hz), n_mels + 2)
    f_pts = _mel_to_hz_htk(m_pts)
    f_diff = np.diff(f_pts)
    slopes = f_pts[None, :] - all_freqs[:, None]  # [n_freqs, n_mels + 2]
    down_slopes = -slopes[:, :-2] / f_diff[:-1]
    up_slopes = slopes[:, 2:] / f_diff[1:]
    return np.maximum(np.minimum(down_slopes, up_slopes), 0.0).astype(np.float32)


def hann_window_np(length: int = MEL_WIN_LENGTH) -> np.ndarray:
    """Periodic Hann window (``torch.hann_window(length, periodic=True)``), float32 ``[length]``."""
    n = np.arange(length, dtype=np.float64)
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * n / length)).astype(np.float32)


class LogMelNumpy:
    """Waveform windows to the students' log-mel input, without torch.

    Same computation as :class:`streamer.models.experts.LogMel`: periodic Hann window, centred
    frames with reflect padding, one-sided FFT, power 2, unnormalised HTK mel filters,
    ``log(mel + 1e-6)``. Frames are strided views of the padded signal (no frame copies); they
    are windowed, transformed and reduced to mel bands :data:`FRAMES_PER_CHUNK` frames at a time,
    so scratch memory stays about 1.5 MB whatever the batch.

    numpy >= 2 transforms float32 in float32, as ``torch.stft`` does; numpy 1.x transforms in
    float64 (slower, and no closer to torch, whose own float32 round-off dominates the
    difference). The log-mel matches torch's to a few 1e-4 (absolute, in log units) on the shipped
    recordings; the largest differences sit in bands far below a loud frame's peak, where both
    float32 transforms are at their round-off (see ``tests/test_logmel_numpy.py``).
    """

    def __init__(self, frames_per_chunk: int = FRAMES_PER_CHUNK) -> None:
        if frames_per_chunk < 1:
            raise ValueError(f"frames_per_chunk must be positive, got {frames_per_chunk}")
        self.window = hann_window_np(MEL_WIN_LENGTH)
        self.fbank = mel_filterbank_np()  # [513, 128]
        self.frames_per_chunk = int(frames_per_chunk)

    def n_frames(self, n_samples: int) -> int:
        """Frames per waveform of ``n_samples`` samples (501 for 160,000)."""
        return 1 + n_samples // MEL_HOP_LENGTH

    def __call__(self, waveform: np.ndarray) -> np.ndarray:
        """Args: waveform float32 ``[B, n_samples]``. Returns float32 ``[B, 1, 128, n_frames]``
        (501 frames for 160,000 samples)."""
        wave = np.asarray(waveform, dtype=np.float32)
        if wave.ndim != 2:
            raise ValueError(f"waveform must be [B, n_samples], got shape {wave.shape}")
        n_batch, n_samples = wave.shape
        pad = MEL_N_FFT // 2
        if n_samples <= pad:
            raise ValueError(f"reflect padding needs more than {pad} samples per waveform, got {n_samples}")
        n_frames = self.n_frames(n_samples)
        n_freqs = MEL_N_FFT // 2 + 1
        padded = np.pad(wave, ((0, 0), (pad, pad)), mode="reflect")
        frames = sliding_window_view(padded, MEL_N_FFT, axis=-1)[:, ::MEL_HOP_LENGTH]  # [B, F, n_fft] view
        mel = np.empty((n_batch, n_frames, MEL_N_MELS), dtype=np.float32)
        step = min(self.frames_per_chunk, n_frames)
        windowed = np.empty((step, MEL_N_FFT), dtype=np.float32)
        power = np.empty((step, n_freqs), dtype=np.float32)
        scratch = np.empty((step, n_freqs), dtype=np.float32)
        for b in range(n_batch):
            for start in range(0, n_frames, step):
                stop = min(start + step, n_frames)
                k = stop - start
                np.multiply(frames[b, start:stop], self.window, out=windowed[:k])
                spectrum = np.fft.rfft(windowed[:k], axis=-1)
                re, im = spectrum.real, spectrum.imag
                np.multiply(re, re, out=power[:k])
                np.multiply(im, im, out=scratch[:k])
                power[:k] += scratch[:k]
                np.matmul(power[:k], self.fbank, out=mel[b, start:stop])
        mel += np.float32(MEL_LOG_OFFSET)
        np.log(mel, out=mel)
        return np.ascontiguousarray(mel.transpose(0, 2, 1))[:, None]
