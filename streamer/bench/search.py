"""``streamer bench-archive --search``: how long ``streamer search`` takes over a large archive.

The archive is synthetic in size only: its rows are real embeddings. BirdNET 2.4 embeds the
16-minute field recording shipped with streamer (320 windows of 1024 values); each stored row
is one of those, rolled by a random offset and scaled by a random gain, so no two rows are the
same and every row looks like a real one to the arithmetic. Rows are written as the archive
writes them (``EmbeddingWriter``: float16, one Parquet file per "recording" of 10 hours, a row
group per 60 s). The default size is the archive issue's: 720,000 windows (1,000 hours of 5-s
windows) of 1536 values (Perch's width), the first 1024 of a row from one real embedding and
the rest from another. Then ``search`` runs with 1 and with 10 query windows, timed whole
(reading included, from the page cache after a first warm-up pass, as a repeated search runs).
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

ROWS_PER_FILE = 7200  # 10 hours of 5-s windows


def real_embeddings(source: Path | None = None) -> np.ndarray:
    """BirdNET 2.4's embeddings of every window of the shipped 16-minute recording."""
    from streamer.archive.search import Embedder
    from streamer.bench.archive import default_source
    from streamer.birdnet.files import CLASSIFIER_FILE, find_model_dir
    from streamer.recipes import load_recipe

    framing = load_recipe("birdnet").framing.windows()
    record = {"format": 1, "kind": "litert", "model": str(find_model_dir() / CLASSIFIER_FILE), "sha256": None,
              "embedding": "model/GLOBAL_AVG_POOL/Mean", "embedding_dim": 1024,
              "framing": {"rate_hz": framing.rate_hz, "window_samples": framing.window_samples,
                          "windows_per_chunk": framing.windows_per_chunk, "resampler": framing.resampler,
                          "piece_s": framing.piece_s, "min_last_window_s": framing.min_last_window_s}}
    _, vectors = Embedder(record, threads=2).embed(Path(source) if source is not None else default_source())
    return vectors


def build_archive(folder: Path, base: np.ndarray, n_windows: int, dim: int, seed: int = 0) -> Path:
    """``folder/_embeddings/recording_K.flac.parquet`` files holding ``n_windows`` rows."""
    from streamer.archive.output import EmbeddingWriter

    rng = np.random.default_rng(seed)
    out = folder / "_embeddings"
    out.mkdir(parents=True, exist_ok=True)
    for k, first in enumerate(range(0, n_windows, ROWS_PER_FILE)):
        n = min(ROWS_PER_FILE, n_windows - first)
        writer = EmbeddingWriter(out / f"recording_{k}.flac.parquet", f"recording_{k}.flac", dtype="float16", dim=dim,
                                 window_s=5.0)
        for start in range(0, n, 12):  # a row group per 60-s chunk, as the archive writes
            m = min(12, n - start)
            picks = rng.integers(0, base.shape[0], size=(m, 2))
            rows = np.concatenate([base[picks[:, 0]], base[picks[:, 1]]], axis=1)[:, :dim]
            rows = np.roll(rows, int(rng.integers(0, dim)), axis=1) * rng.uniform(0.5, 2.0, size=(m, 1))
            writer.write_chunk(start, rows.astype(np.float32))
        writer.close()
    return folder


def run_search_bench(*, n_windows: int = 720_000, dim: int = 1536, work_dir: Path | None = None) -> dict:
    from streamer.archive.search import Query, search

    base = real_embeddings()
    result = {"windows": n_windows, "dim": dim, "hours_of_5s_windows": n_windows * 5 / 3600, "runs": []}
    with tempfile.TemporaryDirectory(prefix="streamer-bench-search-", dir=work_dir) as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        build_archive(folder, base, n_windows, dim)
        result["build_s"] = time.perf_counter() - t0
        result["bytes"] = sum(p.stat().st_size for p in (folder / "_embeddings").glob("*.parquet"))
        rng = np.random.default_rng(1)
        for n_queries in (1, 10):
            vectors = np.concatenate([base[rng.integers(0, base.shape[0], size=n_queries)],
                                      base[rng.integers(0, base.shape[0], size=n_queries)]], axis=1)[:, :dim]
            queries = [Query(f"q{i}", (v / np.linalg.norm(v)).astype(np.float32)) for i, v in enumerate(vectors)]
            search(folder, queries, top=10)  # warm-up: the files into the page cache
            t0 = time.perf_counter()
            hits = search(folder, queries, top=10)
            result["runs"].append({"queries": n_queries, "seconds": time.perf_counter() - t0, "hits": len(hits)})
    return result


def search_markdown(result: dict, machine: dict) -> str:
    lines = [f"Machine: {machine['cpu_model']}, {machine.get('n_cpus', '?')} CPU(s). Archive: {result['windows']:,} windows of "
             f"{result['dim']} float16 values ({result['hours_of_5s_windows']:,.0f} hours of 5-s windows), "
             f"{result['bytes'] / 1e9:.2f} GB of Parquet, real BirdNET embeddings rolled and scaled (built in "
             f"{result['build_s']:.0f} s).", "", "| query windows | search (s) | windows per second |", "|---:|---:|---:|"]
    for r in result["runs"]:
        lines.append(f"| {r['queries']} | {r['seconds']:.1f} | {result['windows'] / r['seconds']:,.0f} |")
    return "\n".join(lines) + "\n"
