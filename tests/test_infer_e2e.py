"""End to end on the stand-in kit: `streamer infer` against an independent reference."""

import shutil

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import soundfile as sf
import torch

from streamer import cli
from streamer.audio import write_audio
from streamer.models.experts import LogMel, ProtoSSM, StudentCNN, StudentCRNN

from conftest import REAL_AUDIO, infer_args


@pytest.fixture(scope="module")
def submission(kit, tmp_path_factory):
    out = tmp_path_factory.mktemp("sub") / "submission.csv"
    assert cli.main(infer_args(kit, out)) == 0
    return pd.read_csv(out)


def _reference_file(kit, path, blend=(0.80, 0.13, 0.07), prior_scale=0.20, students=("cnn", "crnn"), extra=()):
    """The whole computation for one file, written out plainly in one function (the README's "What it computes").

    ``extra``: more blend members, ``(weight, f(windows, embedding, log-mel) -> logits [12, C])``."""
    sample = pd.read_csv(kit.data_dir / "sample_submission.csv")
    classes = list(sample.columns[1:])
    tax = pd.read_csv(kit.data_dir / "taxonomy.csv", dtype=str).set_index("primary_label")
    names = pd.read_csv(kit.perch_labels, dtype=str, keep_default_na=False).iloc[:, 0].tolist()
    where = {}
    for i, n in enumerate(names):
        where.setdefault(n, i)

    audio, sr = sf.read(path, dtype="float32")
    assert sr == 32000 and audio.ndim == 1
    audio = np.pad(audio, (0, max(0, 1920000 - len(audio))))[:1920000]
    windows = audio.reshape(12, 160000)

    sess = ort.InferenceSession(str(kit.perch_onnx), providers=["CPUExecutionProvider"])
    emb, logits = sess.run(["embedding", "label"], {"inputs": windows})
    perch = np.full((12, len(classes)), -8.0, np.float32)
    for j, c in enumerate(classes):
        k = where.get(tax.loc[c, "scientific_name"])
        if k is not None:
            perch[:, j] = logits[:, k]

    mel = LogMel()(torch.from_numpy(windows))
    total, denom = blend[0] * perch, blend[0]
    for kind, weight, net in (("cnn", blend[1], StudentCNN()), ("crnn", blend[2], StudentCRNN())):
        if kind in students:
            net.load_state_dict(torch.load(next(kit.moe_dir.glob(f"student_{kind}*.pt")), weights_only=True))
            with torch.no_grad():
                total = total + weight * net.eval()(mel)[1].numpy()
            denom += weight
    for weight, member in extra:
        total = total + weight * member(windows, emb, mel.numpy())
        denom += weight
    blended = total / denom

    # prior from the labels file, written out directly
    lab = pd.read_csv(kit.data_dir / "train_soundscapes_labels.csv", dtype=str)
    files = sorted({f.rsplit(".", 1)[0] for f in lab["filename"]})
    Y = np.zeros((len(files), 12, len(classes)))
    for row in lab.itertuples():
        h, m, s = map(int, row.end.split(":"))
        w = (h * 3600 + m * 60 + s) // 5 - 1
        for lbl in row.primary_label.split(";"):
            if lbl in classes:
                Y[files.index(row.filename.rsplit(".", 1)[0]), w, classes.index(lbl)] = 1
    site_of = lambda stem: stem.split("_")[3] if stem.startswith("BC") else "S00"  # noqa: E731
    hour_of = lambda stem: int(stem.split("_")[-1][:2]) % 24  # noqa: E731
    stem = path.name[:-4]
    clip = lambda p: np.clip(p, 1e-4, 1 - 1e-4)  # noqa: E731
    p = clip(Y.reshape(-1, len(classes)).mean(0))
    fs = [i for i, f in enumerate(files) if site_of(f) == site_of(stem)]
    if fs:
        n = 12 * len(fs)
        w = n / (n + 8)
        p = (1 - w) * p + w * clip(Y[fs].reshape(-1, len(classes)).mean(0))
    fh = [i for i, f in enumerate(files) if hour_of(f) == hour_of(stem)]
    if fh:
        n = 12 * len(fh)
        w = n / (n + 8)
        p = (1 - w) * p + w * clip(Y[fh].reshape(-1, len(classes)).mean(0))
    p = clip(p)
    teacher = blended + prior_scale * (np.log(p) - np.log(1 - p))

    sites = sorted({site_of(f) for f in files})
    site_id = sites.index(site_of(stem)) + 1 if site_of(stem) in sites else 0
    probs = []
    for fold in sorted(kit.moe_dir.glob("*_fold*.pt")):
        state = torch.load(fold, weights_only=True)
        net = ProtoSSM(n_sites=state["site_emb.weight"].shape[0]).eval()
        net.load_state_dict(state)
        with torch.no_grad():
            out = net(torch.from_numpy(emb[None]), torch.from_numpy(teacher[None].astype(np.float32)),
                      torch.tensor([site_id]), torch.tensor([hour_of(stem)]))
        probs.append(torch.sigmoid(out[0]).numpy())
    x = np.mean(probs, axis=0)
    padded = np.concatenate([x[:1], x, x[-1:]])
    x = 0.8 * x + 0.1 * padded[:-2] + 0.1 * padded[2:]
    x = x * np.sort(x, axis=0)[-2:].mean(0)
    return np.clip(x, 0, 1), classes


def test_rows_columns_and_ranges(kit, submission):
    sample = pd.read_csv(kit.data_dir / "sample_submission.csv")
    assert list(submission.columns) == list(sample.columns)
    tax = pd.read_csv(kit.data_dir / "taxonomy.csv", dtype=str)
    assert list(submission.columns[1:]) != list(tax["primary_label"])  # sample order, not taxonomy order
    files = sorted(p.name[:-4] for p in (kit.data_dir / "test_soundscapes").glob("*.ogg"))
    assert submission["row_id"].tolist() == [f"{f}_{5 * (i + 1)}" for f in files for i in range(12)]
    values = submission.iloc[:, 1:].to_numpy()
    assert np.isfinite(values).all() and values.min() >= 0 and values.max() <= 1
    assert values.std() > 1e-3  # not a constant table


@pytest.mark.parametrize("which", [0, -1])
def test_matches_reference(kit, submission, which):
    path = sorted((kit.data_dir / "test_soundscapes").glob("*.ogg"))[which]
    expected, classes = _reference_file(kit, path)
    got = submission[submission["row_id"].str.startswith(path.name[:-4] + "_")][classes].to_numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_flags_change_the_numbers_as_the_reference_does(kit, tmp_path):
    out = tmp_path / "s.csv"
    args = infer_args(kit, out, "--blend-perch", "0.6", "--blend-cnn", "0.25", "--blend-crnn", "0.15", "--prior-scale", "0.4", "--no-crnn")
    assert cli.main(args) == 0
    got = pd.read_csv(out)
    path = sorted((kit.data_dir / "test_soundscapes").glob("*.ogg"))[-1]
    expected, classes = _reference_file(kit, path, blend=(0.6, 0.25, 0.15), prior_scale=0.4, students=("cnn",))
    np.testing.assert_allclose(got[got["row_id"].str.startswith(path.name[:-4])][classes].to_numpy(), expected, rtol=1e-5, atol=1e-6)


def test_missing_student_file_equals_disabling_it(kit_copy, tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    assert cli.main(infer_args(kit_copy, a, "--no-cnn")) == 0
    next(kit_copy.moe_dir.glob("student_cnn*.pt")).unlink()
    assert cli.main(infer_args(kit_copy, b)) == 0
    pd.testing.assert_frame_equal(pd.read_csv(a), pd.read_csv(b))


def test_no_students_equals_zero_student_weights(kit, tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    assert cli.main(infer_args(kit, a, "--no-cnn", "--no-crnn")) == 0
    assert cli.main(infer_args(kit, b, "--blend-cnn", "0", "--blend-crnn", "0")) == 0
    np.testing.assert_allclose(pd.read_csv(a).iloc[:, 1:], pd.read_csv(b).iloc[:, 1:], rtol=1e-5, atol=1e-6)


def test_dry_run_uses_first_train_files(kit_copy, tmp_path):
    shutil.rmtree(kit_copy.data_dir / "test_soundscapes")
    (kit_copy.data_dir / "test_soundscapes").mkdir()
    out = tmp_path / "dry.csv"
    assert cli.main(infer_args(kit_copy, out, "--dry-run-files", "3")) == 0
    train = sorted(p.name[:-4] for p in (kit_copy.data_dir / "train_soundscapes").glob("*.ogg"))[:3]
    assert pd.read_csv(out)["row_id"].tolist() == [f"{f}_{5 * (i + 1)}" for f in train for i in range(12)]


@pytest.mark.parametrize("engine", ["pipeline", "sequential"])
def test_bad_inputs_get_rows_and_are_counted(kit_copy, tmp_path, capsys, caplog, engine):
    test_dir = kit_copy.data_dir / "test_soundscapes"
    for p in test_dir.glob("*.ogg"):
        p.unlink()
    real = (REAL_AUDIO / "BC2026_Test_0001_S90_20190522_000000.ogg").read_bytes()
    (test_dir / "BC2026_Test_0101_S03_20250101_010000.ogg").write_bytes(b"")  # empty
    (test_dir / "BC2026_Test_0102_S03_20250101_020000.ogg").write_bytes(b"plain text, not audio\n" * 50)
    (test_dir / "BC2026_Test_0103_S08_20250101_030000.ogg").write_bytes(bytes(range(256)) * 100)  # corrupt
    (test_dir / "BC2026_Test_0104_S08_20250101_040000.ogg").write_bytes(real[: len(real) // 4])  # truncated
    shutil.copy(REAL_AUDIO / "birds_10s_32k.ogg", test_dir / "short_birds.ogg")  # short, odd name
    rng = np.random.default_rng(0)
    write_audio(test_dir / "BC2026_Test_0105_S13_20250101_050000.ogg", 0.05 * rng.standard_normal((32000 * 75, 2)), 32000)
    write_audio(test_dir / "BC2026_Test_0106_S13_20250101_060000.ogg", 0.05 * rng.standard_normal(48000 * 60), 48000)
    out = tmp_path / "bad.csv"
    with caplog.at_level("WARNING"):
        assert cli.main(infer_args(kit_copy, out, "--engine", engine)) == 0
    sub = pd.read_csv(out)
    stems = sorted(p.name[:-4] for p in test_dir.glob("*.ogg"))
    assert sub["row_id"].tolist() == [f"{s}_{5 * (i + 1)}" for s in stems for i in range(12)]
    values = sub.iloc[:, 1:].to_numpy()
    assert np.isfinite(values).all() and values.min() >= 0 and values.max() <= 1
    printed = capsys.readouterr().out
    assert "3 file(s) got prior-only fallback rows" in printed
    for stem in ("BC2026_Test_0101", "BC2026_Test_0102", "BC2026_Test_0103"):
        assert stem in printed and stem in caplog.text
        block = sub[sub["row_id"].str.startswith(stem)].iloc[:, 1:].to_numpy()
        assert (block == block[0]).all()  # prior only: the same row for all 12 windows
    # the decodable ones went through the models: windows differ
    for stem in ("BC2026_Test_0104", "BC2026_Test_0105", "BC2026_Test_0106", "short_birds"):
        block = sub[sub["row_id"].str.startswith(stem)].iloc[:, 1:].to_numpy()
        assert not (block == block[0]).all()


def test_fallback_rows_are_the_prior(kit_copy, tmp_path):
    from streamer.metadata import load_competition
    from streamer.prior import fit_prior

    test_dir = kit_copy.data_dir / "test_soundscapes"
    stem = "BC2026_Test_0101_S03_20250101_010000"
    (test_dir / f"{stem}.ogg").write_bytes(b"")
    out = tmp_path / "fb.csv"
    assert cli.main(infer_args(kit_copy, out)) == 0
    comp = load_competition(kit_copy.data_dir)
    expected = fit_prior(comp.labels, comp.label_files).probability("S03", 1)
    sub = pd.read_csv(out)
    got = sub[sub["row_id"] == f"{stem}_5"][list(comp.classes)].to_numpy()[0]
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_bin_shim_runs_without_install(kit, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    # -S: no site-packages, so the installed package cannot be what answers
    shim = Path(__file__).resolve().parents[1] / "bin" / "streamer"
    res = subprocess.run([sys.executable, "-S", str(shim), "--version"], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert res.returncode == 0 and "streamer" in res.stdout
