"""What a run did: tiers per file and why, time per stage, memory, throughput."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from streamer.infer.budget import TIER_FULL, TIER_PRIOR_ONLY
from streamer.metadata import N_WINDOWS_PER_FILE, WINDOW_S

#: The stages the summary names, in plain words (the report's JSON has every timer).
_WORK = (("decode", "decoding"), ("perch", "Perch"), ("members", "members other than Perch (log-mel + models)"),
         ("protossm", "ProtoSSM"), ("postprocess", "blend, prior and smoothing"), ("write", "writing"))
#: Prefix of each member's own seconds in ``seconds`` (its model and its share of the front-ends
#: it reads; the members' sum is ``members``).
MEMBER_SECONDS = "member:"
#: How many non-full files the summary lists by name.
SUMMARY_MAX_LISTED = 25


@dataclass
class RunReport:
    """The outcome of ``infer``.

    Attributes:
        out: the CSV written.
        n_files: files in the submission.
        source: where the files came from.
        engine: ``sequential`` or ``pipeline`` (with its layout).
        tiers: stem → tier (``full``, ``without A+B…``, ``prior_only``).
        reasons: stem → why a file did not get the full tier.
        seconds: wall seconds per stage, ``setup`` (until the models are loaded), ``scoring``
            (from then until the last file has its rows), ``first_file`` (from the start of the
            command until the models' outputs of the first file arrived) and ``total`` (stage times of
            parallel children are summed over the children, so they can exceed the wall time).
        peak_rss_mb: peak resident memory, ``parent`` and per child role.
        budget_notes: the budget monitor's decisions.
        n_files_in_parts: files the pipeline cut into parts at the end of the run, to keep
            every consumer busy.
        models: what ran each model, ``{"perch": "openvino bf16", ...}``.
        backend_check: the OpenVINO parity check (:class:`streamer.backend.BackendCheck`), when
            one ran.
        interrupted: the run was stopped by Ctrl-C.
        error: a fatal error that ended the run early (the CSV was still written).
    """

    out: Path
    n_files: int
    source: str
    engine: str = "sequential"
    tiers: dict[str, str] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    budget_notes: list[str] = field(default_factory=list)
    n_files_in_parts: int = 0
    models: dict[str, str] = field(default_factory=dict)
    backend_check: dict | None = None
    interrupted: bool = False
    error: str | None = None

    def to_dict(self) -> dict:
        """A JSON-ready form (``--report-json``)."""
        total = self.seconds.get("total", 0.0)
        scoring = self.seconds.get("scoring", 0.0)
        return {
            "out": str(self.out),
            "n_files": self.n_files,
            "n_windows": self.n_windows,
            "n_modelled_windows": self.n_modelled_windows,
            "source": self.source,
            "engine": self.engine,
            "seconds": dict(self.seconds),
            "windows_per_s": self.n_modelled_windows / total if total > 0 else 0.0,
            "steady_windows_per_s": self.n_modelled_windows / scoring if scoring > 0 else 0.0,
            "peak_rss_mb": dict(self.peak_rss_mb),
            "tiers": dict(self.tiers),
            "reasons": dict(self.reasons),
            "budget_notes": list(self.budget_notes),
            "n_files_in_parts": self.n_files_in_parts,
            "models": dict(self.models),
            "backend_check": self.backend_check,
            "interrupted": self.interrupted,
            "error": self.error,
        }

    def set_tier(self, stem: str, tier: str, reason: str | None = None) -> None:
        self.tiers[stem] = tier
        if reason:
            self.reasons[stem] = reason

    @property
    def fallbacks(self) -> dict[str, str]:
        """stem → reason, for the files that got prior-only rows."""
        return {s: self.reasons.get(s, "") for s, t in self.tiers.items() if t == TIER_PRIOR_ONLY}

    @property
    def n_windows(self) -> int:
        return self.n_files * N_WINDOWS_PER_FILE

    @property
    def n_modelled_windows(self) -> int:
        return sum(1 for t in self.tiers.values() if t != TIER_PRIOR_ONLY) * N_WINDOWS_PER_FILE

    def summary(self) -> str:
        """The end-of-run summary in plain words (the full detail is in :meth:`to_dict`)."""
        sec = self.seconds
        total = sec.get("total", 0.0)
        modelled = self.n_modelled_windows
        rate = modelled / total if total > 0 else 0.0
        scoring = sec.get("scoring", 0.0)
        steady = modelled / scoring if scoring > 0 else 0.0
        counts = Counter(self.tiers.values())
        lines = [
            f"wrote {self.out} ({self.n_windows} rows = {self.n_files} files x {N_WINDOWS_PER_FILE} windows; "
            f"files from {self.source}; engine {self.engine})",
            f"time {total:.1f} s in all: {sec.get('setup', 0.0):.1f} s to load the models, {scoring:.1f} s scoring; "
            f"{steady:.1f} windows/s while scoring (real-time factor {steady * WINDOW_S:.0f}x), {rate:.1f} windows/s "
            f"overall, start-up included" + (f"; first file through the models {sec['first_file']:.1f} s after the start"
                                             if "first_file" in sec else ""),
            "work in seconds (summed over processes): " + ", ".join(
                f"{label} {sec[key]:.1f}" for key, label in _WORK if sec.get(key, 0.0) > 0),
        ]
        members = {k[len(MEMBER_SECONDS):]: v for k, v in sec.items() if k.startswith(MEMBER_SECONDS)}
        if members:
            lines.append("members' own seconds: " + ", ".join(f"{name} {s:.1f}" for name, s in members.items()))
        if self.models:
            lines.append("models: " + ", ".join(f"{k.replace('_', '-')} in {v}" for k, v in self.models.items()))
        if self.backend_check:
            check = self.backend_check
            lines.append(f"backend check: {check['candidate']} vs onnxruntime fp32, final probabilities differ by up to "
                         f"{check['max_prob_diff']:.2g} (tolerance {check['tolerance']:.0e}, fp32 only); used {check['used']}")
        if self.peak_rss_mb:
            lines.append("peak memory (RSS): " + ", ".join(f"{k} {v:.0f} MB" for k, v in self.peak_rss_mb.items()))
        lines.append(
            "tiers: "
            + ", ".join(f"{counts.get(t, 0)} {t}" for t in (TIER_FULL, *sorted(set(counts) - {TIER_FULL, TIER_PRIOR_ONLY}), TIER_PRIOR_ONLY))
        )
        lines.extend(f"budget: {note}" for note in self.budget_notes)
        if self.fallbacks:
            lines.append(f"{len(self.fallbacks)} file(s) got prior-only fallback rows:")
        else:
            lines.append("0 files needed the fallback")
        not_full = [(s, self.tiers[s], r) for s, r in sorted(self.reasons.items())]
        for stem, tier, reason in not_full[:SUMMARY_MAX_LISTED]:
            lines.append(f"  {stem}: {tier} ({reason})")
        if len(not_full) > SUMMARY_MAX_LISTED:
            lines.append(f"  ... and {len(not_full) - SUMMARY_MAX_LISTED} more")
        if self.interrupted:
            lines.append("interrupted: unfinished files got prior-only rows")
        if self.error:
            lines.append(f"stopped by an error: {self.error}")
        return "\n".join(lines)
