"""The numpy log-mel front end equals the torch one (``experts.LogMel``) and never imports torch.

Differences are absolute, in log units (the log-mel spans about -13.8 .. +10). Both front ends
run a float32 FFT, each with its own round-off, so they cannot agree better than torch agrees with
exact arithmetic; the tolerances below are that, with a margin of 2-4x over the values measured
on the development machine (AMD EPYC, torch 2.13 with MKL, numpy 2.4).
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from streamer.audio import read_span
from streamer.models.logmel import LogMelNumpy, hann_window_np, mel_filterbank_np

torch = pytest.importorskip("torch")

from streamer.models.experts import LogMel, mel_filterbank  # noqa: E402

REAL_AUDIO = Path(__file__).resolve().parents[1] / "streamer" / "data" / "audio"
N = 160000
SR = 32000


def _torch_logmel(wave: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return LogMel().eval()(torch.from_numpy(wave)).numpy()


@pytest.fixture(scope="module")
def real_windows():
    """14 five-second windows of the shipped recordings (peaks 0.03-0.14, as decoded)."""
    windows = [read_span(p, N, k * N).samples for p in sorted(REAL_AUDIO.glob("BC2026_Test_*.ogg")) for k in (0, 5, 11)]
    windows += [read_span(REAL_AUDIO / "birds_10s_32k.ogg", N, k * N).samples for k in (0, 1)]
    return np.stack(windows)


def test_shape_and_dtype():
    rng = np.random.default_rng(0)
    wave = (0.1 * rng.standard_normal((3, N))).astype(np.float32)
    got = LogMelNumpy()(wave)
    assert got.shape == (3, 1, 128, 501)
    assert got.dtype == np.float32
    assert got.flags.c_contiguous
    assert LogMelNumpy()(wave[:1]).shape == (1, 1, 128, 501)


def test_filterbank_and_window_match_torch():
    fb = mel_filterbank_np()
    assert fb.shape == (513, 128) and fb.dtype == np.float32
    # torch builds the filters in float32: its band edges near 10 kHz carry ~1e-3 Hz of round-off,
    # which over a ~300 Hz slope is ~1e-5 (1.4e-5 measured); ours are float64 rounded once.
    np.testing.assert_allclose(fb, mel_filterbank().numpy(), rtol=0, atol=5e-5)
    np.testing.assert_allclose(hann_window_np(), torch.hann_window(1024, periodic=True).numpy(), rtol=0, atol=1e-6)


def test_real_audio_matches_torch(real_windows):
    diff = np.abs(LogMelNumpy()(real_windows) - _torch_logmel(real_windows))
    # Measured: max 2.7e-4 (5.5e-4 over all 51 non-empty windows of the recordings), 99.9th
    # percentile 7e-5, mean 5e-6. The largest differences are in bands 6-10 log units below
    # the frame's peak, where a float32 FFT's round-off is a visible part of the band's energy.
    assert diff.max() <= 1e-3
    assert np.quantile(diff, 0.999) <= 2e-4
    assert diff.mean() <= 2e-5


def test_loud_audio_matches_torch_to_fft_round_off(real_windows):
    loud = (0.99 * real_windows / np.abs(real_windows).max(axis=1, keepdims=True)).astype(np.float32)
    diff = np.abs(LogMelNumpy()(loud) - _torch_logmel(loud))
    # Normalised to full scale, a few bands of loud frames fall 11 decades of power below the
    # frame's peak, near the 1e-6 offset: there float32 round-off decides the value. Measured over
    # all 51 windows: torch vs float64 truth up to 3.8e-3, numpy vs float64 truth up to 8.8e-4,
    # numpy vs torch up to 4.0e-3; everywhere else the agreement is as at recorded levels.
    assert diff.max() <= 1e-2
    assert np.quantile(diff, 0.999) <= 5e-4


def test_silence_is_the_log_offset():
    got = LogMelNumpy()(np.zeros((2, N), dtype=np.float32))
    # Zero power in every band: both sides give log(float32(1e-6)); one ulp allowed for two
    # different float32 log implementations (equal in practice).
    np.testing.assert_allclose(got, np.full_like(got, np.log(np.float32(1e-6))), rtol=0, atol=2e-6)
    np.testing.assert_allclose(got, _torch_logmel(np.zeros((2, N), dtype=np.float32)), rtol=0, atol=2e-6)


def test_low_level_signals_match_torch():
    rng = np.random.default_rng(0)
    t = np.arange(N) / SR
    wave = np.stack(
        [
            1e-3 * np.sin(2 * np.pi * 1000.0 * t),  # quiet tone (-60 dBFS)
            1e-5 * rng.standard_normal(N),  # near-silence noise
            np.round(0.5 * rng.standard_normal(N)) / 32768,  # 16-bit dither only
        ]
    ).astype(np.float32)
    diff = np.abs(LogMelNumpy()(wave) - _torch_logmel(wave))
    # At these levels most bands sit at or below the 1e-6 offset, which bounds d(log) by
    # d(mel) / 1e-6, and the FFT round-off in d(mel) scales with the (tiny) signal power.
    # Measured: max 1.5e-5.
    assert diff.max() <= 1e-4


def test_chunking_and_batch_do_not_change_the_result(real_windows):
    wave = real_windows[:3]
    ref = LogMelNumpy()(wave)
    # Chunk boundaries only change how many frames go through one FFT / matmul call; the BLAS
    # kernel may sum a row in another order for another matrix height (float32 round-off only).
    for chunk in (7, 501, 1000):
        np.testing.assert_allclose(LogMelNumpy(frames_per_chunk=chunk)(wave), ref, rtol=0, atol=1e-5)
    np.testing.assert_allclose(LogMelNumpy()(wave[1:2]), ref[1:2], rtol=0, atol=1e-5)


def test_student_logits_from_numpy_logmel_match(kit, real_windows):
    from streamer.config import InferConfig
    from streamer.metadata import load_competition
    from streamer.models.moe import load_student
    from streamer.stages import bind_config
    from streamer.standins import N_CLASSES

    bound, _ = bind_config(InferConfig.create(data_dir=kit.data_dir, perch=kit.perch_onnx, moe_dir=kit.moe_dir),
                           load_competition(kit.data_dir))
    wave = real_windows[:2]
    mel_torch = torch.from_numpy(_torch_logmel(wave))
    mel_numpy = torch.from_numpy(LogMelNumpy()(wave))
    for kind, path in (("cnn", bound.member("cnn").paths[0]), ("crnn", bound.member("crnn").paths[0])):
        net = load_student(path, kind, n_classes=N_CLASSES).eval()
        with torch.inference_mode():
            a, b = net(mel_torch)[1].numpy(), net(mel_numpy)[1].numpy()
        # The stand-in students' logits span about -12..+11. Measured over all 51 windows: max
        # difference 1.2e-5 (CRNN), 2.5e-5 at full scale, i.e. float32 round-off of the networks.
        np.testing.assert_allclose(b, a, rtol=0, atol=2e-4)


def test_import_does_not_load_torch():
    code = (
        "import sys\n"
        "before = set(sys.modules)\n"
        "import streamer.models.logmel\n"
        "new = {m.split('.')[0] for m in set(sys.modules) - before}\n"
        "print(sorted(n for n in new if n not in sys.stdlib_module_names))\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    third_party, torch_loaded = out.stdout.strip().splitlines()
    assert torch_loaded == "False"
    assert third_party == "['numpy', 'streamer']"
