"""Choosing the engine and its layout for a checked plan."""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from streamer.budget import Budget
from streamer.report import RunReport
from streamer.stages import RunPlan

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
    """
    config = plan.config
    budget = Budget(budget_s=config.budget_minutes * 60.0, start=start if start is not None else time.monotonic())
    with tempfile.TemporaryDirectory(prefix="streamer-students-") as tmp:
        if plan.jobs and budget.time_left() >= MIN_SECONDS_FOR_EXPORT:
            plan = with_student_backend(plan, Path(tmp))
        elif plan.jobs:
            log.info("budget: too little time to export the students to onnxruntime; they run in torch")
        report = _run(plan, budget)
    report.engine += f"; students in {'onnxruntime' if plan.model.students_onnx else 'torch'}"
    return report


def with_student_backend(plan: RunPlan, tmp: Path, *, sequential: bool | None = None) -> RunPlan:
    """The plan with its students exported to onnxruntime (into ``tmp``) when that backend is
    chosen; ``auto`` means onnxruntime except in a sequential engine (``sequential``, default:
    the config's engine)."""
    from streamer.models.student_onnx import export_students

    config, model = plan.config, plan.model
    if sequential is None:
        sequential = config.engine == "sequential"
    backend = config.students_backend
    if backend == "auto":
        backend = "torch" if sequential else "onnxruntime"
    if backend != "onnxruntime" or (model.cnn_path is None and model.crnn_path is None):
        return plan
    paths = export_students(model.cnn_path, model.crnn_path, n_classes=model.n_classes, out_dir=tmp)
    if paths is None:
        return plan
    log.info("students run in onnxruntime")
    return replace(plan, model=replace(model, students_onnx=paths))


def _run(plan: RunPlan, budget: Budget) -> RunReport:
    from streamer.models.moe import set_torch_threads
    from streamer.pipeline.layout import plan_layout, sequential_threads
    from streamer.pipeline.workers import with_threads

    config = plan.config
    if config.engine == "sequential":
        threads = sequential_threads(config.threads)
        log.info("engine: sequential, %s intra-op thread(s)", "library default" if threads is None else threads)
        return _sequential(replace(plan, model=with_threads(plan.model, threads)), budget)

    from streamer.pipeline.runner import run_pipeline

    workers, threads, decoders = config.workers, config.threads, config.decoders
    tuned = _tuned_layout(config)
    if tuned is not None:
        workers, threads, decoders = tuned.workers, tuned.threads, tuned.decoders
        plan = replace(plan, model=replace(plan.model, threads=replace(plan.model.threads, allow_spinning=tuned.allow_spinning)))
    layout = plan_layout(workers=workers, threads=threads, decoders=decoders, pin=config.pin, n_files=len(plan.jobs))
    log.info("engine: pipeline, %s", layout.describe())
    # The parent only reduces (ProtoSSM on 12 windows at a time): one thread, so it does not
    # compete with the consumers for every core.
    set_torch_threads(1)
    return run_pipeline(
        plan,
        layout,
        budget,
        progress=config.progress,
        model_delay_s=config.debug_model_delay_s,
        students_delay_s=config.debug_students_delay_s,
        faults=config.debug_faults,
        reduce_in_consumers=config.reduce_in == "consumer",
    )


def _tuned_layout(config):
    """The tuned profile's layout, when one applies: only if no layout flag was given."""
    from streamer.profile import default_profile_path, load_profile

    if not config.use_profile:
        return None
    explicit = config.workers is not None or config.decoders is not None or config.threads != "auto" or config.allow_spinning
    if explicit:
        if config.profile is not None:
            log.info("layout flags given: the profile %s is not used", config.profile)
        return None
    path = config.profile if config.profile is not None else default_profile_path()
    return load_profile(path, required=config.profile is not None)


def _sequential(plan: RunPlan, budget: Budget) -> RunReport:
    from streamer.sequential import run_sequential

    return run_sequential(plan, budget=budget)
