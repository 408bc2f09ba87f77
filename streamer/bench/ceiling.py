"""The ceiling: the models alone on windows already decoded in memory.

``n_workers`` processes (pinned, ``threads`` each, like the engine's consumers, started by the
same child-process layer) load the same models and decode their share of the files while they
start; once every one has reported ready, each is told to go at the same moment and runs Perch
and the students on every file. Throughput is the sum of the workers' own rates (each worker's
windows / its time): what perfectly balanced work would give, so a worker slowed by a busy
neighbour on a shared host does not hold the others back (the engine balances its work
dynamically, and a fixed split judged by its slowest worker would understate what the models
can do). ``slowest_windows_per_s`` (all windows / the slowest worker's time) is kept too.
This is the engine's ceiling: what it could reach if decoding, the pipes and the reduction
cost nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from streamer.pipeline.children import Body, ChildSpec, Death, Message, Supervisor

#: Longest wait for the workers to load, and to finish (seconds).
CEILING_TIMEOUT_S = 900.0


@dataclass(frozen=True)
class Go:
    """Parent → ceiling worker: start the timed run."""


@dataclass(frozen=True)
class CeilingResult:
    n_windows: int
    seconds: float


class CeilingBody(Body):
    """Loads the models and decodes its share of the files in set-up; times the models on Go."""

    setup_point = "ceiling.setup"

    def __init__(self, spec, jobs) -> None:
        self.spec = spec
        self.jobs = tuple(jobs)

    def setup(self, role: str, wid: int, generation: int) -> None:
        from streamer.stages import ModelStage, decode_job

        self.stage = ModelStage(self.spec)
        self.stage.check()
        self.batches = [d.windows for d in (decode_job(j) for j in self.jobs) if d.windows is not None]
        if self.batches:
            self.stage.run(self.batches[0])  # warm-up, as the engine's consumers are

    def handle(self, msg: Go, send) -> None:
        t0 = time.perf_counter()
        for windows in self.batches:
            self.stage.run(windows)
        send(CeilingResult(sum(b.shape[0] for b in self.batches), time.perf_counter() - t0))


def measure_ceiling(plan, *, workers: int, threads: int, allow_spinning: bool = False, pin: bool = True) -> dict:
    """Windows/s of ``workers`` × ``threads`` model processes on pre-decoded windows."""
    from streamer.pipeline.layout import plan_layout
    from streamer.pipeline.layout import with_threads

    layout = plan_layout(workers=workers, threads=threads, decoders=1, pin=pin)
    spec = with_threads(plan.model, layout.threads)
    spec = replace(spec, threads=replace(spec.threads, allow_spinning=allow_spinning))
    supervisor = Supervisor()
    results: dict[int, CeilingResult] = {}
    try:
        for w in range(layout.n_workers):
            body = CeilingBody(spec, plan.jobs[w :: layout.n_workers])
            supervisor.start(ChildSpec("ceiling", w, body, cpus=layout.worker_cpus[w], threads=layout.threads))
        deadline = time.monotonic() + CEILING_TIMEOUT_S
        started = False
        while len(results) < layout.n_workers:
            if time.monotonic() > deadline:
                raise RuntimeError(f"ceiling workers did not finish within {CEILING_TIMEOUT_S:.0f} s")
            for event in supervisor.wait(1.0):
                if isinstance(event, Death):
                    raise RuntimeError(f"ceiling worker {event.child.name} ended: {event.describe()}")
                if isinstance(event, Message) and isinstance(event.msg, CeilingResult):
                    results[event.child.wid] = event.msg
            children = supervisor.of_role("ceiling")
            if not started and len(children) == layout.n_workers and all(c.ready for c in children):
                for child in children:  # all loaded: the timed runs start together
                    supervisor.send(child, Go())
                started = True
    finally:
        supervisor.shutdown()
    rows = [results[w] for w in range(layout.n_workers)]
    n_windows = sum(r.n_windows for r in rows)
    slowest = max(r.seconds for r in rows)
    return {"workers": workers, "threads": threads, "allow_spinning": allow_spinning,
            "windows": n_windows, "seconds": slowest,
            "windows_per_s": sum(r.n_windows / r.seconds for r in rows if r.seconds > 0),
            "slowest_windows_per_s": n_windows / slowest if slowest > 0 else 0.0,
            "worker_windows_per_s": [r.n_windows / r.seconds if r.seconds > 0 else 0.0 for r in rows]}
