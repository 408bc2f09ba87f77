"""An archive output folder holds one configuration: the run fingerprint stops a rerun with other
settings (exit 2, naming them), ``--overwrite`` rescores everything, the same settings resume;
the journal keys an input as it was before scoring; ``--status`` reads the folder."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from streamer import cli
from streamer.archive import fingerprint
from streamer.archive.journal import JOURNAL_NAME, Journal
from streamer.audio import write_audio

from conftest import archive_args



@pytest.fixture
def src(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(11)
    for i, seconds in enumerate((20, 15)):
        write_audio(folder / f"rec{i}.flac", 0.05 * rng.standard_normal(32000 * seconds), 32000)
    return folder


@pytest.fixture
def scored(kit, tmp_path, src):
    out = tmp_path / "out"
    assert cli.main(archive_args(kit, out, src)) == 0
    return out


def _frames(out, fmt="parquet"):
    read = pd.read_parquet if fmt == "parquet" else pd.read_csv
    return {str(p.relative_to(out)): read(p) for p in sorted(out.rglob(f"*.{fmt}"))}


def test_the_same_settings_resume(kit, scored, src, capsys):
    capsys.readouterr()
    assert cli.main(archive_args(kit, scored, src)) == 0
    assert "0 scored, 2 already finished" in capsys.readouterr().out
    doc = json.loads((scored / fingerprint.FINGERPRINT_NAME).read_text())
    assert set(doc["sha256"]) >= {"perch_onnx", "perch_labels", "cnn", "crnn", "protossm.fold1", "protossm.fold4", "taxonomy",
                                "train_labels"}
    assert all(len(v) == 64 for v in doc["sha256"].values())


@pytest.mark.parametrize("extra,named", [
    (("--blend-perch", "0.7"), "members (weights)"),
    (("--prior-scale", "0.4"), 'step 1: prior: {"scale": 0.2} → {"scale": 0.4}'),
    (("--smooth-center", "1", "--smooth-side", "0"), 'step 3: smooth: {"kernel": [0.1, 0.8, 0.1]} → {"kernel": [0.0, 1.0, 0.0]}'),
    (("--set", "topk-multiplier.k=3"), 'step 4: topk-multiplier: {"k": 2} → {"k": 3}'),
    (("--no-crnn",), "file crrn"),
    (("--format", "csv"), "format"),
    (("--top-k", "3"), "top_k"),
    (("--site", "S03"), "site"),
    (("--start-utc", "2025-01-01T05:00:00"), "start_utc"),
    (("--min-score", "0.3"), "min_score"),
    (("--merge-consecutive",), "merge_consecutive"),
])
def test_other_settings_stop_before_scoring(kit, scored, src, caplog, extra, named):
    before = _frames(scored)
    with caplog.at_level("ERROR"):
        assert cli.main(archive_args(kit, scored, src, *extra)) == 2
    named = "file crnn" if named == "file crrn" else named
    assert named in caplog.text and "--overwrite" in caplog.text and "new --out" in caplog.text
    after = _frames(scored)
    assert sorted(after) == sorted(before)
    for name in before:
        pd.testing.assert_frame_equal(after[name], before[name])


def test_a_changed_model_file_stops_before_scoring(kit_copy, tmp_path, src, caplog):
    out = tmp_path / "out"
    assert cli.main(archive_args(kit_copy, out, src)) == 0
    fold = sorted(kit_copy.moe_dir.glob("*_fold2.pt"))[0]
    shutil.copy(sorted(kit_copy.moe_dir.glob("*_fold1.pt"))[0], fold)  # same layout, other weights
    with caplog.at_level("ERROR"):
        assert cli.main(archive_args(kit_copy, out, src)) == 2
    assert "file protossm.fold2: sha256" in caplog.text


def test_overwrite_rescores_everything_under_the_new_settings(kit, scored, src, tmp_path):
    fresh = tmp_path / "fresh"
    assert cli.main(archive_args(kit, fresh, src, "--format", "csv", "--prior-scale", "0.4")) == 0
    assert cli.main(archive_args(kit, scored, src, "--format", "csv", "--prior-scale", "0.4", "--overwrite")) == 0
    assert not list(scored.rglob("*.parquet"))  # no output of the old settings is left
    assert (scored / "_summary.csv").read_bytes() == (fresh / "_summary.csv").read_bytes()
    got, want = _frames(scored, "csv"), _frames(fresh, "csv")
    assert sorted(got) == sorted(want)
    for name in want:
        pd.testing.assert_frame_equal(got[name], want[name])
    assert [e.status for e in Journal(scored).entries.values()] == ["done", "done"]


def test_a_folder_without_fingerprint_is_not_mixed_into(kit, scored, src, caplog):
    (scored / fingerprint.FINGERPRINT_NAME).unlink()  # as an earlier streamer left it
    with caplog.at_level("ERROR"):
        assert cli.main(archive_args(kit, scored, src)) == 2
    assert "no run fingerprint" in caplog.text


def test_an_input_that_changes_while_scored_is_scored_again(kit, tmp_path, src, monkeypatch, capsys):
    from streamer.archive import scorer

    original = scorer.ArchiveScorer.score
    victim = src / "rec0.flac"

    def score_and_touch(self, task, on_chunk=None):
        result = original(self, task, on_chunk)
        if task.path.name == victim.name:
            write_audio(victim, np.zeros(32000 * 20, np.float32), 32000)  # the recorder rewrote it meanwhile
        return result

    monkeypatch.setattr(scorer.ArchiveScorer, "score", score_and_touch)
    out = tmp_path / "out"
    assert cli.main(archive_args(kit, out, src)) == 0
    monkeypatch.setattr(scorer.ArchiveScorer, "score", original)
    capsys.readouterr()
    assert cli.main(archive_args(kit, out, src)) == 0
    assert "1 scored, 1 already finished" in capsys.readouterr().out


def test_status_reads_the_folder(kit, scored, src, capsys):
    capsys.readouterr()
    assert cli.main(["archive", "--status", "--out", str(scored)]) == 0
    text = capsys.readouterr().out
    assert "2 input(s) done (0.01 h of audio), 0 failed" in text and 'step 1: prior {"scale": 0.2}' in text
    # The 234 classes as their count and hash, not 234 [code, common, scientific] triples on one line.
    from streamer.metadata import load_competition

    commons = load_competition(kit.data_dir).class_labels.common
    assert 'classes (count, sha256 of code, common and scientific names) [234, "' in text
    assert not [name for name in commons if f'"{name}"' in text]
    assert max(len(line) for line in text.splitlines()) < 1000
    (src / "rec2.flac").write_bytes((src / "rec0.flac").read_bytes())
    assert cli.main(["archive", str(src), "--status", "--out", str(scored)]) == 0
    assert "of the 3 input(s) given: 2 finished or failed, 1 to do" in capsys.readouterr().out
    assert (scored / JOURNAL_NAME).is_file()


def test_another_precision_is_another_configuration(kit, scored, src, caplog, monkeypatch):
    """bf16 changes the numbers: a folder scored in fp32 is not resumed in bf16 (the refusal
    comes before any model loads, so no bf16 hardware is needed to test it)."""
    from streamer.models import graphs

    monkeypatch.setattr(graphs, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    monkeypatch.setattr(graphs, "import_openvino", lambda: None)
    with caplog.at_level("ERROR"):
        assert cli.main(archive_args(kit, scored, src, "--precision", "bf16")) == 2
    assert 'precision: "fp32" → "bf16"' in caplog.text


def test_a_fingerprint_from_before_the_precision_was_recorded_resumes(kit, scored, src, capsys):
    path = scored / fingerprint.FINGERPRINT_NAME
    doc = json.loads(path.read_text())
    del doc["settings"]["precision"]
    path.write_text(json.dumps(doc))
    capsys.readouterr()
    assert cli.main(archive_args(kit, scored, src)) == 0
    assert "0 scored, 2 already finished" in capsys.readouterr().out
