"""``streamer check``: infer's checks before any audio, on their own, saying what was found;
a broken folder is one line and exit 2."""

import hashlib

import pytest

from streamer import cli, stages


def check_args(kit, *extra):
    return ["check", "--data-dir", str(kit.data_dir), "--perch", str(kit.perch_onnx.parent), "--moe-dir", str(kit.moe_dir), *extra]


@pytest.fixture
def no_audio(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("check read audio")

    monkeypatch.setattr(stages, "read_span", refuse)


def test_the_stand_in_kit_passes_and_what_was_found_is_printed(kit, capsys, no_audio):
    assert cli.main(check_args(kit)) == 0
    out = capsys.readouterr().out
    digest = hashlib.sha256(kit.perch_onnx.read_bytes()).hexdigest()
    assert f"perch_v2.onnx  {kit.perch_onnx.stat().st_size / 1e6:.1f} MB  sha256 {digest[:12]}" in out
    assert "234 classes" in out and "203 of 234 classes matched" in out
    assert "label output 14795 wide, as the label list has 14795 rows" in out
    assert "4 ProtoSSM folds (d_model 320, 234 classes" in out and "members perch (weight 0.8), cnn (weight 0.13), crnn (weight 0.07); heads protossm" in out
    assert out.count("_fold") == 4 and "student_cnn" in out and "student_crnn" in out
    assert out.strip().splitlines()[-1].startswith("ok: ")


def test_a_missing_fold_is_one_line_and_exit_2(kit_copy, capsys, no_audio):
    fold3 = next(kit_copy.moe_dir.glob("*_fold3.pt"))
    fold3.unlink()
    assert cli.main(check_args(kit_copy)) == 2
    captured = capsys.readouterr()
    assert "ok:" not in captured.out
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and fold3.name in err[0]


def test_a_broken_student_checkpoint_is_found_as_infer_s_parent_would(kit_copy, capsys, no_audio):
    """prepare() only finds the students; loading them is the parent's check in run_infer."""
    cnn = next(kit_copy.moe_dir.glob("student_cnn*.pt"))
    cnn.write_bytes(b"not a checkpoint")
    assert cli.main(check_args(kit_copy)) == 2
    err = capsys.readouterr().err
    assert cnn.name in err


def test_a_label_list_of_another_size_is_refused(kit, tmp_path, capsys, no_audio):
    labels = tmp_path / "labels.csv"
    labels.write_text("inat2024_fsd50k\n" + "".join(f"Species {i}\n" for i in range(10)))
    assert cli.main(check_args(kit, "--perch-labels", str(labels))) == 2
    assert "label list has 10 rows" in capsys.readouterr().err
