"""``streamer bench-archive --search`` / ``--rescore``: how long ``streamer search`` and
``streamer rescore`` take over a large archive.

The archive is synthetic in size only: its rows are real embeddings. BirdNET 2.4 embeds the
16-minute field recording shipped with streamer (320 windows of 1024 values); each stored row
is one of those, rolled by a random offset and scaled by a random gain, so no two rows are the
same and every row looks like a real one to the arithmetic. Rows are written as the archive
writes them (``EmbeddingWriter``: float16, one Parquet file per "recording" of 10 hours, 60 s
at a time, a row group per hour). The default size is the archive issue's: 720,000 windows
(1,000 hours of 5-s windows) of 1536 values (Perch's width), the first 1024 of a row from one
real embedding and the rest from another.

``search`` runs with 1 and with 10 query windows, timed whole (reading included, from the page
cache after a first warm-up pass, as a repeated search runs). ``rescore`` scores the archive
with a 5-class linear head of random weights (made with ``streamer classify``'s writer, so it
is a head like any other) into every score (Parquet) and into Raven tables at 0.5, timed whole
as the command runs (journal, tables, summary), each output removed after its run. Every
measurement is repeated, the repeats interleaved, and the median quoted: a shared machine's
noise is large.
"""

from __future__ import annotations

import logging
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

ROWS_PER_FILE = 7200  # 10 hours of 5-s windows
WINDOW_S = 5.0
RESCORE_CLASSES = 5
#: ``streamer rescore``'s outputs measured: every score in Parquet, and Raven tables at 0.5.
RESCORE_OUTPUTS = (("parquet", None), ("raven", 0.5))


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
                                 window_s=WINDOW_S)
        for start in range(0, n, 12):  # 60 s at a time, as the archive writes
            m = min(12, n - start)
            picks = rng.integers(0, base.shape[0], size=(m, 2))
            rows = np.concatenate([base[picks[:, 0]], base[picks[:, 1]]], axis=1)[:, :dim]
            rows = np.roll(rows, int(rng.integers(0, dim)), axis=1) * rng.uniform(0.5, 2.0, size=(m, 1))
            writer.write_chunk(start, rows.astype(np.float32))
        writer.close()
    return folder


def make_rescore_source(folder: Path, dim: int) -> dict:
    """Make ``build_archive``'s folder what ``streamer rescore`` reads: a run fingerprint, a
    journal with each recording done (its length from its rows), and the record of an embedding
    model (Perch's framing, no model file: rescore never runs it). Returns that record."""
    import dataclasses

    import pyarrow.parquet as pq

    from streamer.archive import fingerprint as run_fingerprint
    from streamer.archive.journal import DONE, FileKey, Journal
    from streamer.archive.search import EMBEDDER_FORMAT, embedding_files, write_embedder_record
    from streamer.audio import PERCH_FRAMING

    record = {"format": EMBEDDER_FORMAT, "kind": "perch", "model": "(synthetic)", "sha256": None, "embedding": "embedding",
              "embedding_dim": dim, "framing": dataclasses.asdict(PERCH_FRAMING)}
    write_embedder_record(folder, record)
    run_fingerprint.write(folder, {"output_format_version": run_fingerprint.OUTPUT_FORMAT_VERSION,
                                   "settings": {"synthetic": "streamer bench-archive --rescore"}})
    journal = Journal(folder)
    for path in embedding_files(folder):
        name = path.name[: -len(".parquet")]
        journal.record(path, DONE, f"{name}.parquet", key=FileKey(str(folder / name), 0, 0),
                       audio_s=pq.ParquetFile(str(path)).metadata.num_rows * WINDOW_S, extra={"recording": name})
    return record


def random_head(path: Path, record: dict, dim: int, seed: int = 2) -> Path:
    """A linear head of :data:`RESCORE_CLASSES` classes and random weights: logits of a few
    units' spread, biased so that a few percent of the windows score above 0.5."""
    from streamer.archive.classify import write_head

    rng = np.random.default_rng(seed)
    weights = (rng.standard_normal((dim, RESCORE_CLASSES)) * 3 / np.sqrt(dim)).astype(np.float32)
    biases = np.full(RESCORE_CLASSES, -4.0, np.float32)
    return write_head(path, weights, biases, [f"class_{c}" for c in range(RESCORE_CLASSES)], record, [])


def _timed_rescore(folder: Path, head: Path, out: Path, fmt: str, min_score: float | None) -> dict:
    from streamer.archive.rescore import rescore
    from streamer.config import ArchiveSettings

    settings = ArchiveSettings(out_dir=out, fmt=fmt, min_score=min_score, engine="sequential")  # as cmd_rescore
    t0 = time.perf_counter()
    done = rescore(folder, head, settings)
    seconds = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    shutil.rmtree(out)
    return {"seconds": seconds, "windows": done["windows"], "audio_s": done["audio_s"], "output_bytes": size}


def run_search_bench(*, n_windows: int = 720_000, dim: int = 1536, work_dir: Path | None = None, search: bool = True,
                     rescore: bool = False, repeats: int = 3) -> dict:
    """Build the archive once, then measure ``search`` and/or ``rescore`` on it, ``repeats``
    times each, interleaved; ``runs`` and ``rescore`` hold every run's numbers and the medians."""
    from streamer.archive.search import Query

    base = real_embeddings()
    result = {"windows": n_windows, "dim": dim, "hours_of_5s_windows": n_windows * WINDOW_S / 3600, "repeats": repeats}
    with tempfile.TemporaryDirectory(prefix="streamer-bench-search-", dir=work_dir) as tmp:
        folder = Path(tmp) / "archive"
        t0 = time.perf_counter()
        build_archive(folder, base, n_windows, dim)
        result["build_s"] = time.perf_counter() - t0
        result["bytes"] = sum(p.stat().st_size for p in (folder / "_embeddings").glob("*.parquet"))
        measures = {}
        if search:
            rng = np.random.default_rng(1)
            query_sets = {}
            for n_queries in (1, 10):
                vectors = np.concatenate([base[rng.integers(0, base.shape[0], size=n_queries)],
                                          base[rng.integers(0, base.shape[0], size=n_queries)]], axis=1)[:, :dim]
                query_sets[n_queries] = [Query(f"q{i}", (v / np.linalg.norm(v)).astype(np.float32)) for i, v in enumerate(vectors)]
                measures[("search", n_queries)] = lambda queries=query_sets[n_queries]: _timed_search(folder, queries)
            _timed_search(folder, query_sets[1])  # warm-up: the files into the page cache
        if rescore:
            head = random_head(Path(tmp) / "head.onnx", make_rescore_source(folder, dim), dim)
            for fmt, min_score in RESCORE_OUTPUTS:
                measures[("rescore", fmt)] = lambda fmt=fmt, min_score=min_score: _timed_rescore(
                    folder, head, Path(tmp) / f"out-{fmt}", fmt, min_score)
        runs: dict = {key: [] for key in measures}
        for _ in range(repeats):
            for key, measure in measures.items():
                runs[key].append(measure())
                log.info("bench-archive: %s %s: %.1f s", *key, runs[key][-1]["seconds"])
    if search:
        result["runs"] = [{"queries": n, "seconds": statistics.median(r["seconds"] for r in rs),
                           "all_seconds": [r["seconds"] for r in rs], "hits": rs[0]["hits"]}
                          for (kind, n), rs in runs.items() if kind == "search"]
    if rescore:
        result["rescore"] = []
        for (kind, fmt), rs in runs.items():
            if kind == "rescore":
                seconds = statistics.median(r["seconds"] for r in rs)
                result["rescore"].append({"format": fmt, "min_score": dict(RESCORE_OUTPUTS)[fmt], "seconds": seconds,
                                          "all_seconds": [r["seconds"] for r in rs], "windows": rs[0]["windows"],
                                          "audio_hours": rs[0]["audio_s"] / 3600, "real_time_factor": rs[0]["audio_s"] / seconds,
                                          "output_bytes": rs[0]["output_bytes"]})
    return result


def _timed_search(folder: Path, queries) -> dict:
    from streamer.archive.search import search

    t0 = time.perf_counter()
    hits = search(folder, queries, top=10)
    return {"seconds": time.perf_counter() - t0, "hits": len(hits)}


def _archive_line(result: dict, machine: dict) -> str:
    return (f"Machine: {machine['cpu_model']}, {machine.get('n_cpus', '?')} CPU(s). Archive: {result['windows']:,} windows of "
            f"{result['dim']} float16 values ({result['hours_of_5s_windows']:,.0f} hours of 5-s windows), "
            f"{result['bytes'] / 1e9:.2f} GB of Parquet, real BirdNET embeddings rolled and scaled (built in "
            f"{result['build_s']:.0f} s). Medians of {result.get('repeats', 1)} interleaved run(s).")


def search_markdown(result: dict, machine: dict) -> str:
    lines = [_archive_line(result, machine), "", "| query windows | search (s) | windows per second | every run (s) |",
             "|---:|---:|---:|---|"]
    for r in result["runs"]:
        every = ", ".join(f"{s:.1f}" for s in r.get("all_seconds", [r["seconds"]]))
        lines.append(f"| {r['queries']} | {r['seconds']:.1f} | {result['windows'] / r['seconds']:,.0f} | {every} |")
    return "\n".join(lines) + "\n"


def rescore_markdown(result: dict, machine: dict) -> str:
    lines = [_archive_line(result, machine) + f" Head: {RESCORE_CLASSES} classes, random weights; the whole command timed "
             "(journal, tables, summary).", "", "| output | rescore (s) | real-time factor | output (MB) | every run (s) |",
             "|---|---:|---:|---:|---|"]
    for r in result["rescore"]:
        what = "every score, Parquet" if r["min_score"] is None else f"{r['format']} tables at {r['min_score']:g}"
        every = ", ".join(f"{s:.1f}" for s in r["all_seconds"])
        lines.append(f"| {what} | {r['seconds']:.1f} | {r['real_time_factor']:,.0f}x | {r['output_bytes'] / 1e6:.0f} | {every} |")
    return "\n".join(lines) + "\n"
