"""``streamer archive``: score long recordings chunk by chunk, one output file per input.

This first version runs in one process (the multiprocess and Ray engines are still to come):
per input, 60-s chunks are streamed (:func:`streamer.audio.iter_chunks`), each chunk's windows
go through Perch and the students, the chunk is reduced with the site and the UTC hour of its
own start, and only the real windows are written. A journal makes reruns skip finished inputs.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from streamer.archive.inputs import ArchiveInput
from streamer.archive.journal import DONE, FAILED, Journal
from streamer.archive.output import ScoreWriter
from streamer.archive.timing import RecordingTime, recording_time
from streamer.audio import WINDOW_SAMPLES, iter_chunks
from streamer.errors import AudioDecodeError
from streamer.metadata import N_WINDOWS_PER_FILE
from streamer.stages import ModelStage, Reducer, RunPlan

log = logging.getLogger(__name__)

CHUNK_SAMPLES = N_WINDOWS_PER_FILE * WINDOW_SAMPLES


@dataclass
class ArchiveReport:
    n_inputs: int = 0
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    audio_s: float = 0.0
    seconds: float = 0.0

    def summary(self) -> str:
        rtf = self.audio_s / self.seconds if self.seconds > 0 else 0.0
        lines = [
            f"{len(self.done)} scored, {len(self.skipped)} already finished (journal), {len(self.failed)} failed, "
            f"of {self.n_inputs} input(s); {self.audio_s / 3600:.2f} h of audio in {self.seconds:.1f} s "
            f"(real-time factor {rtf:.0f}x)"
        ]
        lines += [f"  failed: {name}: {reason}" for name, reason in sorted(self.failed.items())]
        if self.failed:
            lines.append("failed inputs are retried by running the same command with --retry-failed")
        return "\n".join(lines)


def output_path(out_dir: Path, entry: ArchiveInput, fmt: str) -> Path:
    return Path(out_dir) / f"{entry.rel}.{fmt}"


def score_recording(
    models: ModelStage, reducer: Reducer, entry: ArchiveInput, when: RecordingTime, writer: ScoreWriter
) -> float:
    """Score one recording into ``writer``; returns the seconds of audio scored."""
    n_real_total = 0
    for chunk in iter_chunks(entry.path, CHUNK_SAMPLES):
        windows = chunk.samples.reshape(N_WINDOWS_PER_FILE, WINDOW_SAMPLES)
        probs = reducer.reduce_at(models.run(windows), when.site, when.hour_at(chunk.start_s))
        n_windows = math.ceil(chunk.n_real / WINDOW_SAMPLES)
        writer.write_chunk(chunk.index * N_WINDOWS_PER_FILE, probs[:n_windows])
        n_real_total += chunk.n_real
    return n_real_total / 32000.0


def run_archive(
    plan: RunPlan,
    entries: list[ArchiveInput],
    out_dir: Path,
    *,
    fmt: str = "parquet",
    top_k: int | None = None,
    retry_failed: bool = False,
    metadata: dict | None = None,
    site: str | None = None,
    start_utc=None,
) -> ArchiveReport:
    """Score every input not finished before (failed ones only with ``retry_failed``)."""
    t0 = time.perf_counter()
    journal = Journal(out_dir)
    previously_failed = {e.key.path for e in journal.failed()}
    report = ArchiveReport(n_inputs=len(entries))
    todo = []
    for entry in entries:
        out = output_path(out_dir, entry, fmt)
        key = str(entry.path.resolve())
        if journal.is_done(entry.path, out):
            report.skipped.append(str(entry.rel))
        elif key in previously_failed and not retry_failed and journal.entries[key].key.mtime_ns == entry.path.stat().st_mtime_ns:
            report.failed[str(entry.rel)] = f"failed before ({journal.entries[key].reason}); not retried without --retry-failed"
        else:
            todo.append(entry)
    if todo:
        models = ModelStage(plan.model)
        models.check()
        reducer = Reducer(plan.reducer)
    for i, entry in enumerate(todo, start=1):
        out = output_path(out_dir, entry, fmt)
        when = recording_time(entry.path, metadata=metadata, site=site, start_utc=start_utc)
        writer = ScoreWriter(out, str(entry.rel), plan.competition.classes, fmt=fmt, top_k=top_k)
        try:
            audio_s = score_recording(models, reducer, entry, when, writer)
        except AudioDecodeError as exc:
            writer.abort()
            journal.record(entry.path, FAILED, str(out.relative_to(out_dir)), str(exc))
            report.failed[str(entry.rel)] = str(exc)
            log.warning("%s: %s", entry.path, exc)
            continue
        except BaseException:
            writer.abort()  # a partial file never looks finished
            raise
        writer.close()
        journal.record(entry.path, DONE, str(out.relative_to(out_dir)))
        report.done.append(str(entry.rel))
        report.audio_s += audio_s
        elapsed = time.perf_counter() - t0
        log.info("[%d/%d] %s: %.2f h of audio; %.2f h done in %.0f s", i, len(todo), entry.rel, audio_s / 3600, report.audio_s / 3600, elapsed)
    report.seconds = time.perf_counter() - t0
    return report
