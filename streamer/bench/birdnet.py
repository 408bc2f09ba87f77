"""``streamer bench-archive --recipe birdnet``: BirdNET 2.4 in streamer beside BirdNET-Analyzer.

Both score the same files in one run, interleaved: streamer's ``archive --recipe birdnet
--format csv`` (its default layout) and BirdNET-Analyzer 2.4.0's ``analyze`` (``--threads``
= the CPUs, result types table and csv), installed in its own virtualenv by
``benchmarks/birdnet_peer/setup_peer.sh`` (``--peer-venv``). Shapes: one input of 16 minutes,
four of 16 minutes, one of 2 hours (``--quick``: 1 x 4, 4 x 4 and 1 x 16 minutes), each the
16-minute 22.05-kHz field recording looped (FLAC at its own rate, so both resample).

Measured the same way for both, from outside: wall time (start-up included), the real-time
factor (audio seconds per wall second), CPU seconds, and the peak resident memory of the
largest process and of the whole process tree (sampled every 0.1 s with psutil). The ceiling
is the model alone: windows already decoded and resampled, one LiteRT interpreter with one
thread per CPU, in as many processes as CPUs, nothing else.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from streamer.bench.archive import default_source, make_long_input
from streamer.bench.runner import _machine

log = logging.getLogger(__name__)

#: (label, inputs, minutes each)
SHAPES = (("1 x 16 min", 1, 16.0), ("4 x 16 min", 4, 16.0), ("1 x 2 h", 1, 120.0))
QUICK_SHAPES = (("1 x 4 min", 1, 4.0), ("4 x 4 min", 4, 4.0), ("1 x 16 min", 1, 16.0))
PEER_TIMEOUT_S = 4 * 3600


def _tree_peaks(proc: subprocess.Popen, stop: threading.Event, out: dict) -> None:
    """Peak RSS of the largest process and of the whole tree of ``proc``, sampled every 0.1 s."""
    import psutil

    try:
        root = psutil.Process(proc.pid)
    except psutil.Error:
        return
    largest = total = 0
    while not stop.is_set():
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            break
        sizes = []
        for p in procs:
            try:
                sizes.append(p.memory_info().rss)
            except psutil.Error:
                continue
        if sizes:
            largest, total = max(largest, max(sizes)), max(total, sum(sizes))
        stop.wait(0.1)
    out["largest_mb"], out["tree_mb"] = largest / 2**20, total / 2**20


def run_measured(cmd: list[str], *, env: dict | None = None, log_path: Path) -> dict:
    """Run ``cmd``; its wall time, CPU seconds and peak memory (module notes)."""
    peaks: dict = {}
    stop = threading.Event()
    with open(log_path, "w") as handle:
        t0 = time.perf_counter()
        before = os.times()
        proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env)
        sampler = threading.Thread(target=_tree_peaks, args=(proc, stop, peaks), daemon=True)
        sampler.start()
        try:
            code = proc.wait(timeout=PEER_TIMEOUT_S)
        finally:
            stop.set()
            sampler.join()
        wall = time.perf_counter() - t0
        after = os.times()
    if code != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed ({code}); see {log_path}")
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return {"wall_s": wall, "cpu_s": cpu, **peaks}


def _peer_cmd(venv: Path, inputs: Path, out: Path, threads: int) -> list[str]:
    return [str(venv / "bin" / "python"), "-m", "birdnet_analyzer.analyze", str(inputs), "-o", str(out),
            "--threads", str(threads), "--rtype", "table", "csv"]


def _streamer_cmd(inputs: Path, out: Path, extra: tuple[str, ...] = ()) -> list[str]:
    return [sys.executable, "-m", "streamer", "-q", "archive", "--recipe", "birdnet", str(inputs), "--out", str(out),
            "--format", "csv", *extra]


def _offline_env() -> dict:
    env = dict(os.environ)
    env.update({k: "http://127.0.0.1:9" for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")})
    return env


def _ceiling_worker(path: str, windows: np.ndarray, repeats: int, queue) -> None:
    from streamer.models.litert import LiteRTModel

    model = LiteRTModel(path, threads=1, outputs=["Identity", "model/GLOBAL_AVG_POOL/Mean"])
    model.run(windows[:1])
    t0 = time.perf_counter()
    for _ in range(repeats):
        for i in range(windows.shape[0]):
            model.run(windows[i : i + 1])
    queue.put(time.perf_counter() - t0)


def measure_ceiling(source: Path, n_processes: int, n_windows: int = 40, repeats: int = 2) -> dict:
    """The model alone on pre-decoded 48-kHz windows: ``n_processes`` processes, one thread
    each, one window per call (as the archive's workers call it)."""
    import soundfile as sf

    from streamer.birdnet.files import CLASSIFIER_FILE, find_model_dir
    from streamer.kaiser import KaiserFast

    x, rate = sf.read(str(source), dtype="float32", frames=int(n_windows * 3 * 22050 * 2), start=int(400 * 22050))
    if x.ndim > 1:
        x = x.mean(axis=1, dtype=np.float32)
    y = KaiserFast(rate, 48000).resample(np.ascontiguousarray(x))
    windows = np.ascontiguousarray(y[: n_windows * 144000].reshape(-1, 144000))
    path = str(find_model_dir() / CLASSIFIER_FILE)
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_ceiling_worker, args=(path, windows, repeats, queue)) for _ in range(n_processes)]
    for p in procs:
        p.start()
    times = [queue.get(timeout=3600) for _ in procs]
    for p in procs:
        p.join()
    per_process = windows.shape[0] * repeats * 3.0
    rtf = sum(per_process / t for t in times)
    return {"processes": n_processes, "windows": int(windows.shape[0] * repeats), "ms_per_window": 1000 * max(times) / (windows.shape[0] * repeats),
            "rtf": rtf}


def run_birdnet_bench(*, peer_venv: Path | None, quick: bool = False, repeats: int = 1, source: Path | None = None,
                      work_dir: Path | None = None, threads: int | None = None) -> dict:
    """Every shape through streamer and (with ``peer_venv``) the peer, interleaved."""
    source = Path(source) if source is not None else default_source()
    shapes = QUICK_SHAPES if quick else SHAPES
    cpus = threads or len(os.sched_getaffinity(0))
    if peer_venv is not None and not (Path(peer_venv) / "bin" / "python").is_file():
        raise FileNotFoundError(f"{peer_venv}: no peer virtualenv (make one with benchmarks/birdnet_peer/setup_peer.sh)")
    t_start = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="streamer-bench-birdnet-", dir=work_dir) as tmp:
        work = Path(tmp)
        folders = {}
        for label, n, minutes in shapes:
            folder = work / label.replace(" ", "")
            for i in range(n):
                make_long_input(source, minutes, folder / f"recording_{i}.flac")
            folders[label] = (folder, n * minutes * 60.0)
        contenders = [("streamer", None)] + ([("BirdNET-Analyzer", peer_venv)] if peer_venv is not None else [])
        for rep in range(repeats):
            for label, _, _ in shapes:
                folder, audio_s = folders[label]
                order = contenders if rep % 2 == 0 else contenders[::-1]
                for name, venv in order:
                    out = work / f"out-{name}-{label.replace(' ', '')}-{rep}"
                    log.info("bench birdnet: %s on %s (repeat %d/%d)", name, label, rep + 1, repeats)
                    cmd = _streamer_cmd(folder, out) if venv is None else _peer_cmd(Path(venv), folder, out, cpus)
                    got = run_measured(cmd, env=_offline_env(), log_path=work / f"{name}-{label.replace(' ', '')}-{rep}.log")
                    rows.append({"contender": name, "shape": label, "audio_s": audio_s, "repeat": rep,
                                 "rtf": audio_s / got["wall_s"], **got})
        ceiling = measure_ceiling(source, cpus)
    summary = []
    for label, _, _ in shapes:
        for name, _ in [("streamer", None), ("BirdNET-Analyzer", None)]:
            rs = [r for r in rows if r["shape"] == label and r["contender"] == name]
            if rs:
                summary.append({"contender": name, "shape": label, "rtf": statistics.median(r["rtf"] for r in rs),
                                "wall_s": statistics.median(r["wall_s"] for r in rs),
                                "cpu_s": statistics.median(r["cpu_s"] for r in rs),
                                "largest_mb": max(r.get("largest_mb", 0.0) for r in rs),
                                "tree_mb": max(r.get("tree_mb", 0.0) for r in rs)})
    return {"machine": _machine(), "cpus": cpus, "source": source.name, "repeats": repeats, "quick": quick,
            "rows": rows, "summary": summary, "ceiling": ceiling, "bench_s": time.perf_counter() - t_start}


def birdnet_markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        f"Machine: {m['cpu_model']}, {result['cpus']} CPU(s) used, {m['memory_gb']} GB. Input: {result['source']} looped "
        f"to each length (FLAC, 22.05 kHz: both resample to 48 kHz); {result['repeats']} interleaved repeat(s), medians. "
        "Real-time factor = audio seconds per wall second, start-up included. Memory: peak resident set of the largest "
        "process, and of the whole process tree, sampled every 0.1 s.",
        "",
        "| shape | contender | wall (s) | real-time factor | CPU (s) | largest process (MB) | all processes (MB) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in result["summary"]:
        lines.append(f"| {r['shape']} | {r['contender']} | {r['wall_s']:.1f} | {r['rtf']:.0f}x | {r['cpu_s']:.0f} | "
                     f"{r['largest_mb']:.0f} | {r['tree_mb']:.0f} |")
    c = result["ceiling"]
    lines += ["", f"Ceiling (the model alone, pre-decoded windows, {c['processes']} process(es) x 1 thread): "
                  f"{c['rtf']:.0f}x real time ({c['ms_per_window']:.1f} ms per window per process)."]
    by = {(r["shape"], r["contender"]): r for r in result["summary"]}
    for label in dict.fromkeys(r["shape"] for r in result["summary"]):
        s, p = by.get((label, "streamer")), by.get((label, "BirdNET-Analyzer"))
        if s and p and p["rtf"] > 0:
            lines.append(f"- {label}: streamer {s['rtf'] / p['rtf']:.2f}x BirdNET-Analyzer's real-time factor, "
                         f"{s['rtf'] / c['rtf']:.2f} of the ceiling; largest process {s['largest_mb']:.0f} vs {p['largest_mb']:.0f} MB, "
                         f"all processes {s['tree_mb']:.0f} vs {p['tree_mb']:.0f} MB")
    lines += ["", f"Benchmark time: {result['bench_s'] / 60:.1f} min."]
    return "\n".join(lines) + "\n"


def save(result: dict, out_dir: Path) -> str:
    from streamer.files import atomic_write_text

    out_dir.mkdir(parents=True, exist_ok=True)
    text = birdnet_markdown(result)
    atomic_write_text(out_dir / "bench-birdnet.md", text)
    atomic_write_text(out_dir / "bench-birdnet.json", json.dumps(result, indent=2) + "\n")
    return text
