"""``streamer score``: a submission against the labelled training soundscapes.

The solution is built from ``train_soundscapes_labels.csv`` exactly as the prior's label matrix
is (:func:`streamer.metadata.read_label_matrix`): row ``{stem}_{5·(w+1)}`` of every labelled
file, windows without a label row all-negative. Submission rows of other files are ignored;
a labelled row missing from the submission is an error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamer.errors import ArtifactError
from streamer.metadata import Competition, row_ids
from streamer.validate.metric import MetricResult, macro_auc

#: Group name of classes whose taxonomy row has no ``class_name``.
UNKNOWN_GROUP = "(no class_name)"
SCORE_COLUMNS = ("level", "label", "class_name", "n_positive", "n_classes_scored", "n_classes_skipped", "auc", "note")


def solution(competition: Competition) -> tuple[list[str], np.ndarray]:
    """Row ids and labels (bool ``[rows, C]``) of every labelled window, files in sorted order."""
    ids = [rid for stem in competition.label_files for rid in row_ids(stem)]
    labels = competition.labels.reshape(-1, competition.n_classes)
    return ids, labels


def read_submission(path: str | Path, classes: tuple[str, ...]) -> tuple[list[str], np.ndarray]:
    """Row ids and float64 scores ``[rows, C]`` (columns in ``classes`` order) of a submission CSV.

    Raises:
        ArtifactError: unreadable, no ``row_id`` column, missing class columns, duplicate row
            ids, or non-numeric / non-finite values; the message names the file.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: submission not found")
    try:
        table = pd.read_csv(path, dtype={"row_id": str}, keep_default_na=False, low_memory=False)
    except Exception as exc:
        raise ArtifactError(f"{path}: cannot read the submission as CSV ({type(exc).__name__}: {exc})") from exc
    if "row_id" not in table.columns:
        raise ArtifactError(f"{path}: no 'row_id' column")
    missing = [c for c in classes if c not in table.columns]
    if missing:
        raise ArtifactError(f"{path}: {len(missing)} class columns of sample_submission.csv are missing, e.g. {missing[:5]}")
    ids = table["row_id"].astype(str).tolist()
    seen: set[str] = set()
    dupes = [rid for rid in ids if rid in seen or seen.add(rid)]
    if dupes:
        raise ArtifactError(f"{path}: {len(dupes)} duplicated row ids, e.g. {dupes[:3]}")
    try:
        values = table[list(classes)].apply(pd.to_numeric, errors="raise").to_numpy(dtype=np.float64)
    except (ValueError, TypeError) as exc:
        raise ArtifactError(f"{path}: non-numeric scores ({exc})") from exc
    if not np.all(np.isfinite(values)):
        bad_rows, bad_cols = np.nonzero(~np.isfinite(values))
        raise ArtifactError(
            f"{path}: {len(bad_rows)} NaN or infinite scores, e.g. row {ids[bad_rows[0]]!r} column {classes[bad_cols[0]]!r}"
        )
    return ids, values


def align(path: Path | str, sub_ids: list[str], sub_values: np.ndarray, wanted: list[str]) -> tuple[np.ndarray, int]:
    """The submission's rows in ``wanted`` order, and how many of its rows were not wanted.

    Raises:
        ArtifactError: wanted rows missing from the submission (names them).
    """
    position = {rid: i for i, rid in enumerate(sub_ids)}
    missing = [rid for rid in wanted if rid not in position]
    if missing:
        files = sorted({rid.rsplit("_", 1)[0] for rid in missing})
        raise ArtifactError(
            f"{path}: {len(missing)} labelled rows are missing from the submission (of {len(files)} files, "
            f"e.g. {', '.join(files[:3])}), first rows: {', '.join(missing[:5])}"
        )
    take = np.fromiter((position[rid] for rid in wanted), dtype=np.int64, count=len(wanted))
    return sub_values[take], len(sub_ids) - len(wanted)


@dataclass(frozen=True)
class ScoreReport:
    """The metric and its breakdowns for one submission.

    Attributes:
        result: per-class AUCs and the macro AUC.
        classes, groups: class codes and their taxonomic class, in sample_submission order.
        n_files: labelled files scored.
        n_ignored_rows: submission rows without labels (not scored).
    """

    result: MetricResult
    classes: tuple[str, ...]
    groups: tuple[str, ...]
    n_files: int
    n_ignored_rows: int = 0

    @property
    def macro_auc(self) -> float:
        return self.result.macro_auc

    def group_names(self) -> list[str]:
        return sorted(set(self.groups))

    def group_auc(self) -> dict[str, float]:
        """Macro AUC over each taxonomic class's scored classes (NaN when none is scored)."""
        groups = np.array(self.groups)
        return {g: self.result.macro_over(groups == g) for g in self.group_names()}

    def rows(self) -> list[dict]:
        """The score table: one ``overall`` row, one per taxonomic class, one per class."""
        r = self.result
        scored = r.scored
        groups = np.array(self.groups)

        def skipped_note(mask: np.ndarray) -> str:
            reasons: dict[str, int] = {}
            for s, m in zip(r.skipped, mask):
                if m and s:
                    reasons[s] = reasons.get(s, 0) + 1
            return "; ".join(f"{n} skipped: {why}" for why, n in sorted(reasons.items()))

        everything = np.ones(len(self.classes), dtype=bool)
        out = [{
            "level": "overall", "label": "macro", "class_name": "",
            "n_positive": int(r.n_positive.sum()), "n_classes_scored": int(scored.sum()),
            "n_classes_skipped": int((~scored).sum()), "auc": r.macro_auc,
            "note": f"{r.n_rows} rows of {self.n_files} files; " + (skipped_note(everything) or "no class skipped"),
        }]
        for g in self.group_names():
            mask = groups == g
            out.append({
                "level": "class_name", "label": g, "class_name": g,
                "n_positive": int(r.n_positive[mask].sum()), "n_classes_scored": int((scored & mask).sum()),
                "n_classes_skipped": int((~scored & mask).sum()), "auc": r.macro_over(mask),
                "note": skipped_note(mask),
            })
        for i, (label, g) in enumerate(zip(self.classes, self.groups)):
            out.append({
                "level": "class", "label": label, "class_name": g,
                "n_positive": int(r.n_positive[i]), "n_classes_scored": int(scored[i]),
                "n_classes_skipped": int(not scored[i]), "auc": r.auc[i],
                "note": f"skipped: {r.skipped[i]}" if r.skipped[i] else "",
            })
        return out

    def write_csv(self, path: str | Path) -> Path:
        """The score table as CSV (empty ``auc`` for skipped classes), written atomically."""
        import pandas as pd

        from streamer.files import atomic_write_text

        table = pd.DataFrame(self.rows(), columns=list(SCORE_COLUMNS))
        return atomic_write_text(path, table.to_csv(index=False, float_format="%.6f"))

    def summary(self) -> str:
        """A short text report: macro AUC, coverage, and the taxonomic breakdown."""
        r = self.result
        scored = r.scored
        lines = [
            f"macro ROC-AUC {_fmt(r.macro_auc)} over {int(scored.sum())} of {len(self.classes)} classes "
            f"({r.n_rows} labelled rows of {self.n_files} files; {self.n_ignored_rows} submission rows without labels ignored)",
        ]
        skipped = [s for s in r.skipped if s]
        if skipped:
            counts = {why: skipped.count(why) for why in sorted(set(skipped))}
            lines.append("skipped classes: " + ", ".join(f"{n} with {why}" for why, n in counts.items()))
        lines.append(f"{'class_name':<18} {'scored':>6} {'skipped':>7} {'positives':>9} {'macro AUC':>9}")
        groups = np.array(self.groups)
        for g, auc in self.group_auc().items():
            mask = groups == g
            lines.append(
                f"{g:<18} {int((scored & mask).sum()):>6} {int((~scored & mask).sum()):>7} "
                f"{int(r.n_positive[mask].sum()):>9} {_fmt(auc):>9}"
            )
        return "\n".join(lines)


def _fmt(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.4f}"


def class_groups(competition: Competition) -> tuple[str, ...]:
    return tuple(g if g else UNKNOWN_GROUP for g in competition.class_groups)


def score_arrays(competition: Competition, scores: np.ndarray, n_ignored_rows: int = 0) -> ScoreReport:
    """Score probabilities already in solution row order (``[rows, C]``, see :func:`solution`)."""
    _, labels = solution(competition)
    return ScoreReport(
        result=macro_auc(labels, scores),
        classes=competition.classes,
        groups=class_groups(competition),
        n_files=len(competition.label_files),
        n_ignored_rows=n_ignored_rows,
    )


def score_submission(path: str | Path, competition: Competition) -> ScoreReport:
    """Read a submission and score its labelled rows.

    Raises:
        ArtifactError: the submission is malformed or lacks labelled rows (named), or there are
            no labelled files at all.
    """
    if not competition.label_files:
        raise ArtifactError(f"{competition.data_dir / 'train_soundscapes_labels.csv'}: no labelled files to score against")
    sub_ids, values = read_submission(path, competition.classes)
    wanted, _ = solution(competition)
    aligned, n_ignored = align(path, sub_ids, values, wanted)
    return score_arrays(competition, aligned, n_ignored)
