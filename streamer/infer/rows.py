"""The row sink: every row of the submission goes through here, whatever the engine.

:class:`RowSink` owns the submission writer, the reducer (blend, prior, ProtoSSM folds,
post-processing; batched), the checks on model outputs, the one function that writes fallback
rows, the run report's tiers and the progress bar. The sequential engine and the pipeline both
hand it model outputs (or, when the consumers reduce, finished probabilities) and fallbacks;
:meth:`RowSink.finish` writes prior-only rows for every file still without rows and installs
the CSV.

Per-file faults never stop a run:

* non-finite Perch outputs: the file gets prior-only rows;
* non-finite logits of other members (Perch fine): the file is scored without those members
  (tier ``without …``), as the budget's cheaper tiers would;
* a reduction that raises: a failed batch is redone file by file, and a file that still fails
  gets prior-only rows; non-finite probabilities after the reduction, the same.

Each gets one warning and a reason in the summary. Only a failed *write* of the CSV stops the
run (:class:`~streamer.errors.OutputWriteError` from the writer).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections import defaultdict

import numpy as np

from streamer import failpoints
from streamer.infer.budget import TIER_FULL, TIER_PRIOR_ONLY, Budget, tier_name
from streamer.infer.report import RunReport
from streamer.infer.submission import SubmissionWriter
from streamer.metadata import N_WINDOWS_PER_FILE, parse_hour, parse_site
from streamer.prior import PriorTables
from streamer.stages import ModelOutputs, Reducer, SubmissionFrame, all_finite, screen_outputs

log = logging.getLogger(__name__)

#: Most files reduced at once (the ProtoSSM folds' many small operators run once per batch).
REDUCE_BATCH = 8
BUDGET_REASON = "students dropped to meet the budget"


def prior_fallback(prior: PriorTables, stem: str, n_windows: int = N_WINDOWS_PER_FILE) -> np.ndarray:
    """The documented fallback rows of a file that could not be scored: the site/hour prior
    probability (no model, no post-processing), the same for each of its windows. float32
    ``[n_windows, C]``."""
    p = prior.probability(parse_site(stem), parse_hour(stem)).astype(np.float32)
    return np.repeat(p[None, :], n_windows, axis=0)


class RowSink:
    """See the module notes.

    Args:
        frame: the files, classes, prior and ``--out`` (``plan.frame``).
        report: the run report; tiers and reasons are recorded in it.
        budget: the run's budget (the reduction's cost is observed into it).
        reducer: the loaded reducer (``Reducer(plan.reducer)``); ``None`` when only fallback
            rows are written.
        progress: show a progress bar (once :meth:`start_progress` is called).
    """

    def __init__(self, frame: SubmissionFrame, report: RunReport, budget: Budget, reducer: Reducer | None = None,
                 *, progress: bool = False, perch_members: frozenset = frozenset({"perch"})) -> None:
        self.frame = frame
        # Members read from Perch's output: their non-finite logits are Perch's (prior-only).
        self.perch_members = frozenset(perch_members)
        self.member_names = reducer.spec.member_names if reducer is not None else ()
        self.jobs = frame.jobs
        self.report = report
        self.budget = budget
        self.reducer = reducer
        self.progress = progress
        self.writer = SubmissionWriter(frame.config.out, [j.stem for j in frame.jobs], frame.competition.classes)
        self.waiting: list[tuple[int, ModelOutputs, str, str | None]] = []  # modelled, not yet reduced
        self.seconds: dict[str, float] = defaultdict(float)
        self.finished = False
        self.bar = None

    # ------------------------------------------------------------------ queries

    @property
    def broken(self) -> bool:
        return self.writer.broken is not None

    def stem(self, index: int) -> str:
        return self.jobs[index].stem

    # ------------------------------------------------------------------ rows

    def _set(self, index: int, probs: np.ndarray, tier: str, reason: str | None) -> None:
        if self.writer.has(index):
            return  # a duplicate (a retried task finished twice): the first result stands
        # The tier first: once set_file has the block, the rows are written even if a Ctrl-C
        # cuts this call short (the writer writes waiting blocks on its next call).
        self.report.set_tier(self.stem(index), tier, reason)
        self.writer.set_file(index, probs)
        if self.bar is not None:
            self.bar.update(1)

    def fallback(self, index: int, reason: str) -> None:
        """The documented fallback: file ``index``'s rows are the site/hour prior probability."""
        self._set(index, prior_fallback(self.frame.prior, self.stem(index)), TIER_PRIOR_ONLY, reason)

    def _first_file(self) -> None:
        """The models' latency: from the start of the command until the first file's model
        outputs arrived (start-up, loading and the first calls included; the reduction, batched
        over files, comes after)."""
        if "first_file" not in self.report.seconds:
            self.report.seconds["first_file"] = self.budget.clock() - self.budget.start

    def add_modelled(self, index: int, outputs: ModelOutputs, tier: str) -> None:
        """File ``index``'s model outputs, to be reduced (in a batch) by :meth:`reduce_waiting`."""
        self._first_file()
        if self.writer.has(index):
            return
        screened = self._screen(index, outputs, tier)
        if screened is not None:
            self.waiting.append((index, *screened))

    def add_scored(self, index: int, probs: np.ndarray, tier: str) -> None:
        """File ``index``'s probabilities, reduced elsewhere (a consumer)."""
        self._first_file()
        if not all_finite(probs):
            log.warning("%s: non-finite scores; writing prior-only rows", self.stem(index))
            self.fallback(index, "non-finite scores (model outputs or reduction)")
            return
        self._set(index, probs, tier, None if tier == TIER_FULL else BUDGET_REASON)

    def _screen(self, index: int, outputs: ModelOutputs, tier: str):
        """(outputs, tier, reason) to reduce, or None when the file got prior-only rows."""
        stem = self.stem(index)
        kept, bad = screen_outputs(outputs, self.perch_members)
        if kept is None:
            what = f"non-finite logits of {', '.join(bad)}" if bad else "non-finite Perch outputs"
            log.warning("%s: %s; writing prior-only rows", stem, what)
            self.fallback(index, what)
            return None
        if bad:
            log.warning("%s: %s gave non-finite logits; scoring it without %s", stem, " and ".join(bad), "them" if len(bad) > 1 else "it")
            dropped = tuple(k for k in self.member_names if k not in kept.logits)
            return (kept, tier_name(dropped), f"non-finite {' and '.join(bad)} logits: scored without {', '.join(bad)}")
        return outputs, tier, (None if tier == TIER_FULL else BUDGET_REASON)

    def reduce_waiting(self, force: bool = False) -> None:
        """Reduce the files waiting: in batches of :data:`REDUCE_BATCH`, or whatever is there
        when ``force`` (a consumer is idle, or the run is ending)."""
        while self.waiting and (force or len(self.waiting) >= REDUCE_BATCH):
            batch, self.waiting = self.waiting[:REDUCE_BATCH], self.waiting[REDUCE_BATCH:]
            self._reduce([item for item in batch if not self.writer.has(item[0])])

    def _reduce(self, batch: list, retry: bool = True) -> None:
        if not batch:
            return
        t0 = time.perf_counter()
        try:
            failpoints.hit("parent.reduction", self.stem(batch[0][0]) if len(batch) == 1 else None)
            probs = self.reducer.reduce_files([(self.stem(i), outputs) for i, outputs, _, _ in batch])
        except Exception as exc:  # noqa: BLE001 - one file's failure must not cost the others their rows
            if retry:
                log.warning("reducing %d file(s) failed (%s: %s); reducing each alone once more",
                            len(batch), type(exc).__name__, exc)
                for item in batch:
                    self._reduce([item], retry=False)
                return
            index = batch[0][0]
            log.error("%s: the reduction failed (%s: %s); writing prior-only rows", self.stem(index), type(exc).__name__, exc)
            self.fallback(index, f"reduction failed: {type(exc).__name__}: {exc}")
            return
        per_file = (time.perf_counter() - t0) / len(batch)
        for (index, _, tier, reason), p in zip(batch, probs):
            self.budget.costs.observe_reduce(per_file)
            if not all_finite(p):
                log.warning("%s: non-finite scores after the reduction; writing prior-only rows", self.stem(index))
                self.fallback(index, "non-finite scores after the reduction")
                continue
            self._set(index, p, tier, reason)

    # ------------------------------------------------------------------ the end

    def finish(self, reason: str) -> None:
        """Reduce what is waiting, give every file still without rows prior-only rows for
        ``reason``, and install the CSV. Does nothing the second time; on any failure the
        temporary CSV is removed (``--out`` is left as it was) and the error raised."""
        if self.finished:
            return
        try:
            self.reduce_waiting(force=True)  # files already modelled keep their scores
            for index in self.writer.missing():
                self.fallback(index, reason)
            t0 = time.perf_counter()
            self.writer.close()
            self.seconds["write"] += time.perf_counter() - t0
        except BaseException:
            self.abort()
            raise
        self.finished = True
        self.close_progress()

    def abort(self) -> None:
        """Drop the temporary CSV (the destination is left as it was)."""
        self.writer.abort()
        self.close_progress()

    # ------------------------------------------------------------------ progress

    def start_progress(self) -> None:
        """Start the bar once the models are loaded; its rate counts from then, as the summary's
        "windows/s while scoring" does."""
        if self.progress and self.bar is None and self.jobs:
            from tqdm import tqdm

            self.bar = tqdm(total=len(self.jobs), initial=self.writer.n_done, unit="file", desc="streamer",
                            dynamic_ncols=True, leave=True)
            self._bar_start = (time.monotonic(), self._n_modelled())

    def _n_modelled(self) -> int:
        return sum(1 for t in self.report.tiers.values() if t != TIER_PRIOR_ONLY)

    def update_progress(self, n_consumers: int) -> None:
        if self.bar is None:
            return
        t0, modelled0 = self._bar_start
        now = time.monotonic()
        rate = (self._n_modelled() - modelled0) * N_WINDOWS_PER_FILE / (now - t0) if now > t0 else 0.0
        left = len(self.jobs) - self.writer.n_done
        projected = self.budget.projected_seconds(self.budget.tier, left, n_consumers)
        self.bar.set_postfix_str(
            f"{rate:.1f} win/s scoring, RTF {rate * 5:.0f}x, finish ~{(now - self.budget.start + projected) / 60:.1f}"
            f"/{self.budget.budget_s / 60:.1f} min, tier {self.budget.tier}",
            refresh=False,
        )

    def close_progress(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class _LateInterrupt:
    seen = False


@contextlib.contextmanager
def sigint_deferred():
    """While the CSV is being finished, a Ctrl-C is recorded instead of raised (a second Ctrl-C
    must not cut the write short); ``.seen`` tells whether one came."""
    flag = _LateInterrupt()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def record(signum, frame):
        flag.seen = True

    previous = signal.signal(signal.SIGINT, record)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def write_prior_only(frame: SubmissionFrame, report: RunReport, budget: Budget, reason: str) -> None:
    """A complete CSV of prior-only rows (a run interrupted before its models were checked)."""
    RowSink(frame, report, budget).finish(reason)
