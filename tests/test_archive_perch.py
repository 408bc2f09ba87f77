"""`streamer archive --labels perch|none`: Perch alone with its own labels (top-k or detections,
probabilities or logits, a species list), or the embeddings alone; no competition folder or
MoE bundle needed."""

import numpy as np
import pandas as pd
import pytest

from streamer import cli
from streamer.archive.output import EMBEDDINGS_FOLDER
from streamer.artifacts import read_perch_labels, resolve_perch
from streamer.audio import write_audio
from streamer.postprocess import sigmoid

from conftest import perch_by_chunk


def _args(kit, out, src, *extra):
    return ["archive", str(src), "--out", str(out), "--perch", str(kit.perch_onnx), "--labels", "perch",
            "--engine", "sequential", "--threads", "1", *extra]


@pytest.fixture
def src(tmp_path):
    path = tmp_path / "rec.flac"
    rng = np.random.default_rng(5)
    t = np.arange(32000 * 25) / 32000
    write_audio(path, 0.05 * np.sin(2 * np.pi * 1200 * t) + 0.02 * rng.standard_normal(t.size), 32000)
    return path


def _labels(kit):
    return resolve_perch(kit.perch_onnx).labels


def test_top_k_of_perchs_own_labels_without_competition_folder(kit, src, tmp_path):
    out = tmp_path / "out"
    assert cli.main(_args(kit, out, src, "--top-k", "4")) == 0  # no --data-dir, no --moe-dir
    table = pd.read_parquet(out / "rec.flac.parquet")
    assert list(table.columns) == ["file", "window", "start_s", "end_s", "rank", "class", "score"]
    probs = sigmoid(perch_by_chunk(kit, src)[1].astype(np.float64))
    labels = _labels(kit)
    assert len(table) == 5 * 4  # 25 s: 5 windows, 4 classes each
    for w, rows in table.groupby("window"):
        want = np.argsort(-probs[w], kind="stable")[:4]
        assert list(rows["class"]) == [labels[i] for i in want]
        np.testing.assert_allclose(rows["score"], probs[w, want], rtol=1e-5, atol=1e-6)


def test_logits_detections_and_a_species_list(kit, src, tmp_path):
    labels = _labels(kit)
    logits = perch_by_chunk(kit, src)[1]
    keep = [labels[i] for i in np.argsort(-logits[0])[[0, 5, 40]]]
    species = tmp_path / "species.txt"
    species.write_text("# my region\n" + "\n".join(keep) + "\n\n")
    out = tmp_path / "out"
    threshold = float(np.sort(logits[:, [labels.index(k) for k in keep]].ravel())[3])
    assert cli.main(_args(kit, out, src, "--scores", "logits", "--species-list", str(species),
                          "--min-score", str(threshold), "--format", "csv")) == 0
    table = pd.read_csv(out / "rec.flac.csv")
    assert set(table["scientific_name"]) <= set(keep) and len(table) > 0
    for _, row in table.iterrows():  # every detection is a logit at or above the threshold
        w = int(round(row["start_s"] / 5.0))
        assert row["score"] >= threshold - 1e-5
        assert row["score"] == pytest.approx(logits[w, labels.index(row["scientific_name"])], abs=1e-4)
    expected = sum(int(logits[w, labels.index(k)] >= threshold) for w in range(logits.shape[0]) for k in keep)
    assert len(table) == expected


def test_unknown_species_are_an_error_naming_the_closest(kit, src, tmp_path, capsys):
    labels = _labels(kit)
    typo = labels[7][:-1] + ("x" if labels[7][-1] != "x" else "y")
    species = tmp_path / "species.txt"
    species.write_text(f"{labels[3]}\n{typo}\n")
    assert cli.main(_args(kit, tmp_path / "out", src, "--species-list", str(species))) == 2
    err = capsys.readouterr().err
    assert repr(typo) in err and repr(labels[7]) in err and "closest" in err


def test_embeddings_alone_with_labels_none(kit, src, tmp_path, capsys):
    out = tmp_path / "out"
    args = _args(kit, out, src)
    args[args.index("perch", args.index("--labels"))] = "none"
    assert cli.main(args) == 2
    assert "add --embeddings" in capsys.readouterr().err
    assert cli.main(args + ["--embeddings"]) == 0
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and not p.name.startswith("."))
    assert f"{EMBEDDINGS_FOLDER}/rec.flac.parquet" in files
    assert not [f for f in files if f.endswith(".flac.parquet") and not f.startswith(EMBEDDINGS_FOLDER)]
    emb = pd.read_parquet(out / EMBEDDINGS_FOLDER / "rec.flac.parquet")
    assert len(emb) == 5
    assert cli.main(args + ["--embeddings"]) == 0  # resumes: nothing to do
    assert "0 scored, 1 already finished" in capsys.readouterr().out


def test_perch_mode_on_the_local_engine_and_as_its_own_configuration(kit, src, tmp_path, caplog):
    seq, local = tmp_path / "seq", tmp_path / "local"
    assert cli.main(_args(kit, seq, src, "--format", "raven")) == 0
    args = _args(kit, local, src, "--format", "raven")
    args[args.index("sequential")] = "local"
    assert cli.main(args) == 0
    assert (seq / "rec.flac.selections.txt").read_text() == (local / "rec.flac.selections.txt").read_text()
    # The same folder with the competition's labels is another configuration.
    competition = ["archive", str(src), "--out", str(seq), "--perch", str(kit.perch_onnx), "--data-dir", str(kit.data_dir),
                   "--moe-dir", str(kit.moe_dir), "--engine", "sequential", "--threads", "1", "--format", "raven"]
    with caplog.at_level("ERROR"):
        assert cli.main(competition) == 2
    assert 'labels: "perch" → "competition"' in caplog.text


def test_competition_mode_still_needs_its_folders(kit, src, tmp_path, capsys):
    assert cli.main(["archive", str(src), "--out", str(tmp_path / "o"), "--perch", str(kit.perch_onnx)]) == 2
    assert "--labels perch, which needs only --perch" in capsys.readouterr().err
    assert read_perch_labels  # the label list reader the mode uses


def test_bench_archive_measures_perch_alone_and_one_input_beside_many(kit, tmp_path):
    from streamer.bench.archive import archive_markdown, run_archive_bench
    from streamer.bench.runner import BenchModels

    models = BenchModels(perch=kit.perch_onnx, moe_dir=kit.moe_dir, data_dir=kit.data_dir, description="small stand-ins")
    source = tmp_path / "src.flac"
    write_audio(source, 0.02 * np.random.default_rng(0).standard_normal(32000 * 60), 32000)
    result = run_archive_bench(models, source=source, lengths_min=(4,), engines=("local",), repeats=1,
                               labels=("competition", "perch"), shapes=("single", "unsplit", "multi"), work_dir=tmp_path)
    rows = {(r["labels"], r["shape"]): r for r in result["rows"]}
    assert set(rows) == {("competition", "single"), ("competition", "unsplit"), ("competition", "multi"), ("perch", "single")}
    assert all(r["rtf"] > 0 for r in rows.values())
    single = rows[("competition", "single")]
    # On two or more CPUs the one 4-min input is split for the workers; --no-split keeps it whole.
    assert rows[("competition", "unsplit")]["ranges"] == 0 and rows[("competition", "multi")]["ranges"] == 0
    assert single["ranges"] == (0 if single["layout"].startswith("1 worker") else 2)
    text = archive_markdown(result)
    ratio = rows[("perch", "single")]["rtf"] / single["rtf"]
    assert f"Perch alone vs the ensemble (local, 4 min): {ratio:.2f}x" in text
    for other in ("unsplit", "multi"):
        assert f"{single['rtf'] / rows[('competition', other)]['rtf']:.2f}x the real-time factor" in text


def test_the_python_api_scores_with_perch_alone(kit, src, tmp_path):
    """The archive's Python API, as docs/archive.md shows it."""
    from streamer.archive.inputs import expand_inputs
    from streamer.archive.run import run_archive
    from streamer.config import ArchiveSettings, InferConfig
    from streamer.stages import prepare_perch_only

    config = InferConfig.create(perch=kit.perch_onnx, threads=1, engine="sequential", progress=False)
    settings = ArchiveSettings(out_dir=tmp_path / "out", labels="perch", top_k=2, embeddings="float16", engine="sequential")
    report = run_archive(prepare_perch_only(config), expand_inputs([src]), settings)
    assert report.done == ["rec.flac"] and not report.failed
    assert len(pd.read_parquet(tmp_path / "out" / "rec.flac.parquet")) == 5 * 2
    assert len(pd.read_parquet(tmp_path / "out" / EMBEDDINGS_FOLDER / "rec.flac.parquet")) == 5
