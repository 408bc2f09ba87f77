"""The sequential engine: one process, one file at a time, the same stages as the pipeline.

It is the reference every parallel layout is tested against and, with the libraries' default
threading, the way the original script ran. It honours the same budget (it cannot abandon a
file half-way, so it stops before a file that would not finish in time).
"""

from __future__ import annotations

import logging
import resource
import time
from pathlib import Path

from streamer.budget import TIER_FULL, TIER_PRIOR_ONLY, Budget
from streamer.report import RunReport
from streamer.stages import ModelStage, Reducer, RunPlan, decode_job, prior_fallback
from streamer.submission import SubmissionWriter

log = logging.getLogger(__name__)


def fill_fallbacks(plan: RunPlan, writer: SubmissionWriter, report: RunReport, reason: str) -> None:
    """Prior-only rows for every file that has none yet."""
    for index in writer.missing():
        job = plan.jobs[index]
        writer.set_file(index, prior_fallback(plan.reducer.prior, job.stem))
        report.set_tier(job.stem, TIER_PRIOR_ONLY, reason)


def run_sequential(plan: RunPlan, out: Path | None = None, budget: Budget | None = None) -> RunReport:
    """Score every file of the plan and write the submission.

    Args:
        plan: the checked run plan.
        out: CSV path (default: the plan's).
        budget: wall-clock budget; ``None`` means unlimited.
    """
    t_start = time.perf_counter()
    out = Path(out if out is not None else plan.config.out)
    if budget is None:
        budget = Budget(budget_s=float("inf"), start=time.monotonic())
    report = RunReport(out=out, n_files=len(plan.jobs), source=plan.source, engine="sequential")
    # Set-up failures (a model that does not load or check) stop the run before any audio is
    # read and without writing a CSV: they are configuration mistakes, not scoring failures.
    models = ModelStage(plan.model)
    models.check()
    reducer = Reducer(plan.reducer)
    seconds = {"setup": time.perf_counter() - t_start, "decode": 0.0}
    writer = SubmissionWriter(out, [j.stem for j in plan.jobs], plan.competition.classes)
    try:
        for position, job in enumerate(plan.jobs):
            per_file = budget.costs.consumer_seconds(budget.tier) + budget.costs.reduce_s
            if budget.must_stop() or budget.time_left() < per_file:
                log.warning("budget: stopping with %d files unscored", len(plan.jobs) - position)
                break
            t0 = time.perf_counter()
            decoded = decode_job(job)
            seconds["decode"] += time.perf_counter() - t0
            if decoded.windows is None:
                log.warning("%s: %s; writing prior-only fallback rows", job.path, decoded.error)
                writer.set_file(job.index, prior_fallback(plan.reducer.prior, job.stem))
                report.set_tier(job.stem, TIER_PRIOR_ONLY, f"unreadable: {decoded.error}")
                continue
            if decoded.notes:
                log.info("%s: %s", job.path.name, "; ".join(decoded.notes))
            tier = budget.choose_tier(len(plan.jobs) - position, 1)
            outputs = models.run(decoded.windows, with_students=tier == TIER_FULL)
            budget.costs.observe_model(*models.last_seconds)
            t1 = time.perf_counter()
            writer.set_file(job.index, reducer.reduce(job.stem, outputs))
            budget.costs.observe_reduce(time.perf_counter() - t1)
            report.set_tier(job.stem, tier, None if tier == TIER_FULL else "students dropped to meet the budget")
        seconds["scoring"] = time.perf_counter() - t_start - seconds["setup"]
        fill_fallbacks(plan, writer, report, "not scored before the budget's stop")
    except KeyboardInterrupt:
        report.interrupted = True
        log.warning("interrupted: writing prior-only rows for the %d unfinished files", len(writer.missing()))
        fill_fallbacks(plan, writer, report, "interrupted")
    except Exception as exc:
        report.error = f"{type(exc).__name__}: {exc}"
        log.error("fatal error (%s); writing prior-only rows for the %d unfinished files", report.error, len(writer.missing()))
        fill_fallbacks(plan, writer, report, "run stopped by an error")
        writer.close()
        raise
    finally:
        if not writer.closed and not writer.missing():
            t0 = time.perf_counter()
            writer.close()
            seconds["write"] = time.perf_counter() - t0
        elif not writer.closed:
            writer.abort()
    seconds.update(models.seconds)
    seconds.update(reducer.seconds)
    seconds["total"] = time.perf_counter() - t_start
    report.seconds = seconds
    report.peak_rss_mb = {"process": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    report.budget_notes = list(budget.decisions)
    return report
