"""``streamer rescore``: an archive's stored embeddings scored with a ``classify`` head, no
audio decoded (BirdNET 2.4 on a real recording)."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from conftest import JURA_16MIN, birdnet_archive, confident_labels, needs_birdnet
from streamer import cli

LONG = JURA_16MIN

pytestmark = needs_birdnet


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    archive = birdnet_archive(tmp_path_factory, [LONG], "--labels", "none", "--embeddings")
    labels = tmp_path_factory.mktemp("labels") / "labels.csv"
    with open(labels, "w", newline="") as dst:
        writer = csv.writer(dst)
        writer.writerow(["file", "start_s", "end_s", "label"])
        writer.writerows(confident_labels())
    head = labels.parent / "head.onnx"
    assert cli.main(["classify", str(archive), "--labels", str(labels), "--out", str(head)]) == 0
    return archive, head


def test_rescore_equals_the_head_on_the_stored_embeddings_in_numpy(trained, tmp_path, capsys):
    import onnx
    import pyarrow.parquet as pq
    from onnx import numpy_helper

    archive, head = trained
    out = tmp_path / "rescored"
    assert cli.main(["rescore", str(archive), "--head", str(head), "--out", str(out)]) == 0
    assert "1 rescored" in capsys.readouterr().out
    scores = pq.read_table(next(out.rglob("*.ogg.parquet")))
    stored = pq.read_table(next((archive / "_embeddings").rglob("*.parquet")))
    emb = np.asarray(stored.column("embedding").combine_chunks().flatten()).reshape(stored.num_rows, -1).astype(np.float32)
    weights = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(head)).graph.initializer}
    want = 1 / (1 + np.exp(-(emb @ weights["W"] + weights["b"])))
    classes = json.loads({p.key: p.value for p in onnx.load(str(head)).metadata_props}["labels"])
    got = np.stack([scores.column(c).to_numpy() for c in classes], axis=1)
    assert got.shape == want.shape == (320, 2)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert scores.column("start_s").to_pylist()[:3] == [0.0, 3.0, 6.0]
    assert (out / "_summary.csv").is_file()
    # a rerun resumes (nothing to do); other settings are refused
    assert cli.main(["rescore", str(archive), "--head", str(head), "--out", str(out)]) == 0
    assert "0 rescored, 1 already finished" in capsys.readouterr().out
    assert cli.main(["rescore", str(archive), "--head", str(head), "--out", str(out), "--format", "csv"]) == 2


def test_detections_and_raven_tables_from_a_head(trained, tmp_path):
    archive, head = trained
    out = tmp_path / "tables"
    assert cli.main(["rescore", str(archive), "--head", str(head), "--out", str(out), "--format", "raven", "--min-score", "0.5"]) == 0
    table = next(out.rglob("*.selections.txt")).read_text().splitlines()
    assert table[0].startswith("Selection\tView\tChannel") and len(table) > 5
    assert any("Common Chiffchaff" in line for line in table[1:])
    # its events cut from the recordings themselves (the rescored journal names them)
    review = tmp_path / "review"
    assert cli.main(["clips", str(out), "--out", str(review), "--per-class", "1"]) == 0
    assert sorted(p.name.split("_")[0] for p in review.glob("*.flac")) == ["Common-Chiffchaff", "European-Robin"]


def test_a_head_of_another_model_or_no_head_is_refused(trained, tmp_path, capsys):
    archive, head = trained
    other = tmp_path / "other"
    shutil.copytree(archive, other)
    record = json.loads((other / ".streamer-embedder.json").read_text())
    record["sha256"] = "0" * 64
    (other / ".streamer-embedder.json").write_text(json.dumps(record))
    assert cli.main(["rescore", str(other), "--head", str(head), "--out", str(tmp_path / "o")]) == 2
    assert "another model" in capsys.readouterr().err
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    assert cli.main(["rescore", str(archive), "--head", str(bad), "--out", str(tmp_path / "o2")]) == 2
    assert "not an ONNX model" in capsys.readouterr().err


def test_named_classes_of_the_head_only(trained, tmp_path, capsys):
    import pyarrow.parquet as pq

    archive, head = trained
    every, robin = tmp_path / "every", tmp_path / "robin"
    assert cli.main(["rescore", str(archive), "--head", str(head), "--out", str(every)]) == 0
    assert cli.main(["rescore", str(archive), "--head", str(head), "--out", str(robin), "--class", "european robin"]) == 0
    got, want = pq.read_table(next(robin.rglob("*.ogg.parquet"))), pq.read_table(next(every.rglob("*.ogg.parquet")))
    assert "European Robin" in got.column_names and "Common Chiffchaff" not in got.column_names
    assert got.drop(["European Robin"]).column_names == want.drop(["European Robin", "Common Chiffchaff"]).column_names
    # one column of the product instead of two: the same to float32 rounding
    np.testing.assert_allclose(got.column("European Robin").to_numpy(), want.column("European Robin").to_numpy(), rtol=1e-5, atol=1e-7)
    assert (robin / ".classes.tsv").read_text() == "European Robin\tEuropean Robin\tEuropean Robin\n"
    # the named classes are a setting: a rerun into the folder with others is refused
    capsys.readouterr()
    assert cli.main(["rescore", str(archive), "--head", str(head), "--out", str(robin), "--class", "Common Chiffchaff"]) == 2
    assert 'labels: ["European Robin"] → ["Common Chiffchaff"]' in capsys.readouterr().err


def test_an_unknown_class_of_the_head_is_one_line_and_nothing_is_written(trained, tmp_path, capsys):
    archive, head = trained
    for name, why in (("Europan Robin", "(closest: 'European Robin')"), ("Wren", "(nothing close among its 2 classes)")):
        out = tmp_path / name
        assert cli.main(["rescore", str(archive), "--head", str(head), "--out", str(out), "--class", name]) == 2
        assert capsys.readouterr().err.strip() == f"ERROR streamer: --class {name!r}: no such class in {head} {why}"
        assert not out.exists()


def test_the_benchmark_rescores_and_searches_a_small_synthetic_archive(tmp_path):
    assert cli.main(["bench-archive", "--search", "--rescore", "--search-windows", "900", "--repeats", "1",
                     "--out-dir", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "bench-rescore.json").read_text())
    assert [(r["format"], r["windows"], r["audio_hours"]) for r in result["rescore"]] == [("parquet", 900, 1.25), ("raven", 900, 1.25)]
    assert [r["hits"] for r in json.loads((tmp_path / "bench-search.json").read_text())["runs"]] == [10, 100]
    assert "real-time factor" in (tmp_path / "bench-rescore.md").read_text()
