"""``streamer archive``: score long recordings, one output file per input, resumable.

The driver: expand the inputs, skip what the journal says is finished, read each remaining
input's duration from its header (for progress), hand the inputs to an engine
(:mod:`streamer.archive.engines`), and record every outcome in the journal as it arrives. One
run at a time may write to an output folder (a lock file says so); temporary files left by a
killed run are removed at the start of the next.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from streamer.archive.engines import LocalEngine, RayEngine, run_sequential
from streamer.archive.inputs import ArchiveInput
from streamer.archive import fingerprint as run_fingerprint
from streamer.archive.journal import DONE, FAILED, JOURNAL_NAME, FileKey, Journal
from streamer.archive.output import embeddings_path, remove_stale_temporaries
from streamer.archive import checkpoint
from streamer.archive.ranges import WorkQueue
from streamer.archive.scorer import ArchiveTask, TaskResult
from streamer.archive.tables import SUFFIXES
from streamer.archive.timing import read_metadata_csv, recording_time
from streamer.pipeline.children import maxrss_kb
from streamer.config import ArchiveSettings
from streamer.errors import ConfigError
from streamer.backend import describe_models, with_backends
from streamer.stages import RunPlan

log = logging.getLogger(__name__)

LOCK_NAME = ".streamer-archive.lock"
#: The Raven selection table of the whole archive (--archive-table); the leading "_" keeps it out
#: of dataset readers over the per-input files.
ARCHIVE_RAVEN_TABLE = "_archive.selections.txt"


@dataclass
class ArchiveReport:
    engine: str = "local"
    layout: str = ""
    n_inputs: int = 0
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    unfinished: list[str] = field(default_factory=list)
    notes: dict[str, list[str]] = field(default_factory=dict)
    audio_s: float = 0.0
    seconds: float = 0.0
    stage_s: dict[str, float] = field(default_factory=dict)
    peak_worker_rss_mb: float = 0.0
    peak_parent_rss_mb: float = 0.0
    models: dict[str, str] = field(default_factory=dict)
    backend_check: dict | None = None
    ranges: dict[str, int] = field(default_factory=dict)  # inputs split across workers: how many ranges each
    resumed: dict[str, float] = field(default_factory=dict)  # inputs that went on after chunks kept by earlier runs: seconds kept
    licence: str = ""  # the models' terms (a recipe's [recipe] licence), said once per run

    @property
    def real_time_factor(self) -> float:
        """Seconds of audio scored per second of wall time."""
        return self.audio_s / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        lines = [
            f"{len(self.done)} scored, {len(self.skipped)} already finished (journal), {len(self.failed)} failed, "
            f"of {self.n_inputs} input(s); {self.audio_s / 3600:.2f} h of audio in {self.seconds:.1f} s "
            f"(real-time factor {self.real_time_factor:.0f}x; engine {self.engine}{', ' + self.layout if self.layout else ''})"
        ]
        if self.models:
            lines.append("models: " + ", ".join(f"{k.replace('_', '-')} in {v}" for k, v in self.models.items()))
        if self.ranges:
            lines.append(f"split across workers: {len(self.ranges)} input(s), into {sum(self.ranges.values())} ranges of 60-s chunks")
        if self.resumed:
            lines.append(f"resumed inside {len(self.resumed)} input(s): {sum(self.resumed.values()) / 3600:.2f} h of audio "
                         f"scored by earlier runs was kept, not scored again")
        lines += [f"  failed: {name}: {reason}" for name, reason in sorted(self.failed.items())]
        lines += [f"  note: {name}: {note}" for name, notes in sorted(self.notes.items()) for note in notes]
        if self.failed:
            lines.append("failed inputs are retried by running the same command with --retry-failed")
        if self.unfinished:
            lines.append(f"{len(self.unfinished)} input(s) not finished; rerun the same command to resume")
        if self.licence:
            lines.append(f"licence: {self.licence}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "engine": self.engine,
            "layout": self.layout,
            "n_inputs": self.n_inputs,
            "done": self.done,
            "skipped": self.skipped,
            "failed": self.failed,
            "unfinished": self.unfinished,
            "notes": self.notes,
            "audio_hours": self.audio_s / 3600,
            "seconds": self.seconds,
            "real_time_factor": self.real_time_factor,
            "stage_seconds": self.stage_s,
            "peak_worker_rss_mb": self.peak_worker_rss_mb,
            "peak_parent_rss_mb": self.peak_parent_rss_mb,
            "models": dict(self.models),
            "backend_check": self.backend_check,
            "ranges": dict(self.ranges),
            "resumed": dict(self.resumed),
            "licence": self.licence,
        }


class ArchiveInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped the run; ``report`` says what was done (finished inputs are journaled, a
    rerun resumes)."""

    def __init__(self, report: ArchiveReport) -> None:
        super().__init__("interrupted")
        self.report = report


def output_path(out_dir: Path, entry: ArchiveInput, fmt: str) -> Path:
    return Path(out_dir) / f"{entry.rel}{SUFFIXES.get(fmt, '.' + fmt)}"


class OutputLock:
    """An exclusive lock on the output folder, so two runs never share a journal."""

    def __init__(self, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.path = out_dir / LOCK_NAME
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise ConfigError(f"{out_dir}: another 'streamer archive' run is writing to this folder") from None

    def release(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)


def is_archive_folder(path: Path) -> bool:
    """Whether ``path`` is an output folder of ``streamer archive`` (it holds a fingerprint or
    a journal)."""
    from streamer.archive.fingerprint import FINGERPRINT_NAME

    return (Path(path) / FINGERPRINT_NAME).is_file() or (Path(path) / JOURNAL_NAME).is_file()


def check_out_dir(out_dir: Path) -> Path:
    """``--out`` of a scoring run, checked before any model loads (see
    :func:`streamer.files.check_output_folder`)."""
    from streamer.files import check_output_folder

    return check_output_folder(out_dir, "--out", is_ours=is_archive_folder)


def probe_input(path: Path) -> tuple[float | None, str | None]:
    """``(duration from the header or None, why it cannot be scored or None)``, from the file's
    size and header alone, so that an empty or unreadable input fails before any model loads.
    A header without a frame count (some streams) is not a problem: decoding tells."""
    import soundfile as sf

    try:
        size = Path(path).stat().st_size
    except OSError as exc:
        return None, f"cannot be read ({exc.strerror or exc})"
    if size == 0:
        return None, "empty file (0 bytes)"
    try:
        info = sf.info(str(path))
    except Exception as exc:  # soundfile raises several types (LibsndfileError, RuntimeError, TypeError)
        return None, f"not audio soundfile can read ({without_path(str(exc), path)})"
    if info.samplerate <= 0:
        return None, f"invalid sample rate {info.samplerate} in its header"
    return (float(info.frames) / float(info.samplerate) if info.frames > 0 else None), None


def without_path(message: str, path: Path) -> str:
    """``message`` without the path it names (the caller names the input once)."""
    for form in {str(path), str(Path(path).resolve())}:
        message = message.replace(f"Error opening {form!r}: ", "").removeprefix(f"{form}: ")
    return message


class _Progress:
    """Hours of audio done / to do, the real-time factor and the ETA: on a tqdm bar, or as one
    log line per finished input when there is no bar.

    Chunks of inputs in flight count as they arrive; when an input ends its count is replaced by
    what it really scored (a retried input's first attempt is not counted twice), or, for a
    failed input, by its whole length, so that the work left reaches zero."""

    def __init__(self, total_s: float, n_inputs: int, enabled: bool) -> None:
        self.total_s = total_s
        self.n_inputs = n_inputs
        self.partial: dict[str, float] = {}  # inputs in flight: audio seconds seen so far
        self.settled_s = 0.0  # finished or failed inputs
        self.scored_s = 0.0  # audio actually scored (for the real-time factor)
        self.n_done = 0
        self.t0 = time.perf_counter()
        self.bar = None
        if enabled and n_inputs:
            from tqdm import tqdm

            # Counted in seconds of audio, shown in hours.
            self.bar = tqdm(total=total_s, unit="h", unit_scale=1 / 3600, desc="audio", dynamic_ncols=True,
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.2f}/{total:.2f} h [{elapsed}<{remaining}{postfix}]")

    @property
    def done_s(self) -> float:
        return self.settled_s + sum(self.partial.values())

    def rates(self) -> tuple[float, float, float]:
        """(real-time factor, audio seconds left, ETA in seconds)."""
        elapsed = time.perf_counter() - self.t0
        rtf = (self.scored_s + sum(self.partial.values())) / elapsed if elapsed > 0 else 0.0
        remaining_s = max(0.0, self.total_s - self.done_s)
        if remaining_s == 0:
            return rtf, 0.0, 0.0
        return rtf, remaining_s, (remaining_s / rtf if rtf > 0 else float("nan"))

    def _refresh(self) -> None:
        if self.bar is not None:
            rtf, _, _ = self.rates()
            self.bar.set_postfix_str(f"RTF {rtf:.0f}x, {self.n_done}/{self.n_inputs} files", refresh=False)
            self.bar.n = min(self.done_s, self.total_s)
            self.bar.refresh()

    def advance(self, rel: str, audio_s: float) -> None:
        """``audio_s`` more seconds of input ``rel`` were scored."""
        self.partial[rel] = self.partial.get(rel, 0.0) + audio_s
        self._refresh()

    def file_done(self, rel: str, ok: bool, audio_s: float, expected_s: float | None) -> None:
        """Input ``rel`` ended: scored ``audio_s`` seconds, or failed."""
        self.partial.pop(rel, None)
        self.n_done += 1
        self.settled_s += audio_s if ok else max(audio_s, expected_s or 0.0)
        if ok:
            self.scored_s += audio_s
        self._refresh()
        rtf, remaining_s, eta = self.rates()
        eta_text = f"ETA {eta:.0f} s" if math.isfinite(eta) else "ETA unknown until audio is scored"
        message = (f"[{self.n_done}/{self.n_inputs}] {rel}: {audio_s / 3600:.2f} h{'' if ok else ' (failed)'}; "
                   f"{self.done_s / 3600:.2f} h done, {remaining_s / 3600:.2f} h to go, real-time factor {rtf:.0f}x, {eta_text}")
        if self.bar is not None:
            log.debug(message)
        else:
            log.info(message)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_archive(plan: RunPlan, entries: list[ArchiveInput], settings: ArchiveSettings) -> ArchiveReport:
    """Score every input not finished before (failed ones only with ``settings.retry_failed``).

    Args:
        plan: models and reducer (from :func:`streamer.stages.prepare` with no files); its
            execution settings give the layout, threads and timeouts.
        entries: the inputs (:func:`streamer.archive.inputs.expand_inputs`).
        settings: output folder, format, timing, resume and engine.

    Raises:
        ConfigError: another run holds the output folder.
        ArchiveEngineError: the engine could not start or its workers kept dying (finished
            inputs stay journaled, so a rerun resumes).
        ArchiveInterrupted: Ctrl-C (a ``KeyboardInterrupt`` carrying the report so far).
        OutputWriteError: the journal could not be written.
    """
    from streamer.stages import PerchScoresSpec

    perch_only = isinstance(plan.reducer, PerchScoresSpec)
    own = not perch_only and plan.competition is None
    wanted = {"competition": not perch_only and not own, "recipe": own, "perch": perch_only}.get(settings.labels, True)
    if not wanted:
        raise ConfigError(f"labels={settings.labels!r} needs the plan of " + {
            "competition": "streamer.stages.prepare", "recipe": "streamer.stages.prepare_own_classes",
            "perch": "streamer.stages.prepare_perch_only"}[settings.labels])
    t0 = time.perf_counter()
    out_dir = check_out_dir(Path(settings.out_dir))
    report = ArchiveReport(engine=settings.engine, n_inputs=len(entries),
                           licence=plan.recipe.recipe.licence if plan.recipe is not None else "")
    try:
        lock = OutputLock(out_dir)
        try:
            return _run_locked(plan, entries, settings, t0, report)
        finally:
            lock.release()
    except ArchiveInterrupted:
        raise
    except KeyboardInterrupt as exc:  # at any other moment (planning, the students' export): the report so far
        report.seconds = time.perf_counter() - t0
        report.unfinished = sorted(set(map(str, (e.rel for e in entries))) - set(report.done) - set(report.skipped) - set(report.failed))
        raise ArchiveInterrupted(report) from exc


def report_before_scoring(entries: list[ArchiveInput], settings: ArchiveSettings, seconds: float) -> ArchiveReport:
    """The report of a run stopped before it began scoring: the inputs the folder's journal has
    as done (unchanged since) are finished, the others unfinished."""
    journal = Journal(Path(settings.out_dir)) if Path(settings.out_dir).is_dir() else None
    report = ArchiveReport(engine=settings.engine, n_inputs=len(entries), seconds=seconds)
    for entry in entries:
        done = journal is not None and journal.is_done_key(entry.path, FileKey.of(entry.path))
        (report.skipped if done else report.unfinished).append(str(entry.rel))
    return report


@contextlib.contextmanager
def _sigint_held():
    """While the folder's tables are written, Ctrl-C is held back instead of raised (inside
    matplotlib's import it could surface as another error; each file is atomic anyway); the
    flag it yields says whether one came, and the caller then ends the run as interrupted."""
    seen = {"sigint": False}
    if threading.current_thread() is not threading.main_thread():
        yield seen
        return

    def hold(signum, frame):
        seen["sigint"] = True

    previous = signal.signal(signal.SIGINT, hold)
    try:
        yield seen
    finally:
        signal.signal(signal.SIGINT, previous)


def _finish_tables(out_dir: Path, settings: ArchiveSettings, report: ArchiveReport, t0: float, interrupted: BaseException | None) -> ArchiveReport:
    """The folder's summary (and archive table) after the scoring, a Ctrl-C during it included;
    a Ctrl-C before or while they are written ends the run as interrupted once they are."""
    with _sigint_held() as held:
        write_folder_tables(out_dir, settings)
    report.seconds = time.perf_counter() - t0
    if interrupted is not None or held["sigint"]:
        raise ArchiveInterrupted(report) from interrupted
    return report


def _plan_tasks(entries, settings: ArchiveSettings, journal, report, plan: RunPlan | None = None) -> list[ArchiveTask]:
    out_dir, fmt = Path(settings.out_dir), settings.fmt
    min_score, top_k, merge = settings.detections
    metadata = read_metadata_csv(settings.metadata) if settings.metadata else None
    previously_failed = {e.key.path for e in journal.failed()}
    model = plan.model if plan is not None else None
    shape = {} if model is None else {"framing": model.framing, "embedding_dim": model.embedding_dim,
                                      "table_style": settings.table_style}
    tasks = []
    for entry in entries:
        out = output_path(out_dir, entry, fmt)
        emb = embeddings_path(out_dir, str(entry.rel)) if settings.embeddings else None
        if settings.labels == "none":  # the embeddings are the output
            out, emb = emb, None
        key = str(entry.path.resolve())
        if journal.is_done(entry.path, out) and (emb is None or emb.is_file()):
            report.skipped.append(str(entry.rel))
        elif key in previously_failed and not settings.retry_failed and journal.entries[key].key.mtime_ns == entry.path.stat().st_mtime_ns:
            report.failed[str(entry.rel)] = f"failed before ({journal.entries[key].reason}); not retried without --retry-failed"
        else:
            key = FileKey.of(entry.path)  # before scoring: a change while it is scored shows next time
            duration, problem = probe_input(entry.path)
            if problem is not None:  # failed here, before any model loads for it
                journal.record(entry.path, FAILED, str(out.relative_to(out_dir)), problem, key=key)
                report.failed[str(entry.rel)] = problem
                log.warning("%s: %s", entry.path, problem)
                continue
            when = recording_time(entry.path, metadata=metadata, site=settings.site, start_utc=settings.start_utc)
            if model is not None and model.litert is not None:
                # Raven's band as BirdNET-Analyzer draws it: up to 15 kHz, or the input's Nyquist
                shape["high_freq_hz"] = min(15000.0, _native_rate(entry.path) / 2)
            if settings.place_filter is not None:
                got = settings.place_filter.mask(when)
                shape["keep"] = None if got is None else got[0]
            tasks.append(ArchiveTask(entry.path.resolve(), str(entry.rel), out.resolve(), when, fmt, top_k,
                                     duration, key, min_score, merge, settings.summary_min_score,
                                     emb.resolve() if emb is not None else None, settings.embeddings or "float32",
                                     write_scores=settings.labels != "none", **shape))
    return tasks


def _write_species_lists(out_dir: Path, entries, settings: ArchiveSettings) -> None:
    """``_species_lists.csv``: every input's own range-model list (its place and week)."""
    from streamer.archive.species import SPECIES_LISTS_FILE, SPECIES_LISTS_HEADER
    from streamer.files import atomic_write_text

    metadata = read_metadata_csv(settings.metadata) if settings.metadata else None
    lines = [SPECIES_LISTS_HEADER]
    for entry in entries:
        when = recording_time(entry.path, metadata=metadata, site=settings.site, start_utc=settings.start_utc)
        lines += settings.place_filter.rows(str(entry.rel), when)
    atomic_write_text(out_dir / SPECIES_LISTS_FILE, "\n".join(lines) + "\n")


def _native_rate(path: Path) -> float:
    import soundfile as sf

    try:
        return float(sf.info(str(path)).samplerate)
    except Exception as exc:  # probe_input already read the header; a failure here is not expected
        log.debug("%s: no sample rate (%s); the Raven band ends at 15 kHz", path, exc)
        return 30000.0


def _any_output(out_dir: Path) -> bool:
    """Whether the folder holds files other than streamer's own hidden ones."""
    return any(p.is_file() and not p.name.startswith(".") for p in out_dir.rglob("*"))


def _remove_outputs(out_dir: Path, entries: list[ArchiveInput], journal: Journal, settings: ArchiveSettings) -> None:
    """``--overwrite``: delete the outputs of the earlier configuration (those its journal names,
    and those the current inputs would have had under the earlier format) and its journal, before
    anything is scored, so the folder never holds a mix. Other files are left alone."""
    old = run_fingerprint.read(out_dir) or {}
    formats = {settings.fmt, old.get("settings", {}).get("format") or settings.fmt}
    from streamer.archive.summary import SUMMARY_FILES

    doomed = {out_dir / e.output for e in journal.entries.values()}
    doomed |= {output_path(out_dir, entry, fmt) for entry in entries for fmt in formats}
    doomed |= {embeddings_path(out_dir, e.extra["recording"]) for e in journal.entries.values() if (e.extra or {}).get("recording")}
    doomed |= {embeddings_path(out_dir, str(entry.rel)) for entry in entries}
    doomed |= {out_dir / name for name in (*SUMMARY_FILES, ARCHIVE_RAVEN_TABLE)}
    n = 0
    for path in doomed:
        if path.is_file():
            path.unlink()
            n += 1
    shutil.rmtree(checkpoint.parts_dir(out_dir), ignore_errors=True)  # chunks kept under the earlier settings
    journal.remove()
    log.warning("--overwrite: removed %d output file(s) and the journal of the earlier settings", n)


def _run_locked(plan, entries, settings: ArchiveSettings, t0: float, report: ArchiveReport) -> ArchiveReport:
    from streamer.pipeline.layout import plan_layout, sequential_threads
    from streamer.pipeline.layout import with_threads

    out_dir, engine, execution = Path(settings.out_dir), settings.engine, plan.config.execution
    threads = execution.threads
    remove_stale_temporaries(out_dir)
    journal = Journal(out_dir)
    fingerprint = run_fingerprint.compute(plan, settings)
    if run_fingerprint.check(out_dir, fingerprint, has_outputs=bool(journal.entries) or _any_output(out_dir),
                             overwrite=settings.overwrite):
        _remove_outputs(out_dir, entries, journal, settings)
    run_fingerprint.write(out_dir, fingerprint)
    checkpoint.prune(checkpoint.parts_dir(out_dir), journal.is_done_key)
    from streamer.archive.summary import write_class_names

    write_class_names(out_dir, plan.class_labels)
    if settings.embeddings is not None:  # what `streamer search` embeds its queries with
        from streamer.archive.search import embedder_record, write_embedder_record

        write_embedder_record(out_dir, embedder_record(plan, fingerprint.get("sha256", {})))
    if plan.species is not None:
        from streamer.archive.species import SPECIES_FILE
        from streamer.files import atomic_write_text

        atomic_write_text(out_dir / SPECIES_FILE, "".join(line + "\n" for line in plan.species))
    if settings.place_filter is not None:
        _write_species_lists(out_dir, entries, settings)
    tasks = _plan_tasks(entries, settings, journal, report, plan)
    if not tasks:
        checkpoint.tidy(checkpoint.parts_dir(out_dir))
        return _finish_tables(out_dir, settings, report, t0, None)
    work = WorkQueue(tasks, lambda task, result: on_result(task, result), lambda rel, s: bar.advance(rel, s),
                     plan.class_labels, out_dir=out_dir, split=settings.split)
    report.resumed = work.resumed
    kept_s = sum(report.resumed.values())
    total_s = sum(t.audio_s or 0.0 for t in tasks) - kept_s
    log.info("archive: %d input(s) to score (%.2f h of audio), %d already finished", len(tasks), total_s / 3600, len(report.skipped))
    if kept_s:
        log.info("archive: %d input(s) go on after %.2f h of audio earlier runs scored and kept", len(report.resumed), kept_s / 3600)
    bar = _Progress(total_s, len(tasks), execution.progress and sys.stderr.isatty())
    outstanding = {t.rel for t in tasks}

    def on_result(task: ArchiveTask, result: TaskResult) -> None:
        output = str(task.out.relative_to(out_dir.resolve()))
        for note in result.notes:
            log.warning("%s: %s", task.rel, note)
        if result.notes:
            report.notes[task.rel] = list(result.notes)
        if result.ok:
            journal.record(task.path, DONE, output, key=task.key, audio_s=result.audio_s,
                           extra={"counts": result.counts, "effort": result.effort, "recording": task.rel})
            report.done.append(task.rel)
            report.audio_s += result.audio_s - result.kept_s  # what this run scored
            for k, v in result.stage_s.items():
                report.stage_s[k] = report.stage_s.get(k, 0.0) + v
        else:
            reason = without_path(result.reason, task.path)
            journal.record(task.path, FAILED, output, reason, key=task.key)
            report.failed[task.rel] = reason
            log.warning("%s: %s", task.path, reason)
        outstanding.discard(task.rel)  # only once journaled: an input whose record was cut short is unfinished
        report.peak_worker_rss_mb = max(report.peak_worker_rss_mb, result.peak_rss_kb / 1024)
        bar.file_done(task.rel, result.ok, result.audio_s - result.kept_s,
                      None if task.audio_s is None else task.audio_s - result.kept_s)

    with tempfile.TemporaryDirectory(prefix="streamer-archive-") as tmp:
        plan, check = with_backends(plan, Path(tmp), sequential=engine == "sequential")
        report.models = describe_models(plan.model, plan.reducer)
        report.backend_check = check.to_dict() if check is not None else None
        interrupted = None
        try:
            if engine == "sequential":
                n_threads = sequential_threads(threads)
                report.layout = f"1 process x {'library default' if n_threads is None else n_threads} thread(s)"
                log.info("engine: sequential, %s", report.layout)
                run_sequential(work, with_threads(plan.model, n_threads), plan.reducer, plan.class_labels)
            elif engine == "local":
                # The machine's workers decide the units (a long input may become ranges), the
                # units how many workers start.
                most = plan_layout(workers=execution.workers, threads=threads, pin=execution.pin, decoders=1).n_workers
                units = work.plan(most)
                layout = plan_layout(workers=execution.workers, threads=threads, pin=execution.pin, n_files=len(units), decoders=1)
                report.layout = f"{min(layout.n_workers, max(1, len(units)))} worker(s) x {layout.threads or 'default'} thread(s)" + (", pinned" if any(layout.worker_cpus) else "")
                log.info("engine: local, %s", report.layout)
                LocalEngine(plan.model, plan.reducer, plan.class_labels, layout, task_timeout_s=execution.task_timeout_s,
                            startup_timeout_s=execution.startup_timeout_s).run(work)
            else:  # ray (checked on entry)
                ray_engine = RayEngine(plan.model, plan.reducer, plan.class_labels, address=settings.address,
                                       task_timeout_s=execution.task_timeout_s,
                                       workers=execution.workers, threads=threads)
                report.layout = f"address {settings.address or 'local'}"
                ray_engine.run(work)
        except KeyboardInterrupt as exc:
            interrupted = exc  # the summary and the report are still written, then exit 130
        finally:
            bar.close()
            report.ranges = {rel: len(split.spans) for rel, split in work.splits.items()}
            checkpoint.tidy(checkpoint.parts_dir(out_dir))  # the kept chunks of unfinished inputs stay for the next run
            report.unfinished = sorted(outstanding)
            report.seconds = time.perf_counter() - t0
            report.peak_parent_rss_mb = maxrss_kb() / 1024  # not ru_maxrss: see maxrss_kb
    return _finish_tables(out_dir, settings, report, t0, interrupted)


def write_folder_tables(out_dir: Path, settings: ArchiveSettings | None = None) -> list[Path]:
    """The tables of the whole folder, from the folder alone: the archive summary (CSV, PNG) and,
    for ``--archive-table``, one Raven selection table of every finished input. Returns the
    files written."""
    from streamer.archive.summary import write_summary
    from streamer.archive.tables import write_archive_raven

    written = write_summary(out_dir)
    if settings is not None and settings.archive_table:
        journal = Journal(out_dir)
        done = sorted((e for e in journal.entries.values() if e.status == DONE), key=lambda e: e.output)
        tables = [(out_dir / e.output, e.audio_s or 0.0) for e in done if (out_dir / e.output).is_file()]
        path = out_dir / ARCHIVE_RAVEN_TABLE
        n = write_archive_raven(tables, path)
        log.info("archive Raven table: %d selection(s) from %d input(s) in %s", n, len(tables), path)
        written.append(path)
    return written


def folder_status(out_dir: Path, entries: list[ArchiveInput] | None = None) -> str:
    """What an output folder holds, read from its fingerprint and journal (nothing is scored):
    the settings it was scored with, the inputs done and failed with their hours of audio, and,
    given the inputs, how many are still to do."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return f"{out_dir}: no such folder"
    stored = run_fingerprint.read(out_dir)
    journal = Journal(out_dir)
    done = [e for e in journal.entries.values() if e.status == DONE]
    failed = journal.failed()
    hours = sum(e.audio_s or 0.0 for e in done) / 3600
    lines = [f"{out_dir}:"]
    if stored is None:
        lines.append("  run fingerprint: none" + (" (outputs of an earlier streamer or another program)" if journal.entries else ""))
    else:
        settings = ", ".join(f"{k} {json.dumps(v)}" for k, v in run_fingerprint.shown_settings(stored.get("settings", {})).items())
        lines.append(f"  settings: {settings}")
        lines.append("  files (sha256): " + ", ".join(f"{k} {v[:12]}" for k, v in stored.get("sha256", {}).items() if v))
        lines.append(f"  output format version {stored.get('output_format_version')}")
    lines.append(f"  {len(done)} input(s) done ({hours:.2f} h of audio), {len(failed)} failed")
    lines += [f"    failed: {e.output}: {e.reason}" for e in failed]
    kept = checkpoint.kept_by_input(checkpoint.parts_dir(out_dir))
    if kept:
        lines.append(f"  {len(kept)} input(s) partly scored: {sum(kept.values()) / 3600:.2f} h of audio kept, "
                     f"a rerun goes on from there")
    if entries is not None:
        fmt = (stored or {}).get("settings", {}).get("format") or "parquet"
        failed_paths = {f.key.path for f in failed}
        todo = [e for e in entries if not journal.is_done(e.path, output_path(out_dir, e, fmt))
                and str(e.path.resolve()) not in failed_paths]
        lines.append(f"  of the {len(entries)} input(s) given: {len(entries) - len(todo)} finished or failed, {len(todo)} to do")
    return "\n".join(lines)


__all__ = ["ArchiveInterrupted", "ArchiveReport", "JOURNAL_NAME", "run_archive", "output_path", "folder_status"]
