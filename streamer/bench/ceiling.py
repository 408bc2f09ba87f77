"""The ceiling: the models alone on windows already decoded in memory.

``n_workers`` processes (pinned, ``threads`` each, like the engine's consumers) load the same
models, decode their share of the files *before* the clock starts, wait at a barrier, then run
Perch and the students on every file. Throughput is the sum of the workers' own rates (each
worker's windows / its time): what perfectly balanced work would give, so a worker slowed by a
busy neighbour on a shared host does not hold the others back (the engine balances its work
dynamically, and a fixed split judged by its slowest worker would understate what the models
can do). ``slowest_windows_per_s`` (all windows / the slowest worker's time) is kept too.
This is the engine's ceiling: what it could reach if decoding, the pipes and the reduction
cost nothing.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from dataclasses import replace

#: Longest wait for the workers to load, and to finish (seconds).
CEILING_TIMEOUT_S = 900.0


def _ceiling_worker(spec, cpus, jobs, barrier, results) -> None:
    import os

    from streamer.pipeline.workers import _setup
    from streamer.stages import ModelStage, decode_job

    try:
        _setup(cpus, spec.threads.intra_op_threads)
        stage = ModelStage(spec)
        stage.check()
        batches = [d.windows for d in (decode_job(j) for j in jobs) if d.windows is not None]
        stage.run(batches[0]) if batches else None  # warm-up, as the engine's consumers are
        barrier.wait(timeout=CEILING_TIMEOUT_S)
        t0 = time.perf_counter()
        for windows in batches:
            stage.run(windows)
        results.put((os.getpid(), sum(b.shape[0] for b in batches), time.perf_counter() - t0, None))
    except BaseException as exc:  # reported to the parent, which raises it
        results.put((os.getpid(), 0, 0.0, f"{type(exc).__name__}: {exc}"))


def measure_ceiling(plan, *, workers: int, threads: int, allow_spinning: bool = False, pin: bool = True) -> dict:
    """Windows/s of ``workers`` × ``threads`` model processes on pre-decoded windows."""
    from streamer.pipeline.layout import plan_layout
    from streamer.pipeline.workers import with_threads

    layout = plan_layout(workers=workers, threads=threads, decoders=1, pin=pin)
    spec = with_threads(plan.model, layout.threads)
    spec = replace(spec, threads=replace(spec.threads, allow_spinning=allow_spinning))
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(layout.n_workers)
    results = ctx.Queue()
    shares = [plan.jobs[w :: layout.n_workers] for w in range(layout.n_workers)]
    procs = [
        ctx.Process(target=_ceiling_worker, args=(spec, layout.worker_cpus[w], shares[w], barrier, results), daemon=True)
        for w in range(layout.n_workers)
    ]
    for p in procs:
        p.start()
    try:
        rows = [results.get(timeout=CEILING_TIMEOUT_S) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
    errors = [r[3] for r in rows if r[3]]
    if errors:
        raise RuntimeError(f"ceiling worker failed: {errors[0]}")
    n_windows = sum(r[1] for r in rows)
    slowest = max(r[2] for r in rows)
    return {"workers": workers, "threads": threads, "allow_spinning": allow_spinning,
            "windows": n_windows, "seconds": slowest,
            "windows_per_s": sum(r[1] / r[2] for r in rows if r[2] > 0),
            "slowest_windows_per_s": n_windows / slowest if slowest > 0 else 0.0,
            "worker_windows_per_s": [r[1] / r[2] if r[2] > 0 else 0.0 for r in rows]}
