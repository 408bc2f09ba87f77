"""``streamer classify``: a linear head for your own classes from a few labelled windows, on an
archive's stored BirdNET 2.4 embeddings of a real recording."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import JURA_16MIN, birdnet_archive, confident_labels, needs_birdnet
from streamer import cli

LONG = JURA_16MIN
SPECIES = ("Common Chiffchaff", "European Robin")

pytestmark = needs_birdnet


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    return birdnet_archive(tmp_path_factory, [LONG], "--labels", "none", "--embeddings")


def _labels(tmp_path: Path, rows, name: str = "labels.csv") -> Path:
    path = tmp_path / name
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "start_s", "end_s", "label"])
        writer.writerows(rows)
    return path


def test_a_head_from_a_few_labels_separates_held_out_windows(archive, tmp_path, capsys):
    import onnxruntime as ort
    import pyarrow.parquet as pq

    head = tmp_path / "head.onnx"
    assert cli.main(["classify", str(archive), "--labels", str(_labels(tmp_path, confident_labels(SPECIES))), "--out", str(head)]) == 0
    printed = capsys.readouterr().out
    session = ort.InferenceSession(str(head), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["labels"]) == sorted(SPECIES)
    assert json.loads(meta["embedding_model"])["kind"] == "litert"
    report = {r["class"]: r for r in json.loads(meta["report"])}
    for species in SPECIES:
        assert report[species]["cv_roc_auc"] > 0.9, report[species]  # cross-validated: held-out windows
        assert species in printed
    # the graph is MatMul + Add + Sigmoid: the same numbers as the stored embeddings in numpy
    table = pq.read_table(next((archive / "_embeddings").rglob("*.parquet")))
    emb = np.asarray(table.column("embedding").combine_chunks().flatten()).reshape(table.num_rows, -1).astype(np.float32)
    logits, scores = session.run(["logits", "scores"], {"embedding": emb})
    import onnx
    from onnx import numpy_helper

    weights = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(head)).graph.initializer}
    np.testing.assert_allclose(logits, emb @ weights["W"] + weights["b"], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(scores, 1 / (1 + np.exp(-logits)), rtol=1e-5, atol=1e-6)


def test_mistakes_are_one_line(archive, tmp_path, capsys):
    few = [(LONG.name, "0.0", "3.0", "Rare bird")] + confident_labels(SPECIES)
    cases = [
        (_labels(tmp_path, few, "few.csv"), "too few labelled windows"),
        (_labels(tmp_path, [("elsewhere.wav", "0", "3", "x")] * 5, "elsewhere.csv"), "is not a recording of the archive"),
        (_labels(tmp_path, [(LONG.name, "5000", "5003", "x")] * 5, "outside.csv"), "outside the recording"),
        (_labels(tmp_path, [], "empty.csv"), "no labels in it"),
    ]
    for labels, words in cases:
        assert cli.main(["classify", str(archive), "--labels", str(labels), "--out", str(tmp_path / "h.onnx")]) == 2
        err = capsys.readouterr().err
        assert words in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "h.onnx").exists()


def test_named_classes_are_trained_alone_with_the_others_windows_still_negatives():
    """A named class's head is the one it gets among all classes (synthetic embeddings: exact)."""
    from streamer.archive.classify import Stored, train

    rng = np.random.default_rng(0)
    n = 120
    stored = Stored([f"r{i % 3}" for i in range(n)], np.arange(n) * 3.0, np.arange(n) * 3.0 + 3, rng.standard_normal((n, 6)))
    y = np.zeros((n, 3), dtype=bool)
    for c in range(3):
        y[rng.choice(n, 8, replace=False), c] = True
    every = train(stored, ["a", "b", "c"], y, folds=2)
    named = train(stored, ["a", "b", "c"], y, only=("b",), folds=2)
    np.testing.assert_allclose(named[0], every[0][:, [1]], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(named[1], every[1][[1]], rtol=1e-6, atol=1e-7)
    assert named[2] == [every[2][1]]


def test_a_named_class_in_any_case_leaves_a_rare_one_out(archive, tmp_path, capsys):
    import onnx

    few = _labels(tmp_path, [(LONG.name, "0.0", "3.0", "Rare bird")] + confident_labels(SPECIES), "few.csv")
    head = tmp_path / "head.onnx"
    assert cli.main(["classify", str(archive), "--labels", str(few), "--class", "common chiffchaff", "--folds", "2",
                     "--out", str(head)]) == 0
    assert "wrote" in capsys.readouterr().out
    meta = {p.key: p.value for p in onnx.load(str(head)).metadata_props}
    assert json.loads(meta["labels"]) == ["Common Chiffchaff"]
    assert [r["class"] for r in json.loads(meta["report"])] == ["Common Chiffchaff"]
    # named, the rare class is still refused as before
    assert cli.main(["classify", str(archive), "--labels", str(few), "--class", "Rare bird", "--out", str(tmp_path / "h.onnx")]) == 2
    assert capsys.readouterr().err.strip() == "ERROR streamer: too few labelled windows (at least 4 a class): Rare bird (1)"
    assert not (tmp_path / "h.onnx").exists()


def test_an_unknown_class_is_one_line_before_the_embeddings_are_read(archive, tmp_path, capsys, monkeypatch):
    from streamer.archive import classify

    def boom(folder):
        raise AssertionError("the embeddings were read before the classes were checked")

    monkeypatch.setattr(classify, "load_stored", boom)
    labels = _labels(tmp_path, confident_labels(SPECIES))
    for name, why in (("Chifchaf", "(closest: 'Common Chiffchaff')"), ("Wren", "(nothing close among its 2 classes)")):
        assert cli.main(["classify", str(archive), "--labels", str(labels), "--class", "European Robin", "--class", name,
                         "--out", str(tmp_path / "h.onnx")]) == 2
        assert capsys.readouterr().err.strip() == f"ERROR streamer: --class {name!r}: no such class in {labels} {why}"
        assert not (tmp_path / "h.onnx").exists()
