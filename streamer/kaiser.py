"""resampy's ``kaiser_fast`` resampling, as ``librosa.resample(..., res_type="kaiser_fast")``
applies it: the same numbers, computed as a polyphase filter bank with BLAS.

Why this exists
---------------
BirdNET-Analyzer 2.4, the peer whose scores this project must equal, loads audio with
``librosa.load(path, sr=48000, mono=True, res_type="kaiser_fast")``. librosa reads float32 with
soundfile, averages the channels, calls ``resampy.resample(y, orig_sr, 48000,
filter="kaiser_fast")`` and then ``librosa.util.fix_length`` to ``ceil(n * 48000 / orig_sr)``
samples. Swapping that resampler for soxr (which the rest of this package uses) moves BirdNET's
scores by about 1e-2 and flips detections near the threshold, so parity needs resampy's exact
filter. resampy itself evaluates its interpolation table per output sample in a numba loop:
about 135x real time per core for 44.1 kHz -> 48 kHz, and it pulls numba into the install.
This module reproduces the same output with numpy only, one BLAS product per group of output
phases: about 40x faster than resampy on one core for 22.05k, 32k, 44.1k and 96k -> 48k
(``benchmarks/kaiser_resample.py``, ``benchmarks/results/2026-12-07-kaiser``).

What resampy computes (0.4.x, read from its source; no code of it is used here)
------------------------------------------------------------------------------
The filter is the right half of a Kaiser-windowed sinc, tabulated at ``2**9 = 512`` points per
zero crossing over 24 zero crossings (12289 values, :func:`kaiser_fast_table`). For
``ratio = rate_out / rate_in`` (a float) output ``k`` sits at input time ``t = k * (1 / ratio)``
(float64, rounded as written), ``n = int(t)``. With ``scale = min(1, ratio)`` the left wing
weighs ``x[n - i]`` with the table linearly interpolated at ``512 * scale * (t - n) + i * step``,
``step = int(512 * scale)``, the right wing weighs ``x[n + 1 + i]`` at ``512 * (scale - scale *
(t - n)) + i * step``; a wing keeps ``(12289 - offset) // step`` taps (``offset`` being the
integer part of its first position), and taps outside the signal are dropped, which is the same
as zero padding. When downsampling the table is multiplied by ``ratio``. resampy returns
``int(n_in * rate_out / rate_in)`` samples; librosa pads them with zeros (or cuts them) to
``int(ceil(n_in * ratio))``, the product rounded in float64 first: one second at 44.1 kHz
(44100 * ratio = 48000.00000000001) gives 48001 samples, the last a padding zero, while three
seconds give exactly 144000. With equal rates librosa returns the input object unchanged.

How exactness is argued
-----------------------
With ``L / M = rate_out / rate_in`` reduced by their gcd, the exact time of output ``k = q * L +
p`` is ``q * M + p * M / L``, so every output of phase ``p`` uses the same weights on a window
that moves by ``M`` inputs per period. The weights of phase ``p`` are computed here exactly as
resampy computes those of output ``p`` (its own float time ``p * (1 / ratio)``), so the first
period's weights are resampy's own. Later periods differ from resampy only by the rounding of
resampy's float times (about ``t * 2**-52``), which moves a weight continuously by a negligible
amount, except where resampy's weights jump. They jump in two places, and the outputs concerned
are computed one by one with resampy's own float times instead of the phase table ("fragile"
phases, found with integer arithmetic at construction):

* when the exact time is an integer (phase 0) and resampy's float time lands just below it
  (possible only when its float period ``1 / ratio`` is below ``M / L``): ``n`` drops by one and,
  when ``512 * scale`` is not an integer (most downsampling ratios), the wings land on other
  table positions (measured: up to 7.7e-5 off on full-scale audio if ignored);
* when a wing's exact table position is an integer at which the tap count
  ``(12289 - offset) // step`` changes: rounding decides whether the last, tiny tap is kept
  (up to 6.3e-6 off if ignored).

Elsewhere an exact table position differs from an integer by at least ``1 / max(L, M)``, far
more than the drift of resampy's float times (``512 * t * 2**-51`` table positions at input time
``t``) until ``t`` nears ``1e12 / L`` input samples (39 hours at 44.1k -> 48k, 8 minutes at
44057 -> 48000 where L = 48000); past that the last, tiny tap of a wing (a weight below 1.2e-5,
2.1e-6 when upsampling) may be kept where resampy drops it, or the reverse. Measured on 10
minutes of real audio resampled whole: 4.2e-7 max abs difference for both of those ratios.
What remains is the order and precision of the sums: resampy adds float64 products into a
float32 accumulator tap by tap, here a float32 GEMM sums them in its own order (the fragile
outputs sum in float64). The tests compare with resampy on real audio for many rate pairs (max
abs difference of a few 1e-7 on audio in [-1, 1]) and against a committed fixture made by
resampy.

Streaming: :meth:`KaiserFast.span` returns exactly (bit for bit) ``resample(x)[a:b]`` from a
part of ``x`` that covers :meth:`KaiserFast.support`. Outputs are computed in blocks on a grid
fixed in absolute output positions, every block with the same matrix shapes, so an output's
arithmetic never depends on where a call starts or ends.

The filter table is computed here from resampy's published ``kaiser_fast`` parameters (24 zero
crossings, 9 bits of precision, roll-off 0.8682120388377784 as stored in resampy's table). Its
Kaiser beta is published rounded to 9.90322; the full-precision value 9.903224416455277 is the
one that reproduces resampy's stored table (solved from the table's last entry, ``roll-off *
sinc(24 * roll-off) / I0(beta)``); with it the table here equals resampy's ``kaiser_fast.npz``
to 2.3e-16 (97% of entries bit for bit; the rest differ by numpy's and scipy's Bessel I0 in the
last bit), whereas the rounded 9.90322 would be off by up to 6e-9.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from fractions import Fraction

import numpy as np

__all__ = ["KaiserFast", "kaiser_fast_table", "NUM_ZEROS", "PRECISION_BITS", "ROLLOFF", "BETA"]

#: resampy ``kaiser_fast``: zero crossings kept on each side of the sinc.
NUM_ZEROS = 24
#: resampy ``kaiser_fast``: table points per zero crossing, as a power of two (512).
PRECISION_BITS = 9
#: resampy ``kaiser_fast``: roll-off as a fraction of Nyquist (the value stored with its table).
ROLLOFF = 0.8682120388377784
#: resampy ``kaiser_fast``: Kaiser window beta (published as 9.90322; see the module docstring).
BETA = 9.903224416455277

_NUM_TABLE = 1 << PRECISION_BITS
_NWIN = NUM_ZEROS * _NUM_TABLE + 1

#: Upper bound on the polyphase weight matrices one resampler keeps; beyond it (a huge ``L``
#: after the gcd) the matrices are rebuilt for every block instead (same numbers, slower).
MAX_TABLE_BYTES = 8 << 20

#: Outputs per block (about): the unit of the fixed computation grid.
_BLOCK_OUTPUTS = 1 << 15

#: Relative cost of copying one window element against one multiply-add in the GEMM, for the
#: choice of phases per group (measured roughly; only speed depends on it).
_COPY_COST = 32.0


@functools.lru_cache(maxsize=1)
def _table() -> np.ndarray:
    n = NUM_ZEROS * _NUM_TABLE
    j = np.arange(n + 1)
    # sinc at j / 512 zero crossings (exact in binary), scaled by the roll-off
    sinc = ROLLOFF * np.sinc(ROLLOFF * (j / _NUM_TABLE))
    # right half of a symmetric Kaiser window of 2n + 1 points
    taper = np.i0(BETA * np.sqrt(1.0 - (j / n) ** 2.0)) / np.i0(BETA)
    win = taper * sinc
    win.setflags(write=False)
    return win


def kaiser_fast_table() -> np.ndarray:
    """The right wing of resampy's ``kaiser_fast`` filter: float64 ``[12289]`` (24 zero crossings
    at 512 points each, plus the end point), recomputed from the published parameters."""
    return _table().copy()


def _numba_available() -> bool:
    try:
        return importlib.util.find_spec("numba") is not None
    except (ImportError, ValueError):
        return False


_KERNEL = None


def _compiled_kernel():
    """The exact path's loop, compiled once per process with numba (cached on disk where numba
    can write its cache): resampy's arithmetic for ``m`` outputs from output ``k0``, the taps of
    every output in resampy's order, outputs innermost. Measured on 60 s of 22 kHz audio to
    48 kHz, one Xeon core: 244x real time, resampy 125x, the numpy path about 90x."""
    global _KERNEL
    if _KERNEL is None:
        import numba

        @numba.njit(nogil=True, boundscheck=False, cache=True)
        def kernel(k0, m, inc, scale, win_t, delta_t, cmax, buf, lo, acc):  # pragma: no cover - compiled
            n = np.empty(m, np.int64)
            off_l = np.empty(m, np.int64)
            eta_l = np.empty(m)
            off_r = np.empty(m, np.int64)
            eta_r = np.empty(m)
            for j in range(m):
                t = (k0 + j) * inc
                whole = np.int64(t)
                frac = scale * (t - whole)
                f = frac * 512.0
                o = np.int64(f)
                off_l[j] = o
                eta_l[j] = f - o
                f = (scale - frac) * 512.0
                o = np.int64(f)
                off_r[j] = o
                eta_r[j] = f - o
                n[j] = whole - lo
            for i in range(cmax):
                wt = win_t[i]
                dt = delta_t[i]
                for j in range(m):
                    o = off_l[j]
                    acc[j] = np.float32(np.float64(acc[j]) + (wt[o] + eta_l[j] * dt[o]) * np.float64(buf[n[j] - i]))
            for i in range(cmax):
                wt = win_t[i]
                dt = delta_t[i]
                for j in range(m):
                    o = off_r[j]
                    acc[j] = np.float32(np.float64(acc[j]) + (wt[o] + eta_r[j] * dt[o]) * np.float64(buf[n[j] + 1 + i]))

        _KERNEL = kernel
    return _KERNEL


#: Outputs per vectorised block of the exact path (its float64 temporaries stay in cache).
_EXACT_BLOCK = 16384


class KaiserFast:
    """Resampling from ``rate_in_hz`` to ``rate_out_hz`` with resampy's ``kaiser_fast`` filter,
    as ``librosa.resample(x, orig_sr=rate_in_hz, target_sr=rate_out_hz, res_type="kaiser_fast")``
    does it (length fixed to librosa's ``ceil``).

    Args:
        rate_in_hz, rate_out_hz: positive integer sample rates.
        max_table_bytes: memory bound of the polyphase weights kept; ratios whose matrices would
            exceed it (huge ``L`` after the gcd) rebuild them block by block (same numbers).
        exact: resampy's own arithmetic, bit for bit (:meth:`_compute_exact`; about resampy's
            speed, in numpy); ``False``: the polyphase filter bank as float32 matrix products,
            within 7e-7 of resampy and about 40 times faster (BirdNET's confidences then differ
            from BirdNET-Analyzer's by up to 4e-4).
    """

    def __init__(self, rate_in_hz: int, rate_out_hz: int, *, max_table_bytes: int = MAX_TABLE_BYTES, exact: bool = True):
        for name, v in (("rate_in_hz", rate_in_hz), ("rate_out_hz", rate_out_hz)):
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v <= 0:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        self.rate_in_hz = int(rate_in_hz)
        self.rate_out_hz = int(rate_out_hz)
        #: compute resampy's own arithmetic, bit for bit (see :meth:`_compute_exact`)
        self.exact = bool(exact)
        #: run the exact path as a compiled loop when numba is installed (same bits, ~2.5x faster)
        self.use_numba = _numba_available()
        g = math.gcd(self.rate_in_hz, self.rate_out_hz)
        #: output samples per period and input samples per period
        self.up = self.rate_out_hz // g
        self.down = self.rate_in_hz // g
        self.identity = self.up == self.down
        # librosa's ratio (and resampy's sample_ratio): a rounded float, on purpose
        self._ratio = float(self.rate_out_hz) / self.rate_in_hz
        if self.identity:
            self.precomputed = True
            self._reach = 0
            return
        L, M = self.up, self.down
        self._scale = min(1.0, self._ratio)
        self._inc = 1.0 / self._ratio
        win = _table()
        if self._ratio < 1:
            win = self._ratio * win
        delta = np.diff(win, append=win[-1])
        self._step = int(self._scale * _NUM_TABLE)
        #: most taps a wing can have, and how far an output reaches from its exact input index
        self._cmax = _NWIN // self._step
        self._reach = self._cmax
        # A wing's table positions are offset + i * step (+ eta) for i < (12289 - offset) // step,
        # and offset is at most step: the taps of every possible offset, zero past the count.
        offsets = np.arange(self._step + 1, dtype=np.int64)[:, None]
        i = np.arange(self._cmax, dtype=np.int64)[None, :]
        valid = i < (_NWIN - offsets) // self._step
        idx = np.where(valid, offsets + i * self._step, 0)
        self._tab_win = np.where(valid, win[idx], 0.0)
        self._tab_delta = np.where(valid, delta[idx], 0.0)
        # the same, one contiguous row per tap (the exact path gathers a tap's weights at once)
        self._tab_win_t = np.ascontiguousarray(self._tab_win.T)
        self._tab_delta_t = np.ascontiguousarray(self._tab_delta.T)

        # Phase table: the weights resampy gives outputs 0..L-1 (its own float times).
        p = np.arange(L, dtype=np.int64)
        self._n_phase = (p * M) // L
        t = p * self._inc
        self._fragile = self._find_fragile()
        n_float = t.astype(np.int64)
        if np.any(n_float != self._n_phase):  # pragma: no cover - needs L * M near 2**52
            self._fragile |= n_float != self._n_phase
        # tight extents of the table's taps around the exact input index
        cl, cr = self._counts(t)
        a_tab = int(max(cl.max() - 1, 0))
        b_tab = int(max(cr.max(), 0))
        self._a = a_tab
        self._fragile_phases = np.flatnonzero(self._fragile)

        taps = a_tab + b_tab + 1
        self._taps = taps
        group, periods = self._grouping(taps)
        lr = periods * L
        self._lr, self._mr = lr, periods * M
        # phases of one row (periods * L outputs) and their exact input index relative to the row
        pr = np.arange(lr, dtype=np.int64)
        self._n_row = (pr // L) * M + self._n_phase[pr % L]
        n_groups = -(-lr // group)
        bounds = np.linspace(0, lr, n_groups + 1).round().astype(np.int64)
        self._bounds = [(int(g0), int(g1)) for g0, g1 in zip(bounds[:-1], bounds[1:])]
        # the group matrices hold about lr * (taps + (group - 1) * M / L) float32 weights
        table_bytes = 4 * lr * (taps + (group - 1) * M // L + 1)
        #: whether the group matrices are kept (else rebuilt for every block: same numbers, slower)
        self.precomputed = table_bytes <= max_table_bytes
        if self.precomputed:
            self._groups = [self._group_matrix(g0, g1) for g0, g1 in self._bounds]
            # at least 64 rows keep the GEMMs efficient when a row is long (large L)
            self._rows = max(64, -(-_BLOCK_OUTPUTS // lr))
        else:
            # more rows per block spread the rebuilding over more outputs; blocks of at most
            # 64 periods and about 4M outputs bound the memory
            self._groups = None
            self._rows = max(2, min(64, -(-(1 << 22) // lr)))

    def _group_matrix(self, g0: int, g1: int) -> tuple[int, int, int, np.ndarray]:
        """The GEMM operand of the row phases ``g0 .. g1 - 1``: float32 ``[window, g1 - g0]``
        mapping the window of inputs from the group's first exact index minus the left extent to
        the group's outputs, with where that window starts relative to the row."""
        L, taps, a_tab = self.up, self._taps, self._a
        p = np.arange(g0, g1, dtype=np.int64) % L
        dense = self._dense_rows(p * self._inc, self._n_phase[p], a_tab, taps)
        base = int(self._n_row[g0])
        width = int(self._n_row[g1 - 1]) - base + taps
        w = np.zeros((width, g1 - g0), dtype=np.float32)
        shifts = self._n_row[g0:g1] - base
        w[shifts[:, None] + np.arange(taps), np.arange(g1 - g0)[:, None]] = dense
        return g0, g1, base - a_tab, w

    # ------------------------------------------------------------------ lengths and supports

    def n_resampy(self, n_in: int) -> int:
        """resampy's own output length for ``n_in`` input samples (before librosa's fix)."""
        if self.identity:
            return int(n_in)
        return int(n_in * float(self.rate_out_hz) / float(self.rate_in_hz))

    def n_out(self, n_in: int) -> int:
        """The output length for ``n_in`` input samples: librosa's ``ceil(n_in * ratio)`` (ratio
        a rounded float, as librosa computes it); equal rates keep ``n_in``."""
        if n_in < 0:
            raise ValueError(f"n_in must be >= 0, got {n_in}")
        if self.identity:
            return int(n_in)
        return int(math.ceil(n_in * self._ratio))

    def support(self, out_start: int, out_end: int, n_in: int) -> tuple[int, int]:
        """The input range ``[in_start, in_end)``, clipped to ``[0, n_in)``, that outputs
        ``out_start .. out_end - 1`` of resampling a whole signal of ``n_in`` samples read: the
        exact input index of the first and last output widened by the most taps a wing can have
        (24 when upsampling, ``24 * rate_in / rate_out`` or so when downsampling), which may
        include a sample more than strictly read. Outputs past resampy's own length read
        nothing; an empty range is ``(0, 0)``."""
        out_start, out_end = self._check_range(out_start, out_end, n_in)
        end = min(out_end, self.n_resampy(n_in))
        if end <= out_start:
            return (0, 0)
        if self.identity:
            return (out_start, end)
        lo = self._exact_n(out_start) - self._reach
        hi = self._exact_n(end - 1) + self._reach + 1
        return (max(0, lo), min(n_in, hi))

    # ------------------------------------------------------------------ public resampling

    def resample(self, x: np.ndarray) -> np.ndarray:
        """``librosa.resample(x, orig_sr, target_sr, res_type="kaiser_fast")`` of mono ``x``:
        float32 of length :meth:`n_out`. Equal rates return ``x`` itself, as librosa does.

        Unlike librosa (whose resampy call raises when its own length would be 0), an empty input
        gives an empty output and an input too short for one resampy sample gives librosa's
        ``n_out`` zeros."""
        x = self._as_signal(x)
        if self.identity:
            return x
        n_in = x.shape[0]
        compute = self._compute_exact if self.exact else self._compute
        return compute(x, 0, n_in, 0, self.n_out(n_in))

    def span(self, x_part: np.ndarray, part_offset: int, n_in: int, out_start: int, out_end: int) -> np.ndarray:
        """``resample(x)[out_start:out_end]`` of a signal ``x`` of ``n_in`` samples, given only
        ``x_part = x[part_offset : part_offset + len(x_part)]``, which must cover
        :meth:`support`. Bit for bit the same numbers as :meth:`resample`; outputs past
        resampy's own length (librosa's zero padding) are zeros."""
        x_part = self._as_signal(x_part)
        part_offset = int(part_offset)
        n_in = int(n_in)
        out_start, out_end = self._check_range(out_start, out_end, n_in)
        if part_offset < 0 or part_offset + x_part.shape[0] > n_in:
            raise ValueError(
                f"x_part covers input samples [{part_offset}, {part_offset + x_part.shape[0]}), "
                f"outside the signal's [0, {n_in})")
        lo, hi = self.support(out_start, out_end, n_in)
        if hi > lo and (lo < part_offset or hi > part_offset + x_part.shape[0]):
            raise ValueError(
                f"outputs [{out_start}, {out_end}) need input samples [{lo}, {hi}) but x_part covers "
                f"[{part_offset}, {part_offset + x_part.shape[0]}) (see KaiserFast.support)")
        if self.identity:
            return x_part[out_start - part_offset: out_end - part_offset].copy() if out_end > out_start else \
                np.zeros(0, np.float32)
        compute = self._compute_exact if self.exact else self._compute
        return compute(x_part, part_offset, n_in, out_start, out_end)

    # ------------------------------------------------------------------ internals

    @staticmethod
    def _as_signal(x) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 1:
            raise ValueError(f"expected a 1-d mono signal, got shape {x.shape}")
        return x

    def _check_range(self, out_start, out_end, n_in) -> tuple[int, int]:
        out_start, out_end, n_in = int(out_start), int(out_end), int(n_in)
        if n_in < 0:
            raise ValueError(f"n_in must be >= 0, got {n_in}")
        n_out = self.n_out(n_in)
        if not 0 <= out_start <= out_end <= n_out:
            raise ValueError(f"output range [{out_start}, {out_end}) is not within [0, {n_out}) "
                             f"(the output length for {n_in} input samples)")
        return out_start, out_end

    def _exact_n(self, k):
        """Exact input index of output ``k``: floor(k * M / L) (integers)."""
        return (k * self.down) // self.up

    def _grouping(self, taps: int) -> tuple[int, int]:
        """Phases per GEMM column group and periods per row, from a rough cost model: a group of
        ``G`` phases reads a window of ``(G - 1) * M / L + taps`` inputs (multiply-adds per output),
        copied once per row (``window / G`` copies per output)."""
        m = self.down / self.up
        g = int(round(math.sqrt(_COPY_COST * taps / m)))
        g = max(8, min(256, g))
        if self.up >= g:
            return g, 1
        periods = max(1, round(g / self.up))
        return periods * self.up, periods

    def _counts(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = t.astype(np.int64)
        frac = self._scale * (t - n)
        off_l = (frac * _NUM_TABLE).astype(np.int64)
        off_r = ((self._scale - frac) * _NUM_TABLE).astype(np.int64)
        return (_NWIN - off_l) // self._step, (_NWIN - off_r) // self._step

    def _find_fragile(self) -> np.ndarray:
        """Phases whose weights resampy may compute on either side of a jump (module docstring),
        from exact integer arithmetic on the rational table positions."""
        L, M = self.up, self.down
        p = np.arange(L, dtype=np.int64)
        r = (p * M) % L
        den = M if self._ratio < 1 else L  # table position = 512 * r / den (left), 512 * (L - r) / den (right)
        fragile = np.zeros(L, dtype=bool)
        for num in (_NUM_TABLE * r, _NUM_TABLE * (L - r)):
            integral = num % den == 0
            o = num // den
            jump = (_NWIN - o) // self._step != (_NWIN - o + 1) // self._step
            fragile |= integral & (o >= 1) & jump
        # Phase 0's exact time q * M is an integer; resampy's q * L * inc can only round below it
        # when its float period inc is below M / L, and that matters when 512 * scale is not whole.
        if Fraction(self._inc) < Fraction(M, L) and not (_NUM_TABLE * self._scale).is_integer():
            fragile[0] = True
        return fragile

    def _wings(self, t: np.ndarray):
        """resampy's arithmetic for outputs at float times ``t``: ``n = int(t)`` and the weights
        of ``x[n - i]`` (left) and ``x[n + 1 + i]`` (right), float64 ``[len(t), cmax]`` each
        (zero past a wing's tap count)."""
        n = t.astype(np.int64)
        frac = self._scale * (t - n)
        wings = []
        for f in (frac, self._scale - frac):
            index_frac = f * _NUM_TABLE
            offset = index_frac.astype(np.int64)
            eta = index_frac - offset
            wings.append(self._tab_win[offset] + eta[:, None] * self._tab_delta[offset])
        return n, wings[0], wings[1]

    def _dense_rows(self, t: np.ndarray, n_ref: np.ndarray, a: int, width: int) -> np.ndarray:
        """Weights of the outputs at float times ``t`` laid out on the input columns
        ``n_ref - a .. n_ref - a + width - 1``: float64 ``[len(t), width]``."""
        n, left, right = self._wings(t)
        i = np.arange(self._cmax, dtype=np.int64)[None, :]
        centre = a + (n - n_ref)[:, None]
        rows = np.arange(t.shape[0])[:, None]
        # one spare column takes the (zero) weights of the taps a wing does not have
        out = np.zeros((t.shape[0], width + 1), dtype=np.float64)
        for w, cols in ((left, centre - i), (right, centre + 1 + i)):
            valid = w != 0
            if np.any(valid & ((cols < 0) | (cols >= width))):  # pragma: no cover - excluded by the reach bound
                raise AssertionError("a tap fell outside the output's window")
            out[rows, np.where(valid, cols, width)] = w
        return out[:, :width]

    def _direct(self, ks: np.ndarray, x: np.ndarray, x_offset: int, n_in: int) -> np.ndarray:
        """Outputs ``ks`` (ascending) one by one with resampy's own float times (the fragile
        phases), from ``x`` (input samples from ``x_offset`` of a signal of ``n_in``); float64 sums
        in a fixed tap order, rounded to float32, so a value never depends on which other outputs
        are computed with it."""
        n, left, right = self._wings(ks * self._inc)
        reach = self._reach
        start = self._exact_n(int(ks[0])) - reach
        buf = np.zeros(self._exact_n(int(ks[-1])) + reach + 1 - start, dtype=np.float32)
        lo, hi = max(start, 0, x_offset), min(start + buf.shape[0], n_in, x_offset + x.shape[0])
        if hi > lo:
            buf[lo - start: hi - start] = x[lo - x_offset: hi - x_offset]
        at = n - start
        y = np.zeros(ks.shape[0], dtype=np.float64)
        for i, w in enumerate(np.ascontiguousarray(left.T)):
            y += w * buf[at - i]
        for i, w in enumerate(np.ascontiguousarray(right.T)):
            y += w * buf[at + 1 + i]
        return y.astype(np.float32)

    def _compute(self, x: np.ndarray, x_offset: int, n_in: int, out_start: int, out_end: int) -> np.ndarray:
        """Outputs ``[out_start, out_end)`` of resampling a signal of ``n_in`` samples of which
        ``x`` holds ``[x_offset, x_offset + len(x))``."""
        y = np.zeros(out_end - out_start, dtype=np.float32)
        end = min(out_end, self.n_resampy(n_in))
        if end <= out_start:
            return y
        reach = self._reach
        unit = self._rows * self._lr
        for b in range(out_start // unit, (end - 1) // unit + 1):
            k0, k1 = b * unit, (b + 1) * unit
            buf_start = self._exact_n(k0) - reach
            buf_end = self._exact_n(k1 - 1) + reach + 1
            buf = np.zeros(buf_end - buf_start, dtype=np.float32)
            lo = max(buf_start, 0, x_offset)
            hi = min(buf_end, n_in, x_offset + x.shape[0])
            if hi > lo:
                buf[lo - buf_start: hi - buf_start] = x[lo - x_offset: hi - x_offset]
            a, z = max(k0, out_start), min(k1, end)
            blk = self._block_gemm(buf, buf_start, k0)
            y[a - out_start: z - out_start] = blk[a - k0: z - k0]
        # the outputs of the fragile phases, about 4096 at a time, reading about 1M inputs at most
        chunk = max(1, min((1 << 20) // self.down, 4096 // max(1, self._fragile_phases.size))) * self.up
        for c0 in range(out_start, end, chunk) if self._fragile_phases.size else ():
            c1 = min(c0 + chunk, end)
            first = c0 + (self._fragile_phases - c0) % self.up
            ks = np.sort(np.concatenate([np.arange(f, c1, self.up, dtype=np.int64) for f in first]))
            if ks.size:
                y[ks - out_start] = self._direct(ks, x, x_offset, n_in)
        return y

    def _compute_exact(self, x: np.ndarray, x_offset: int, n_in: int, out_start: int, out_end: int) -> np.ndarray:
        """:meth:`_compute` with resampy's own arithmetic, in its order: every output's float time
        ``k * (1 / ratio)``, its weights ``win[offset + i * step] + eta * delta[...]`` (float64),
        and its sum accumulated in float32, one tap after the other (each product and sum in
        float64, the sum rounded to float32 after every tap: what resampy's numba loop does with
        its float32 output), the left wing first. The result is resampy's to the bit, so BirdNET's
        scores are BirdNET-Analyzer's to its printed precision: its spectrogram turns differences
        of 1e-7 in quiet audio into 1e-4 in a confidence.

        Vectorised over blocks of outputs, tap by tap (taps a wing lacks have weight 0 and add
        nothing). A phase's table offsets repeat every period, so the table values are tiled
        once per rate pair and only ``eta`` (which drifts in its last bits with the float time)
        is computed per output; a block whose offsets leave the pattern (resampy's float time
        crossing a table position) gathers them instead."""
        y = np.zeros(out_end - out_start, dtype=np.float32)
        end = min(out_end, self.n_resampy(n_in))
        if end <= out_start:
            return y
        kernel = _compiled_kernel() if self.use_numba else None
        tiles = self._exact_tiles() if kernel is None else None  # the compiled loop gathers its own weights
        cmax, size = self._cmax, self._exact_block()
        for k0 in range(out_start, end, size):
            k1 = min(k0 + size, end)
            m = k1 - k0
            t = np.arange(k0, k1, dtype=np.int64) * self._inc
            n = t.astype(np.int64)
            frac = self._scale * (t - n)
            lo = int(n[0]) - cmax
            buf = np.zeros(int(n[-1]) + 2 * cmax + 2 - lo, dtype=np.float32)
            a, b = max(lo, 0, x_offset), min(lo + buf.shape[0], n_in, x_offset + x.shape[0])
            if b > a:
                buf[a - lo: b - lo] = x[a - x_offset: b - x_offset]
            rel = n - lo  # ``n`` in buf
            acc = np.zeros(m, dtype=np.float32)
            if kernel is not None:
                kernel(k0, m, self._inc, self._scale, self._tab_win_t, self._tab_delta_t, cmax, buf, lo, acc)
                y[k0 - out_start: k1 - out_start] = acc
                continue
            w = np.empty(m, dtype=np.float64)
            xs = np.empty(m, dtype=np.float32)
            phase = k0 % self.up
            for wing, f in enumerate((frac, self._scale - frac)):
                index_frac = f * _NUM_TABLE
                offset = index_frac.astype(np.int64)
                eta = index_frac - offset
                win_t, delta_t, pattern = tiles[wing]
                tiled = tiles is not None and np.array_equal(offset, pattern[phase: phase + m])
                for i in range(cmax):
                    if tiled:
                        np.multiply(eta, delta_t[i, phase: phase + m], out=w)
                        np.add(w, win_t[i, phase: phase + m], out=w)
                    else:
                        np.multiply(eta, self._tab_delta_t[i][offset], out=w)
                        np.add(w, self._tab_win_t[i][offset], out=w)
                    # left: x[n - i]; right: x[n + 1 + i]
                    np.take(buf, rel - i if wing == 0 else rel + 1 + i, out=xs)
                    np.multiply(w, xs, out=w)
                    np.add(acc, w, out=acc)  # float64 sum, rounded to float32: resampy's y[t] +=
            y[k0 - out_start: k1 - out_start] = acc
        return y

    def _exact_block(self) -> int:
        """Outputs per block of the exact path: whole periods, so a block's phases start at 0."""
        L = self.up
        return max(1, _EXACT_BLOCK // L) * L if L <= _EXACT_BLOCK else _EXACT_BLOCK

    def _exact_tiles(self):
        """Per wing: the table's values and deltas at each phase's offsets, tiled over a block
        (float64 ``[cmax, block + L]``), and the offsets they were taken at."""
        if getattr(self, "_tiles", None) is None:
            L = self.up
            reps = -(-(self._exact_block() + L) // L)
            t = np.arange(L, dtype=np.int64) * self._inc
            frac = self._scale * (t - t.astype(np.int64))
            tiles = []
            for f in (frac, self._scale - frac):
                offset = np.tile((f * _NUM_TABLE).astype(np.int64), reps)
                tiles.append((np.ascontiguousarray(self._tab_win_t[:, offset]),
                              np.ascontiguousarray(self._tab_delta_t[:, offset]), offset))
            self._tiles = tiles
        return self._tiles

    def _block_gemm(self, buf: np.ndarray, buf_start: int, k0: int) -> np.ndarray:
        """One block of ``rows`` rows of ``periods * L`` outputs from output ``k0`` (a row start)."""
        rows, mr = self._rows, self._mr
        row0 = k0 // self._lr
        # the row's first exact input index, relative to buf
        base = row0 * mr - buf_start
        out = np.empty((rows, self._lr), dtype=np.float32)
        item = buf.itemsize
        groups = self._groups if self._groups is not None else (self._group_matrix(g0, g1) for g0, g1 in self._bounds)
        for g0, g1, first, w in groups:
            # row r of the window matrix is buf[base + first + r * mr :][:width] (overlapping rows)
            win = np.ndarray((rows, w.shape[0]), dtype=np.float32, buffer=buf, offset=(base + first) * item,
                             strides=(mr * item, item))
            out[:, g0:g1] = np.ascontiguousarray(win) @ w
        return out.reshape(-1)
