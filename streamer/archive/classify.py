"""``streamer classify``: a classifier for your own classes from a few labelled windows.

Agile modelling on an archive's stored embeddings: label some events (a Raven selection table
with any annotation column, or a CSV ``file, start_s, end_s, label``), train a multi-label
linear head on the embeddings of the windows they cover, and save it as an ONNX graph
(``MatMul`` + ``Add`` -> ``logits``, ``Sigmoid`` -> ``scores``) with its labels and the
embedding model's identity in the metadata, so a recipe can name it as an ``onnx`` member on
the embedding and ``streamer`` can score an archive with it.

Training: one logistic regression per class (torch's L-BFGS in float64, full batch, so the same
data give the same head), on standardised embeddings (the scaling folded into the graph's
weights). A class's positives are its labelled windows (weight 1), its negatives the windows
labelled with other classes (weight 1) and every unlabelled window (weight ``weak``, 0.05 by
default: most of an archive is not the class, but some of it may be). Each class is
cross-validated in ``folds`` folds of whole minutes of a recording (seeded): ROC-AUC, and
precision and recall at ``threshold``, over its labelled windows and the unlabelled ones as
negatives. Named classes
(``--class``) are trained alone, the windows of the label file's other classes still labelled
negatives: each named class's head is the one it gets among all, and a class too rare to train
can be left out without editing the label file.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamer.errors import ConfigError

MIN_POSITIVES = 4
#: Cross-validation folds are made of whole blocks of this many seconds of a recording.
FOLD_BLOCK_S = 60.0
HEAD_INPUT, HEAD_LOGITS, HEAD_SCORES = "embedding", "logits", "scores"


@dataclass
class Stored:
    """Every stored window of an archive: its recording, times and embedding."""

    files: list[str]
    starts: np.ndarray
    ends: np.ndarray
    vectors: np.ndarray  # float32 [N, D]


def load_stored(folder: Path) -> Stored:
    from streamer.archive.search import _batches, embedding_files

    files, starts, ends, parts = [], [], [], []
    for labels, s, e, v in _batches(embedding_files(folder)):
        files += labels
        starts.append(s)
        ends.append(e)
        parts.append(v)
    return Stored(files, np.concatenate(starts), np.concatenate(ends), np.concatenate(parts))


def read_labels(path: Path, label_column: str | None = None) -> list[tuple[str, float, float, str]]:
    """``(file, start_s, end_s, label)`` rows from a CSV or a Raven selection table."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the labels ({exc})") from exc
    raven = "Begin Time (s)" in text.splitlines()[0] if text else False
    rows = list(csv.DictReader(text.splitlines(), delimiter="\t" if raven else ","))
    if not rows:
        raise ConfigError(f"{path}: no labels in it")
    out = []
    for n, row in enumerate(rows, start=2):
        try:
            if raven:
                file = row.get("Begin Path") or row.get("Begin File")
                column = label_column or next((c for c in ("Annotation", "Species", "Label", "Class", "Common Name") if c in row), None)
                if file is None or column is None or column not in row:
                    raise ConfigError(f"{path}: a Raven table needs a Begin File (or Begin Path) column and a label column "
                                      f"(--label-column; it has {', '.join(row)})")
                out.append((file, float(row["Begin Time (s)"]), float(row["End Time (s)"]), row[column].strip()))
            else:
                column = label_column or "label"
                missing = {"file", "start_s", "end_s", column} - set(row)
                if missing:
                    raise ConfigError(f"{path}: missing columns {sorted(missing)} (expected file,start_s,end_s,{column})")
                out.append((row["file"], float(row["start_s"]), float(row["end_s"]), row[column].strip()))
        except ValueError as exc:
            raise ConfigError(f"{path}, line {n}: {exc}") from None
    return [r for r in out if r[3]]


def label_classes(labels: list[tuple[str, float, float, str]]) -> list[str]:
    """The label file's classes, sorted: the head's columns, whatever the file's order."""
    return sorted({r[3] for r in labels})


def named_labels(labels: list[tuple[str, float, float, str]], names: tuple[str, ...], source: Path) -> tuple[str, ...]:
    """The label file's classes that ``names`` name (``--class``, any case); checked before the
    embeddings are read, so a typo costs nothing."""
    from streamer.archive.classnames import named_classes

    classes = label_classes(labels)
    return tuple(classes[i] for i in named_classes(names, [(c,) for c in classes], str(source)))


def label_matrix(stored: Stored, labels: list[tuple[str, float, float, str]], source: Path) -> tuple[list[str], np.ndarray]:
    """The classes and a bool ``[N, C]`` of the windows each label covers (at least half the
    window, or the whole label when it is shorter)."""
    classes = label_classes(labels)
    index = {c: i for i, c in enumerate(classes)}
    by_file: dict[str, np.ndarray] = {}
    names = np.asarray(stored.files)
    for f in set(stored.files):
        by_file[f] = np.flatnonzero(names == f)
    base = {Path(f).name: f for f in by_file}
    y = np.zeros((len(stored.files), len(classes)), dtype=bool)
    for file, start, end, label in labels:
        name = file if file in by_file else base.get(Path(file).name)
        if name is None:
            raise ConfigError(f"{source}: {file!r} is not a recording of the archive (it has {len(by_file)}; "
                              f"e.g. {sorted(by_file)[0]!r})")
        rows = by_file[name]
        s, e = stored.starts[rows], stored.ends[rows]
        overlap = np.minimum(e, end) - np.maximum(s, start)
        need = np.minimum((e - s) / 2, end - start)
        hit = rows[overlap >= need - 1e-9]
        if hit.size == 0:
            raise ConfigError(f"{source}: the label {label!r} at {start:g}-{end:g} s of {file!r} is outside the recording")
        y[hit, index[label]] = True
    return classes, y


def _fit(x: np.ndarray, target: np.ndarray, weight: np.ndarray, l2: float) -> tuple[np.ndarray, float]:
    import torch

    torch.manual_seed(0)
    xt = torch.from_numpy(x.astype(np.float64))
    yt = torch.from_numpy(target.astype(np.float64))
    wt = torch.from_numpy(weight.astype(np.float64))
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe", tolerance_grad=1e-9)

    def loss():
        opt.zero_grad()
        z = xt @ w + b
        value = (wt * torch.nn.functional.binary_cross_entropy_with_logits(z, yt, reduction="none")).sum() / wt.sum()
        value = value + l2 * (w * w).sum()
        value.backward()
        return value

    opt.step(loss)
    return w.detach().numpy(), float(b.detach().numpy()[0])


def _auc(scores: np.ndarray, truth: np.ndarray) -> float:
    pos, neg = scores[truth], scores[~truth]
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(order.size)
    ranks[order] = np.arange(1, order.size + 1)
    return float((ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2) / (pos.size * neg.size))


def _folds(stored: Stored, folds: int, seed: int) -> np.ndarray:
    """Each window's fold: whole blocks of :data:`FOLD_BLOCK_S` of a recording go to one fold,
    the blocks shuffled (seeded). Folds of single windows would put a call's neighbouring
    windows, nearly the same embedding, on both sides of the split and report the head better
    than it is on calls it has not heard."""
    _, recording = np.unique(np.asarray(stored.files, dtype=object).astype(str), return_inverse=True)
    block = np.floor(np.asarray(stored.starts, dtype=np.float64) / FOLD_BLOCK_S).astype(np.int64)
    _, group = np.unique(np.stack([recording.ravel(), block]), axis=1, return_inverse=True)
    group = group.ravel()
    order = np.random.default_rng(seed).permutation(int(group.max()) + 1 if group.size else 0)
    return order[group] % folds


def train(stored: Stored, classes: list[str], y: np.ndarray, *, only: tuple[str, ...] | None = None, weak: float = 0.05,
          folds: int = 5, threshold: float = 0.5, l2: float = 1e-3, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """The head's weights ``[D, C]`` and biases ``[C]`` on the raw embeddings (standardisation
    folded in), and a report per class: of every class, or of the classes ``only`` names
    (:func:`named_labels`)."""
    keep = range(len(classes)) if only is None else [classes.index(c) for c in only]
    counts = y.sum(axis=0)
    few = [f"{classes[c]} ({int(counts[c])})" for c in keep if counts[c] < MIN_POSITIVES]
    if few:
        raise ConfigError(f"too few labelled windows (at least {MIN_POSITIVES} a class): {', '.join(few)}")
    mean = stored.vectors.mean(axis=0)
    std = stored.vectors.std(axis=0) + 1e-6
    x = (stored.vectors - mean) / std
    labelled = y.any(axis=1)  # by any class, named or not
    fold = _folds(stored, folds, seed)
    weights, biases, report = [], [], []
    for c in keep:
        name = classes[c]
        target = y[:, c]
        weight = np.where(labelled, 1.0, weak)
        scores = np.empty(x.shape[0])
        for k in range(folds):
            train_rows = fold != k
            w, b = _fit(x[train_rows], target[train_rows], weight[train_rows], l2)
            scores[~train_rows] = 1 / (1 + np.exp(-(x[~train_rows] @ w + b)))
        predicted = scores >= threshold
        tp = int((predicted & target).sum())
        report.append({"class": name, "positives": int(target.sum()), "labelled_negatives": int((labelled & ~target).sum()),
                       "unlabelled": int((~labelled).sum()), "cv_roc_auc": _auc(scores, target),
                       "precision": tp / max(1, int(predicted.sum())), "recall": tp / max(1, int(target.sum()))})
        w, b = _fit(x, target, weight, l2)
        weights.append(w / std)
        biases.append(b - float((w * mean / std).sum()))
    return np.stack(weights, axis=1).astype(np.float32), np.asarray(biases, dtype=np.float32), report


def write_head(path: Path, weights: np.ndarray, biases: np.ndarray, classes: list[str], record: dict, report: list[dict]) -> Path:
    """The head as ONNX: ``embedding [N, D]`` -> ``logits [N, C]`` -> ``scores`` (sigmoid); the
    labels, the embedding model's identity and the report in the metadata."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from streamer.files import install, temporary_sibling

    d, c = weights.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", [HEAD_INPUT, "W"], ["z"]), helper.make_node("Add", ["z", "b"], [HEAD_LOGITS]),
         helper.make_node("Sigmoid", [HEAD_LOGITS], [HEAD_SCORES])],
        "streamer_linear_head",
        [helper.make_tensor_value_info(HEAD_INPUT, TensorProto.FLOAT, ["N", d])],
        [helper.make_tensor_value_info(HEAD_LOGITS, TensorProto.FLOAT, ["N", c]),
         helper.make_tensor_value_info(HEAD_SCORES, TensorProto.FLOAT, ["N", c])],
        [numpy_helper.from_array(weights, "W"), numpy_helper.from_array(biases, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="streamer classify")
    model.ir_version = 8
    for key, value in (("labels", json.dumps(classes)), ("embedding_model", json.dumps(record)), ("report", json.dumps(report))):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    fd, tmp = temporary_sibling(path)
    import os

    with os.fdopen(fd, "wb") as handle:
        handle.write(model.SerializeToString())
    return install(tmp, path)
