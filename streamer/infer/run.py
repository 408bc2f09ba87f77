"""Running ``infer``: the row sink first, then the students' export and the backend check, then
the engine.

The submission's temporary file is opened before anything slow starts (so an ``--out`` that
cannot be written fails at once), and from then on every way a run can end leaves a complete
CSV: the engine's own end, the budget's stop, an error in the engine (exit 1), or Ctrl-C at any
moment, while the students export or the models load included (exit 130). Only a failed write
of the CSV itself leaves none (the file at ``--out`` is then untouched).
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from streamer.recipes.schema import OWN_LOGITS_KINDS
from streamer.backend import describe_models, with_backends
from streamer.errors import OutputWriteError
from streamer.infer.budget import Budget
from streamer.infer.report import RunReport
from streamer.infer.rows import RowSink, sigint_deferred
from streamer.models.graphs import BackendChoice
from streamer.stages import Reducer, RunPlan, check_members

log = logging.getLogger(__name__)

#: Exporting the students costs a few seconds of start-up; with less time than this left, they
#: stay in torch so that the little time there is goes to scoring.
MIN_SECONDS_FOR_EXPORT = 60.0


def run_infer(plan: RunPlan, *, start: float | None = None) -> RunReport:
    """Run the plan with the configured engine under the configured budget.

    Args:
        plan: from :func:`streamer.stages.prepare`.
        start: ``time.monotonic()`` at the start of the command (the budget counts from it);
            default: now.

    Returns:
        The report; ``report.error`` is set when the run stopped early because of an error,
        ``report.interrupted`` after Ctrl-C. The CSV is complete in every case.

    Raises:
        OutputWriteError: the CSV could not be written.
    """
    config = plan.config
    t_start = time.perf_counter()
    running = set(plan.model.member_names)
    drop_order = tuple(n for n in plan.recipe.recipe.drop_order if n in running) if plan.recipe is not None else ()
    budget = Budget(budget_s=config.execution.budget_minutes * 60.0, start=start if start is not None else time.monotonic(),
                    drop_order=drop_order)
    report = RunReport(out=Path(config.out), n_files=len(plan.jobs), source=plan.source, engine=config.execution.engine)
    # What the parent can load, it checks before anything starts (ArtifactError: exit 2, no CSV).
    reducer = Reducer(plan.reducer)
    check_members(plan.model)
    perch_members = frozenset(m.name for m in plan.model.members if m.kind in OWN_LOGITS_KINDS)
    sink = RowSink(plan.frame, report, budget, reducer, progress=config.execution.progress, perch_members=perch_members)
    reason = None
    try:
        with tempfile.TemporaryDirectory(prefix="streamer-students-") as tmp:
            if plan.jobs and budget.time_left() >= MIN_SECONDS_FOR_EXPORT:
                plan, check = with_backends(plan, Path(tmp), reducer=reducer)
                report.backend_check = check.to_dict() if check is not None else None
            elif plan.jobs:
                log.info("budget: too little time to export the students and check the backend; students in torch, "
                         "Perch in onnxruntime fp32")
                plan = replace(plan, model=replace(plan.model, backend=BackendChoice()))
            report.models = describe_models(plan.model, plan.reducer)
            _run(plan, budget, sink, report)
    except KeyboardInterrupt:
        report.interrupted = True
        reason = "interrupted"
        log.warning("interrupted: writing prior-only rows for the %d unfinished files", len(sink.writer.missing()))
    except OutputWriteError:
        sink.abort()
        raise
    except Exception as exc:  # noqa: BLE001 - whatever failed, the CSV is still written
        report.error = f"{type(exc).__name__}: {exc}"
        reason = "run stopped by an error"
        log.exception("the run failed; writing prior-only rows for the unfinished files")
    finally:
        sink.close_progress()
    with sigint_deferred() as late:
        sink.finish(reason or "not scored before the budget's stop")  # done already after a normal pipeline run
    if late.seen:
        report.interrupted = True
    report.seconds.setdefault("write", sink.seconds.get("write", 0.0))
    report.seconds["total"] = max(report.seconds.get("total", 0.0), time.perf_counter() - t_start)
    report.budget_notes = list(budget.decisions)
    return report


def _run(plan: RunPlan, budget: Budget, sink: RowSink, report: RunReport) -> None:
    from streamer.models.moe import set_torch_threads
    from streamer.pipeline.layout import plan_layout, sequential_threads
    from streamer.pipeline.layout import with_threads

    config = plan.config
    if config.execution.engine == "sequential":
        from streamer.infer.sequential import run_sequential

        threads = sequential_threads(config.execution.threads)
        log.info("engine: sequential, %s intra-op thread(s)", "library default" if threads is None else threads)
        run_sequential(replace(plan, model=with_threads(plan.model, threads)), sink, report, budget)
        return

    from streamer.infer.runner import PipelineRunner

    workers, threads, decoders = config.execution.workers, config.execution.threads, config.execution.decoders
    tuned = _tuned_layout(config)
    if tuned is not None:
        workers, threads, decoders = tuned.workers, tuned.threads, tuned.decoders
        plan = replace(plan, model=replace(plan.model, threads=replace(plan.model.threads, allow_spinning=tuned.allow_spinning)))
    layout = plan_layout(workers=workers, threads=threads, decoders=decoders, pin=config.execution.pin, n_files=len(plan.jobs))
    log.info("engine: pipeline, %s", layout.describe())
    # The parent only reduces (ProtoSSM on 12 windows at a time): one thread, so it does not
    # compete with the consumers for every core.
    set_torch_threads(1)
    PipelineRunner(
        plan, layout, budget, sink, report,
        reduce_in_consumers=config.execution.reduce_in == "consumer",
        task_timeout_s=config.execution.task_timeout_s,
        startup_timeout_s=config.execution.startup_timeout_s,
    ).run()


def _tuned_layout(config):
    """The tuned profile's layout, when one applies: only if no layout flag was given."""
    from streamer.profile import default_profile_path, load_profile

    if not config.execution.use_profile:
        return None
    explicit = config.execution.workers is not None or config.execution.decoders is not None or config.execution.threads != "auto" or config.execution.allow_spinning
    if explicit:
        if config.execution.profile is not None:
            log.info("layout flags given: the profile %s is not used", config.execution.profile)
        return None
    path = config.execution.profile if config.execution.profile is not None else default_profile_path()
    return load_profile(path, required=config.execution.profile is not None)
