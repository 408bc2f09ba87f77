"""streamer.kaiser: resampy's kaiser_fast as librosa applies it, against resampy itself."""

from pathlib import Path

import numpy as np
import pytest

from streamer.kaiser import BETA, NUM_ZEROS, PRECISION_BITS, ROLLOFF, KaiserFast, kaiser_fast_table

DATA = Path(__file__).resolve().parent / "data"
OGG = DATA / "audio" / "jura_S4A03895_20190522_24h_16min_22k.ogg"
FIXTURE = DATA / "kaiser" / "resampy_kaiser_fast.npz"

#: Acceptance bound on audio in [-1, 1] (float32 accumulation order; measured ~6e-7).
TOL = 2e-6

UP = [(8000, 48000), (16000, 48000), (22050, 48000), (22000, 48000), (32000, 48000), (44100, 48000)]
DOWN = [(96000, 48000), (88200, 48000)]
AWKWARD = [
    (44056, 48000),  # L = 6000 after the gcd
    (44057, 48000),  # coprime: L = 48000, beyond the default table budget (matrices rebuilt per block)
    (48100, 48000),  # resampy's float time falls just below an integer at phase 0 (fragile phase 0)
    (51200, 44100),  # a wing's tap count changes at an exact table position (fragile phases 212, 229)
]


def _resampy():
    return pytest.importorskip("resampy", reason="resampy (the reference implementation) is not installed")


def librosa_kaiser_fast(x, rate_in, rate_out):
    """librosa.resample(x, orig_sr=rate_in, target_sr=rate_out, res_type="kaiser_fast")."""
    y = _resampy().resample(x, rate_in, rate_out, filter="kaiser_fast")
    size = int(np.ceil(x.shape[0] * (float(rate_out) / rate_in)))  # librosa.util.fix_length:
    return y[:size] if y.shape[0] >= size else np.pad(y, (0, size - y.shape[0]))


@pytest.fixture(scope="module")
def excerpt():
    """2.5 s of birdsong from the field recording at its own 22 kHz, without the recorder's DC
    offset, scaled to a peak of 0.99."""
    sf = pytest.importorskip("soundfile")
    x, rate = sf.read(str(OGG), start=22000 * 410, frames=int(22000 * 2.5), dtype="float32")
    assert rate == 22000
    x = x - x.mean()
    return (x / np.abs(x).max() * 0.99).astype(np.float32)


def at_rate(excerpt, rate, seconds=None):
    if rate == 22000:
        x = excerpt
    else:
        soxr = pytest.importorskip("soxr")
        x = np.clip(soxr.resample(excerpt, 22000, rate), -1, 1).astype(np.float32)
    return x if seconds is None else x[: int(rate * seconds)]


# ---------------------------------------------------------------------------------------- table


def test_table_from_parameters():
    win = kaiser_fast_table()
    assert win.shape == (NUM_ZEROS * 2**PRECISION_BITS + 1,) and win.dtype == np.float64
    assert win[0] == ROLLOFF
    assert win[-1] == pytest.approx(ROLLOFF * np.sinc(NUM_ZEROS * ROLLOFF) / np.i0(BETA), rel=1e-14)
    assert 9.90322 == round(BETA, 5)  # the published (rounded) beta


def test_table_equals_resampy_npz():
    resampy = _resampy()
    from importlib import resources

    with resources.as_file(resources.files(resampy) / "data" / "kaiser_fast.npz") as path:
        ref = np.load(path)
        half, precision, rolloff = ref["half_window"], int(ref["precision"]), float(ref["rolloff"])
    assert precision == 2**PRECISION_BITS and rolloff == ROLLOFF
    win = kaiser_fast_table()
    assert win.shape == half.shape
    np.testing.assert_allclose(win, half, rtol=0, atol=4.5e-16)
    assert np.mean(win == half) > 0.9  # most entries bit for bit


# ----------------------------------------------------------------------------- against resampy


@pytest.mark.parametrize("rate_in,rate_out", UP + DOWN + AWKWARD)
def test_matches_librosa_kaiser_fast(excerpt, rate_in, rate_out):
    x = at_rate(excerpt, rate_in, seconds=2.0)
    ref = librosa_kaiser_fast(x, rate_in, rate_out)
    k = KaiserFast(rate_in, rate_out, exact=False)
    y = k.resample(x)
    assert y.dtype == np.float32
    assert y.shape == ref.shape == (k.n_out(x.shape[0]),)
    assert np.max(np.abs(y - ref)) <= TOL
    if (rate_in, rate_out) == (44057, 48000):
        assert not k.precomputed
    if (rate_in, rate_out) in AWKWARD[2:]:
        assert k._fragile_phases.size  # the case exercises the one-by-one path


def test_matches_committed_fixture():
    """The same check without resampy: its outputs for three rate pairs, made once (README);
    the exact path to the bit, the matrix path within TOL."""
    ref = np.load(FIXTURE)
    for rate in (22050, 44100, 96000):
        x, want = ref[f"x_{rate}"], ref[f"y_{rate}"]
        y = KaiserFast(rate, 48000).resample(x)
        assert y.shape == want.shape
        np.testing.assert_array_equal(y[: want.shape[0]], want, err_msg=str(rate))
        slow = KaiserFast(rate, 48000)
        slow.use_numba = False
        np.testing.assert_array_equal(slow.resample(x), want, err_msg=f"{rate}, numpy path")
        fast = KaiserFast(rate, 48000, exact=False).resample(x)
        assert np.max(np.abs(fast - want)) <= TOL, rate


def _exact(rate_in, rate_out, compiled: bool) -> KaiserFast:
    if compiled:
        pytest.importorskip("numba", reason="numba (the compiled exact loop) is not installed")
    k = KaiserFast(rate_in, rate_out, exact=True)
    k.use_numba = compiled
    return k


@pytest.mark.parametrize("compiled", [False, True], ids=["numpy", "numba"])
@pytest.mark.parametrize("rate_in,rate_out", UP + DOWN + AWKWARD)
def test_the_exact_path_is_resampy_to_the_bit(excerpt, rate_in, rate_out, compiled):
    """resampy's float times, weights and float32 accumulation order: the same bits, so
    BirdNET's confidences are BirdNET-Analyzer's; the compiled loop and the numpy one alike."""
    x = at_rate(excerpt, rate_in, seconds=2.0)
    ref = librosa_kaiser_fast(x, rate_in, rate_out)
    np.testing.assert_array_equal(_exact(rate_in, rate_out, compiled).resample(x), ref)


@pytest.mark.parametrize("compiled", [False, True], ids=["numpy", "numba"])
def test_exact_spans_equal_the_whole_bit_for_bit(excerpt, compiled):
    k = _exact(44100, 48000, compiled)
    x = at_rate(excerpt, 44100, seconds=2.3)
    n_in, n_out = x.shape[0], k.n_out(x.shape[0])
    parts = []
    for a in range(0, n_out, 7_777):
        b = min(a + 7_777, n_out)
        lo, hi = k.support(a, b, n_in)
        parts.append(k.span(x[lo:hi], lo, n_in, a, b))
    np.testing.assert_array_equal(np.concatenate(parts), k.resample(x))


def test_fallback_matches_table(excerpt):
    """Rebuilding the group matrices per block (the memory-bounded path) gives the same numbers."""
    x = at_rate(excerpt, 44100, seconds=2.0)
    kept, rebuilt = KaiserFast(44100, 48000, exact=False), KaiserFast(44100, 48000, max_table_bytes=0, exact=False)
    assert kept.precomputed and not rebuilt.precomputed
    assert np.max(np.abs(kept.resample(x) - rebuilt.resample(x))) <= 1e-7


# ------------------------------------------------------------------------------------ lengths


@pytest.mark.parametrize("rate_in", [8000, 22050, 44100, 88200, 96000, 44056])
def test_n_out_is_librosas_length(rate_in):
    k = KaiserFast(rate_in, 48000)
    for n in [0, 1, 2, 7, 147, 294, 1000, 44100, 132300, 12345678]:
        assert k.n_out(n) == int(np.ceil(n * (float(48000) / rate_in)))
    # librosa's float ratio: one second at 44.1 kHz gives 48001 samples (a padding zero)
    assert KaiserFast(44100, 48000).n_out(44100) == 48001
    assert KaiserFast(44100, 48000).n_out(3 * 44100) == 3 * 48000


def test_edges_against_resampy(excerpt):
    x = at_rate(excerpt, 44100)
    for rate_in, rate_out, n in [(8000, 48000, 1), (8000, 48000, 5), (44100, 48000, 3), (44100, 48000, 30),
                                 (96000, 48000, 2), (96000, 48000, 47), (22050, 48000, 100)]:
        xs = x[1000: 1000 + n].copy()
        ref = librosa_kaiser_fast(xs, rate_in, rate_out)
        y = KaiserFast(rate_in, rate_out).resample(xs)
        assert y.shape == ref.shape and np.max(np.abs(y - ref)) <= TOL, (rate_in, n)


def test_empty_and_too_short_inputs():
    """Where librosa's resampy call raises (output length 0) the result is librosa's length of
    zeros: nothing for an empty input, one zero for one sample halved."""
    assert KaiserFast(44100, 48000).resample(np.zeros(0, np.float32)).shape == (0,)
    y = KaiserFast(96000, 48000).resample(np.ones(1, np.float32))
    assert y.dtype == np.float32 and y.tolist() == [0.0]
    assert KaiserFast(96000, 48000).support(0, 1, 1) == (0, 0)


def test_equal_rates_return_the_input():
    x = np.linspace(-1, 1, 101, dtype=np.float32)
    k = KaiserFast(48000, 48000)
    assert k.resample(x) is x and k.n_out(101) == 101
    assert k.support(10, 20, 101) == (10, 20)
    np.testing.assert_array_equal(k.span(x[5:30], 5, 101, 10, 20), x[10:20])


@pytest.mark.parametrize("bad", [0, -48000, 44100.0, True, None])
def test_rates_must_be_positive_integers(bad):
    with pytest.raises(ValueError, match="positive integer"):
        KaiserFast(bad, 48000)
    with pytest.raises(ValueError, match="positive integer"):
        KaiserFast(48000, bad)


def test_rejects_non_mono():
    with pytest.raises(ValueError, match="1-d"):
        KaiserFast(44100, 48000).resample(np.zeros((2, 100), np.float32))


# ---------------------------------------------------------------------------------- streaming


@pytest.mark.parametrize("rate_in,rate_out,max_table_bytes", [
    (44100, 48000, None), (22050, 48000, None), (96000, 48000, None), (8000, 48000, None),
    (88200, 48000, None), (48100, 48000, None), (44100, 48000, 0),
])
def test_span_blocks_equal_whole(excerpt, rate_in, rate_out, max_table_bytes):
    """60-s style streaming with smaller blocks: spans from just their support, concatenated,
    are bit for bit the whole resample, including librosa's padding zero at the end."""
    kw = {} if max_table_bytes is None else {"max_table_bytes": max_table_bytes}
    k = KaiserFast(rate_in, rate_out, exact=False, **kw)
    x = at_rate(excerpt, rate_in, seconds=2.3)
    n_in = x.shape[0]
    whole = k.resample(x)
    block = 13_331  # output samples per block, not aligned to anything
    parts = []
    for a in range(0, k.n_out(n_in), block):
        b = min(a + block, k.n_out(n_in))
        lo, hi = k.support(a, b, n_in)
        assert 0 <= lo <= hi <= n_in
        parts.append(k.span(x[lo:hi], lo, n_in, a, b))
        # a wider part gives the same numbers
        lo2, hi2 = max(0, lo - 999), min(n_in, hi + 7)
        np.testing.assert_array_equal(k.span(x[lo2:hi2], lo2, n_in, a, b), parts[-1])
    np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_span_of_the_padding_is_zeros():
    k = KaiserFast(44100, 48000)
    n_in = 44100
    assert k.n_out(n_in) == k.n_resampy(n_in) + 1
    x = np.ones(n_in, np.float32)
    assert k.support(48000, 48001, n_in) == (0, 0)
    assert k.span(x[:0], 0, n_in, 48000, 48001).tolist() == [0.0]


def test_support_is_what_span_needs(excerpt):
    k = KaiserFast(44100, 48000)
    x = at_rate(excerpt, 44100, seconds=1.5)
    n_in = x.shape[0]
    a, b = 20_000, 30_000
    lo, hi = k.support(a, b, n_in)
    assert lo < (a * 147) // 160 and hi > ((b - 1) * 147) // 160 + 1
    assert k.support(0, 10, n_in)[0] == 0 and k.support(k.n_out(n_in) - 5, k.n_out(n_in), n_in)[1] == n_in
    with pytest.raises(ValueError, match=r"need input samples \[\d+, \d+\) but x_part covers"):
        k.span(x[lo + 1:hi], lo + 1, n_in, a, b)
    with pytest.raises(ValueError, match="need input samples"):
        k.span(x[lo:hi - 1], lo, n_in, a, b)
    with pytest.raises(ValueError, match="not within"):
        k.span(x, 0, n_in, 0, k.n_out(n_in) + 1)
    with pytest.raises(ValueError, match="not within"):
        k.support(5, 4, n_in)
    with pytest.raises(ValueError, match="outside the signal"):
        k.span(x, 10, n_in, a, b)
