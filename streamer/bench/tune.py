"""``streamer tune``: measure pipeline layouts and backends on this machine and save the fastest
as a profile."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from streamer.bench.runner import (
    REFERENCE_BACKEND,
    BenchModels,
    Contender,
    build_contenders,
    default_audio_dir,
    make_inputs,
    repeat_order,
    run_infer_subprocess,
)
from streamer.models.graphs import BackendChoice
from streamer.profile import TunedLayout, save_profile

log = logging.getLogger(__name__)


def _eligible(c: Contender, allow_bf16: bool) -> str | None:
    """Why a measured candidate may not be saved (``None``: it may)."""
    if c.backend.precision == "bf16" and not allow_bf16:
        return "bf16 is saved only with --allow-bf16"
    if c.backend.backend == "openvino" and c.backend.precision == "fp32" and any(r.get("backend_check_passed") is False for r in c.runs):
        return "OpenVINO failed the parity check against onnxruntime"
    return None


def run_tune(
    *,
    profile_path: Path,
    models: BenchModels,
    quick: bool = False,
    n_files: int | None = None,
    repeats: int | None = None,
    audio_dir: Path | None = None,
    backends: list[BackendChoice] | None = None,
    allow_bf16: bool = False,
) -> tuple[TunedLayout, list[dict]]:
    """Measure the pipeline layouts in every backend (interleaved, repeated; medians) and save
    the fastest eligible one: OpenVINO fp32 only where it passed the parity check, bf16 only
    with ``allow_bf16``."""
    from streamer.pipeline.layout import available_cpus

    n_files = n_files or (12 if quick else 24)
    repeats = repeats or (2 if quick else 3)
    backends = backends or [REFERENCE_BACKEND]
    candidates = [c for c in build_contenders(len(available_cpus()), quick, backends, grid_backends=backends)
                  if c.kind == "infer" and "engine" not in c.layout]
    with tempfile.TemporaryDirectory(prefix="streamer-tune-") as tmp:
        work = Path(tmp)
        data = make_inputs(models, audio_dir or default_audio_dir(), n_files, work)
        for r in range(repeats):
            order = repeat_order(candidates, r)
            for c in order:
                log.info("repeat %d/%d: %s", r + 1, repeats, c.name)
                c.runs.append(run_infer_subprocess(models, data, c.args, work, f"t{r}_{len(c.runs)}_{abs(hash(c.name))}"))
    eligible = [c for c in candidates if _eligible(c, allow_bf16) is None]
    best: Contender = max(eligible, key=lambda c: c.median("windows_per_s"))
    layout = TunedLayout(
        workers=best.layout["workers"],
        threads=best.layout["threads"],
        decoders=best.layout["decoders"],
        allow_spinning=bool(best.layout.get("allow_spinning", False)),
        backend=best.backend.backend,
        precision=best.backend.precision,
    )
    measurements = [
        {"name": c.name, "layout": c.layout, "backend": c.backend.describe(), "windows_per_s": c.median("windows_per_s"),
         "n_runs": len(c.runs), "eligible": _eligible(c, allow_bf16) is None, "why_not": _eligible(c, allow_bf16)}
        for c in sorted(candidates, key=lambda c: -c.median("windows_per_s"))
    ]
    save_profile(profile_path, layout, measurements, note=f"models: {models.description}; {n_files} files, {repeats} repeats")
    return layout, measurements
