"""Speed and accuracy of streamer.kaiser.KaiserFast against resampy's own kaiser_fast.

Single-threaded (BLAS, OpenMP and numba thread pools set to one thread before anything loads),
on the same 60-s real signal for each input rate: the bundled field recording (22 kHz) from
400 s, its DC offset removed, scaled to a peak of 0.99, converted to the input rate with soxr.
Reports the real-time factor (seconds of audio per second of compute, best of ``--repeats``
runs) of resampy (``resampy.resample(x, rate, 48000, filter="kaiser_fast")``, numba compiled
beforehand) and of ``KaiserFast(rate, 48000).resample(x)`` (construction timed apart), their
ratio, and the max abs difference against resampy with librosa's length fix.

    python benchmarks/kaiser_resample.py [--seconds 60] [--repeats 3]

Needs resampy (``pip install resampy``), soundfile and soxr.
"""

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamer.kaiser import KaiserFast  # noqa: E402

AUDIO = ROOT / "tests" / "data" / "audio" / "jura_S4A03895_20190522_24h_16min_22k.ogg"


def best_of(fn, repeats):
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--start", type=float, default=400.0, help="where in the recording (s)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rates", type=int, nargs="+", default=[22050, 32000, 44100, 96000])
    ap.add_argument("--rate-out", type=int, default=48000)
    args = ap.parse_args(argv)

    import resampy
    import soundfile as sf
    import soxr

    x22, rate = sf.read(str(AUDIO), start=int(args.start * 22000), frames=int(args.seconds * 22000), dtype="float32")
    x22 = x22 - x22.mean()
    x22 = (x22 / np.abs(x22).max() * 0.99).astype(np.float32)
    # compile resampy's numba kernel outside the timing
    resampy.resample(x22[:4096], rate, args.rate_out, filter="kaiser_fast")

    print(f"python {platform.python_version()}, numpy {np.__version__}, resampy {resampy.__version__}, "
          f"{args.seconds:g} s of audio, best of {args.repeats}, one thread")
    print()
    print("| input -> output | L/M | resampy RTF | KaiserFast RTF | speed-up | construction | max abs diff |")
    print("|---|---|---|---|---|---|---|")
    for rate_in in args.rates:
        x = x22 if rate_in == rate else np.clip(soxr.resample(x22, rate, rate_in), -1, 1).astype(np.float32)
        seconds = x.shape[0] / rate_in
        t_ref, ref = best_of(lambda: resampy.resample(x, rate_in, args.rate_out, filter="kaiser_fast"), args.repeats)
        size = int(np.ceil(x.shape[0] * (float(args.rate_out) / rate_in)))  # librosa's fix_length
        ref = ref[:size] if ref.shape[0] >= size else np.pad(ref, (0, size - ref.shape[0]))
        t0 = time.perf_counter()
        k = KaiserFast(rate_in, args.rate_out)
        t_init = time.perf_counter() - t0
        t_ours, y = best_of(lambda: k.resample(x), args.repeats)
        assert y.shape == ref.shape
        print(f"| {rate_in} -> {args.rate_out} | {k.up}/{k.down} | {seconds / t_ref:.0f} | {seconds / t_ours:.0f} | "
              f"{t_ref / t_ours:.1f}x | {t_init * 1e3:.1f} ms | {np.max(np.abs(y - ref)):.2e} |")


if __name__ == "__main__":
    main()
