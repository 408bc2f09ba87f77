"""The sequential engine: one process, one file at a time, the same stages as the pipeline.

It is the reference every parallel layout is tested against, and, with the libraries' default
threading, the way the original script ran.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from streamer.stages import ModelStage, Reducer, RunPlan, decode_job
from streamer.submission import SubmissionTable

log = logging.getLogger(__name__)


@dataclass
class RunReport:
    """What a run did, for the summary and for tests.

    Attributes:
        out: the CSV written.
        n_files: files scored (model or fallback).
        source: where the files came from (test soundscapes, dry run, explicit list).
        fallbacks: stem → reason, for files that got the prior-only fallback rows.
        seconds: wall time per stage (``setup``, ``decode``, ``perch``, ``students``,
            ``protossm``, ``postprocess``, ``write``) and ``total``.
    """

    out: Path
    n_files: int
    source: str
    fallbacks: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def n_windows(self) -> int:
        return self.n_files * 12

    def summary(self) -> str:
        total = self.seconds.get("total", 0.0)
        rate = self.n_windows / total if total > 0 else float("nan")
        lines = [
            f"wrote {self.out} ({self.n_windows} rows = {self.n_files} files x 12 windows; files from {self.source})",
            f"time {total:.1f} s, {rate:.1f} windows/s, real-time factor {self.n_windows * 5 / total if total > 0 else float('nan'):.0f}x",
            "stage seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in self.seconds.items() if k != "total"),
        ]
        if self.fallbacks:
            lines.append(f"{len(self.fallbacks)} file(s) got prior-only fallback rows:")
            lines.extend(f"  {stem}: {reason}" for stem, reason in sorted(self.fallbacks.items()))
        else:
            lines.append("0 files needed the fallback")
        return "\n".join(lines)


def run_sequential(plan: RunPlan, out: Path | None = None) -> RunReport:
    """Score every file of the plan and write the submission."""
    t_start = time.perf_counter()
    out = Path(out if out is not None else plan.config.out)
    models = ModelStage(plan.model)
    models.check()
    reducer = Reducer(plan.reducer)
    table = SubmissionTable([j.stem for j in plan.jobs], plan.competition.classes)
    report = RunReport(out=out, n_files=len(plan.jobs), source=plan.source)
    seconds = {"setup": time.perf_counter() - t_start, "decode": 0.0}

    for job in plan.jobs:
        t0 = time.perf_counter()
        decoded = decode_job(job)
        seconds["decode"] += time.perf_counter() - t0
        if decoded.windows is None:
            log.warning("%s: %s; writing prior-only fallback rows", job.path, decoded.error)
            report.fallbacks[job.stem] = decoded.error or "unreadable"
            table.set_file(job.index, reducer.fallback(job.stem))
            continue
        if decoded.notes:
            log.info("%s: %s", job.path.name, "; ".join(decoded.notes))
        outputs = models.run(decoded.windows)
        table.set_file(job.index, reducer.reduce(job.stem, outputs))

    t0 = time.perf_counter()
    table.write(out)
    seconds["write"] = time.perf_counter() - t0
    seconds.update(models.seconds)
    seconds.update(reducer.seconds)
    seconds["total"] = time.perf_counter() - t_start
    report.seconds = seconds
    return report

