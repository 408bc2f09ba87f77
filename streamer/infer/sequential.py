"""The sequential engine: one process, one file at a time, the same stages as the pipeline.

It is the reference every parallel layout is tested against and, with the libraries' default
threading, the way the original script ran. Rows go through the same row sink as the
pipeline's, so fallbacks and checks are the same. It honours the same budget (it cannot abandon
a file half-way, so it stops before a file that would not finish in time). A file whose
decoding or models raise is retried, and gets prior-only rows after
:data:`~streamer.pipeline.attempts.MAX_FILE_ATTEMPTS` failures, as in the pipeline
(:func:`~streamer.pipeline.attempts.try_up_to`).
"""

from __future__ import annotations

import logging
import time

from streamer.infer.budget import Budget
from streamer.infer.report import MEMBER_SECONDS, RunReport
from streamer.infer.rows import RowSink
from streamer.pipeline.attempts import GaveUp, try_up_to
from streamer.pipeline.children import maxrss_kb
from streamer.stages import ModelStage, RunPlan, decode_job

log = logging.getLogger(__name__)


def run_sequential(plan: RunPlan, sink: RowSink, report: RunReport, budget: Budget) -> None:
    """Score every file of the plan into ``sink`` (which the caller finishes).

    A set-up failure (a model that does not load or check) is raised: nothing was scored.
    """
    t_start = time.perf_counter()
    report.engine = "sequential"
    models = ModelStage(plan.model)
    models.check()
    seconds = {"setup": time.perf_counter() - t_start, "decode": 0.0}
    sink.start_progress()
    for position, job in enumerate(plan.jobs):
        per_file = budget.costs.consumer_seconds(budget.dropped()) + budget.costs.reduce_s
        if budget.must_stop() or budget.time_left() < per_file:
            log.warning("budget: stopping with %d files unscored", len(plan.jobs) - position)
            break
        tier = budget.choose_tier(len(plan.jobs) - position, 1)

        def attempt(job=job, tier=tier):
            """The file's model outputs, or None when it is unreadable (it then has its rows)."""
            t0 = time.perf_counter()
            decoded = decode_job(job)
            seconds["decode"] += time.perf_counter() - t0
            if decoded.windows is None:
                log.warning("%s; writing prior-only rows", decoded.error)  # the error names the file
                sink.fallback(job.index, f"unreadable: {decoded.error}")
                return None
            if decoded.notes:
                log.info("%s: %s", job.path.name, "; ".join(decoded.notes))
            return models.run(decoded.windows, dropped=budget.dropped(tier), key=job.stem)

        outputs = try_up_to(attempt, lambda cause: log.warning("%s: %s; trying again", job.stem, cause))
        if isinstance(outputs, GaveUp):
            log.error("%s: failed %d times (last: %s); writing prior-only rows", job.stem, outputs.attempts, outputs.cause)
            sink.fallback(job.index, f"failed {outputs.attempts} times (last: {outputs.cause})")
        elif outputs is not None:
            budget.costs.observe_model(models.last_seconds[0], models.last_member_seconds)
            sink.add_modelled(job.index, outputs, tier)
            sink.reduce_waiting(force=True)
    seconds["scoring"] = time.perf_counter() - t_start - seconds["setup"]
    seconds.update(models.seconds)
    seconds.update({f"{MEMBER_SECONDS}{name}": s for name, s in models.member_seconds().items()})
    seconds.update(sink.reducer.seconds)
    report.seconds.update(seconds)
    report.peak_rss_mb = {"process": maxrss_kb() / 1024.0}  # not ru_maxrss: see maxrss_kb
