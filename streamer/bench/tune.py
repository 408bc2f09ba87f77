"""``streamer tune``: measure pipeline layouts on this machine and save the fastest as a profile."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from streamer.bench.runner import (
    BenchModels,
    Contender,
    build_contenders,
    default_audio_dir,
    make_inputs,
    repeat_order,
    run_infer_subprocess,
)
from streamer.profile import TunedLayout, save_profile

log = logging.getLogger(__name__)


def run_tune(
    *,
    profile_path: Path,
    models: BenchModels,
    quick: bool = False,
    n_files: int | None = None,
    repeats: int | None = None,
    audio_dir: Path | None = None,
) -> tuple[TunedLayout, list[dict]]:
    """Measure the pipeline layouts (interleaved, repeated; medians) and save the winner."""
    from streamer.pipeline.layout import available_cpus

    n_files = n_files or (12 if quick else 24)
    repeats = repeats or (2 if quick else 3)
    candidates = [c for c in build_contenders(len(available_cpus()), quick) if c.kind == "infer" and "engine" not in c.layout]
    with tempfile.TemporaryDirectory(prefix="streamer-tune-") as tmp:
        work = Path(tmp)
        data = make_inputs(models, audio_dir or default_audio_dir(), n_files, work)
        for r in range(repeats):
            order = repeat_order(candidates, r)
            for c in order:
                log.info("repeat %d/%d: %s", r + 1, repeats, c.name)
                c.runs.append(run_infer_subprocess(models, data, c.args, work, f"t{r}_{len(c.runs)}_{abs(hash(c.name))}"))
    best: Contender = max(candidates, key=lambda c: c.median("windows_per_s"))
    layout = TunedLayout(
        workers=best.layout["workers"],
        threads=best.layout["threads"],
        decoders=best.layout["decoders"],
        allow_spinning=bool(best.layout.get("allow_spinning", False)),
    )
    measurements = [
        {"name": c.name, "layout": c.layout, "windows_per_s": c.median("windows_per_s"), "n_runs": len(c.runs)}
        for c in sorted(candidates, key=lambda c: -c.median("windows_per_s"))
    ]
    save_profile(profile_path, layout, measurements, note=f"models: {models.description}; {n_files} files, {repeats} repeats")
    return layout, measurements
