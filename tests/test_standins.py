"""The stand-in kit has the real artifacts' formats, sensible random content, and is seeded."""

import csv
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import soundfile as sf
import torch

from streamer.models.experts import LogMel, ProtoSSM, StudentCNN, StudentCRNN
from streamer.metadata import file_stem, parse_site
from streamer.standins import (
    CNN_FILENAME,
    CRNN_FILENAME,
    FOLD_PREFIX,
    PERCH_EMBED_DIM,
    PERCH_N_LABELS,
    StandinKit,
    build_perch_onnx,
    make_standins,
    write_moe_bundle,
)

MANIFESTS = Path(__file__).parent / "data" / "artifact_format"
SHIPPED_AUDIO = Path(__file__).resolve().parents[1] / "streamer" / "data" / "audio"
SITE_RE = re.compile(r"^BC\d+_(Train|Test)_\d+_(S\d+)_")
TRAIN_NAME_RE = re.compile(r"^BC2026_Train_\d{4}_S\d{2}_\d{8}_\d{6}\.ogg$")
HMS_RE = re.compile(r"^\d{2}:\d{2}:\d{2}$")
KIT_ARGS = dict(seed=0, n_train_files=8, n_labelled_files=6, n_synthetic_test_files=2)
OUTPUT_SHAPES = {
    "embedding": (PERCH_EMBED_DIM,),
    "spatial_embedding": (16, 4, PERCH_EMBED_DIM),
    "spectrogram": (500, 128),
    "label": (PERCH_N_LABELS,),
}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return make_standins(tmp_path_factory.mktemp("kit"), **KIT_ARGS)


@pytest.fixture(scope="module")
def kit(built):
    return built


@pytest.fixture(scope="module")
def session(kit):
    return ort.InferenceSession(str(kit.perch_onnx), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def real_windows():
    """[4 files, 12 windows, 160000] float32 from the shipped real recordings."""
    files = sorted(SHIPPED_AUDIO.glob("BC2026_Test_000[1-4]_S90_*.ogg"))
    assert len(files) == 4
    return np.stack([sf.read(f, dtype="float32")[0][: 12 * 160000].reshape(12, 160000) for f in files])


def _read_csv(path):
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    return rows[0], rows[1:]


def _taxonomy(kit):
    header, rows = _read_csv(kit.data_dir / "taxonomy.csv")
    return [dict(zip(header, r)) for r in rows]


def _labelled_sites(kit):
    _, rows = _read_csv(kit.data_dir / "train_soundscapes_labels.csv")
    return sorted({SITE_RE.match(r[0]).group(2) for r in rows})


def _hms_to_s(text):
    h, m, s = (int(x) for x in text.split(":"))
    return 3600 * h + 60 * m + s


# ------------------------------------------------------------------------------------ layout


def test_kit_layout(built):
    kit = built
    assert isinstance(kit, StandinKit)
    assert kit.perch_onnx == kit.root / "perch" / "perch_v2.onnx"
    assert kit.perch_labels == kit.root / "perch" / "labels.csv"
    assert kit.moe_dir == kit.root / "moe" and kit.data_dir == kit.root / "competition"
    for path in (kit.perch_onnx, kit.perch_labels, kit.data_dir / "taxonomy.csv",
                 kit.data_dir / "sample_submission.csv", kit.data_dir / "train_soundscapes_labels.csv"):
        assert path.is_file(), path
    assert kit.perch_onnx.stat().st_size < 8e6  # low-rank head: a few MB


# ------------------------------------------------------------------------------------ Perch ONNX


def test_perch_signature_and_shapes(kit, session, real_windows):
    model = onnx.load(str(kit.perch_onnx))
    onnx.checker.check_model(model)
    assert model.ir_version == 9
    assert {(o.domain, o.version) for o in model.opset_import} == {("", 17)}

    (inp,) = session.get_inputs()
    assert inp.name == "inputs" and inp.type == "tensor(float)" and inp.shape == ["batch", 160000]
    outs = session.get_outputs()
    assert [o.name for o in outs] == list(OUTPUT_SHAPES)
    for o in outs:
        assert o.shape == ["batch", *OUTPUT_SHAPES[o.name]] and o.type == "tensor(float)"

    batch = real_windows[[0, 1, 2], [0, 5, 11]]  # three windows from three files
    results = session.run(None, {"inputs": batch})
    for name, value in zip(OUTPUT_SHAPES, results):
        assert value.shape == (3, *OUTPUT_SHAPES[name]) and value.dtype == np.float32
        assert np.isfinite(value).all(), name


def test_perch_outputs_depend_on_audio_and_are_deterministic(session, real_windows):
    x = real_windows.reshape(-1, 160000)
    emb, spatial, spec, logits = session.run(None, {"inputs": x})
    emb2, _, _, logits2 = session.run(None, {"inputs": x})
    np.testing.assert_array_equal(emb, emb2)
    np.testing.assert_array_equal(logits, logits2)
    for out in (emb, spatial, spec, logits):
        flat = out.reshape(out.shape[0], -1)
        # every window differs from every other one
        for i in range(len(flat) - 1):
            assert (np.abs(flat[i + 1 :] - flat[i]).max(axis=-1) > 1e-4).all()
    # within-file ordering information exists: classes move between windows of one file
    assert logits.reshape(4, 12, -1).std(axis=1).mean() > 0.02
    # logits spread like a classifier's: std ~2-3, many sigmoids away from 0 and 1
    assert 2.0 < logits.std() < 3.5
    prob = 1 / (1 + np.exp(-logits))
    assert 0.4 < ((prob > 0.05) & (prob < 0.95)).mean() < 0.95
    # a window batch gives the same numbers as windows run one by one (no cross-talk)
    single = session.run(["label"], {"inputs": x[3:4]})[0]
    np.testing.assert_allclose(single[0], logits[3], rtol=1e-5, atol=1e-4)


def test_perch_silence_is_finite(session):
    outs = session.run(None, {"inputs": np.zeros((2, 160000), np.float32)})
    assert all(np.isfinite(o).all() for o in outs)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(input_rank=4),
        dict(output_names=("emb_out", "spatial_out", "spec_out", "logits_out")),
        dict(output_names=("label", "spectrogram", "spatial_embedding", "embedding")),  # names shuffled
        dict(opset=18, ir_version=10),
    ],
    ids=["rank4", "renamed", "shuffled-names", "opset18"],
)
def test_perch_variants_build_and_run(tmp_path, real_windows, kwargs):
    ref_path = build_perch_onnx(tmp_path / "ref.onnx", seed=3, n_labels=500)
    var_path = build_perch_onnx(tmp_path / "var.onnx", seed=3, n_labels=500, **kwargs)
    assert var_path == tmp_path / "var.onnx"
    onnx.checker.check_model(onnx.load(str(var_path)))
    ref = ort.InferenceSession(str(ref_path), providers=["CPUExecutionProvider"])
    var = ort.InferenceSession(str(var_path), providers=["CPUExecutionProvider"])
    names = list(kwargs.get("output_names", OUTPUT_SHAPES))
    assert [o.name for o in var.get_outputs()] == names
    rank = kwargs.get("input_rank", 2)
    expected_in = ["batch", 160000] if rank == 2 else ["batch", 1, 1, 160000]
    assert var.get_inputs()[0].name == "inputs" and var.get_inputs()[0].shape == expected_in

    x = real_windows[0, :3]
    want = ref.run(None, {"inputs": x})
    got = var.run(None, {"inputs": x.reshape(3, 1, 1, 160000) if rank == 4 else x})
    shapes = [(PERCH_EMBED_DIM,), (16, 4, PERCH_EMBED_DIM), (500, 128), (500,)]
    for w, g, shape in zip(want, got, shapes):
        assert g.shape == (3, *shape)
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
    model = onnx.load(str(var_path))
    assert model.ir_version == kwargs.get("ir_version", 9)
    assert model.opset_import[0].version == kwargs.get("opset", 17)


def test_perch_seed_changes_weights(tmp_path, real_windows):
    cpu = ["CPUExecutionProvider"]
    a = ort.InferenceSession(str(build_perch_onnx(tmp_path / "a.onnx", seed=1, n_labels=100)), providers=cpu)
    b = ort.InferenceSession(str(build_perch_onnx(tmp_path / "b.onnx", seed=2, n_labels=100)), providers=cpu)
    x = real_windows[1, :2]
    assert not np.allclose(a.run(["label"], {"inputs": x})[0], b.run(["label"], {"inputs": x})[0])


@pytest.mark.parametrize(
    "kwargs",
    [dict(output_names=("a", "b", "c")), dict(output_names=("a", "a", "b", "c")),
     dict(output_names=("inputs", "b", "c", "d")), dict(input_rank=3), dict(opset=11)],
)
def test_perch_rejects_bad_arguments(tmp_path, kwargs):
    with pytest.raises(ValueError):
        build_perch_onnx(tmp_path / "bad.onnx", n_labels=10, **kwargs)
    assert not (tmp_path / "bad.onnx").exists()


# ------------------------------------------------------------------------------------ CSVs


def test_perch_label_list(kit):
    header, rows = _read_csv(kit.perch_labels)
    assert header == ["inat2024_fsd50k"]
    names = [r[0] for r in rows]
    assert all(len(r) == 1 for r in rows)
    assert len(names) == PERCH_N_LABELS == len(set(names))
    assert all(re.fullmatch(r"[A-Z][a-z]+ [a-z]+", n) for n in names)  # "Genus species"
    taxonomy = _taxonomy(kit)
    sci = [r["scientific_name"] for r in taxonomy]
    present = set(names)
    matched = [s for s in sci if s in present]
    assert len(matched) == 203
    unmatched = [r for r in taxonomy if r["scientific_name"] not in present]
    assert len(unmatched) == 31
    sonotypes = [r for r in taxonomy if r["primary_label"].startswith("47158son")]
    assert all(r["scientific_name"] not in present for r in sonotypes)
    assert sum(not r["primary_label"].startswith("47158son") for r in unmatched) == 6
    # matched names sit at scattered positions, not in a block
    positions = sorted(names.index(s) for s in matched)
    assert positions[-1] - positions[0] > PERCH_N_LABELS // 2


def test_taxonomy(kit):
    header, _ = _read_csv(kit.data_dir / "taxonomy.csv")
    assert header == ["primary_label", "inat_taxon_id", "scientific_name", "common_name", "class_name"]
    rows = _taxonomy(kit)
    assert len(rows) == 234
    assert Counter(r["class_name"] for r in rows) == {
        "Aves": 160, "Amphibia": 35, "Insecta": 28, "Mammalia": 8, "Reptilia": 3
    }
    labels = [r["primary_label"] for r in rows]
    assert len(set(labels)) == 234
    assert len({r["scientific_name"] for r in rows}) == 234
    sonotypes = [r for r in rows if "son" in r["primary_label"]]
    assert [r["primary_label"] for r in sonotypes] == [f"47158son{k:02d}" for k in range(1, 26)]
    assert all(r["inat_taxon_id"] == "47158" and r["class_name"] == "Insecta" for r in sonotypes)
    assert [r["scientific_name"] for r in sonotypes] == [f"Insect son{k:02d}" for k in range(1, 26)]
    for r in rows:
        if r["class_name"] == "Aves":
            assert re.fullmatch(r"[a-z]{6}", r["primary_label"]), r
        elif r not in sonotypes:
            assert r["primary_label"].isdigit() and r["primary_label"] == r["inat_taxon_id"], r
        assert r["inat_taxon_id"].isdigit() and r["common_name"]
    keys = [(r["class_name"], r["scientific_name"]) for r in rows]
    assert keys == sorted(keys)


def test_sample_submission(kit):
    header, rows = _read_csv(kit.data_dir / "sample_submission.csv")
    tax_labels = [r["primary_label"] for r in _taxonomy(kit)]
    assert header[0] == "row_id"
    assert header[1:] == sorted(tax_labels)
    assert header[1:] != tax_labels  # the output order is not the taxonomy's order
    assert [r[0] for r in rows] == [f"BC2026_Test_0001_S05_20250227_010002_{s}" for s in (5, 10, 15)]
    assert all(abs(float(v) - 1 / 234) < 1e-12 for r in rows for v in r[1:])


def test_train_labels(kit):
    header, rows = _read_csv(kit.data_dir / "train_soundscapes_labels.csv")
    assert header == ["filename", "start", "end", "primary_label"]
    counts = Counter(tuple(r) for r in rows)
    assert set(counts.values()) == {2}  # every row twice, as in the real file
    train_files = sorted(p.name for p in (kit.data_dir / "train_soundscapes").glob("*.ogg"))
    assert sorted({r[0] for r in rows}) == train_files[: KIT_ARGS["n_labelled_files"]]
    tax = {r["primary_label"] for r in _taxonomy(kit)}
    used = set()
    for filename, start, end, labels in counts:
        assert HMS_RE.match(start) and HMS_RE.match(end)
        s, e = _hms_to_s(start), _hms_to_s(end)
        assert e - s == 5 and s % 5 == 0 and 0 <= s <= 55
        parts = labels.split(";")
        assert 1 <= len(parts) <= 3 and len(set(parts)) == len(parts) and set(parts) <= tax
        used.update(parts)
    assert ("00:00:55", "00:01:00") in {(r[1], r[2]) for r in rows}
    n_windows = len(counts)
    assert 0 < n_windows < 12 * KIT_ARGS["n_labelled_files"]  # some windows left unlabelled
    assert 10 <= len(used) <= 60  # most classes have no positive
    assert any(p.startswith("47158son") for p in used)


# ------------------------------------------------------------------------------------ audio


def test_train_soundscapes(kit):
    files = sorted((kit.data_dir / "train_soundscapes").glob("*.ogg"))
    assert len(files) == KIT_ARGS["n_train_files"]
    decoded = []
    for f in files:
        assert TRAIN_NAME_RE.match(f.name), f.name
        info = sf.info(str(f))
        assert (info.samplerate, info.channels, info.format, info.subtype) == (32000, 1, "OGG", "VORBIS")
        x = sf.read(str(f), dtype="float32")[0]
        assert x.shape == (60 * 32000,)
        assert 0.01 < np.abs(x).max() < 1.0
        decoded.append(x)
    assert len({SITE_RE.match(f.name).group(2) for f in files}) >= 3
    assert len({f.name.split("_")[-1][:2] for f in files}) >= 4  # varied hours
    for i in range(len(decoded) - 1):
        assert not np.allclose(decoded[i], decoded[i + 1], atol=1e-3)


def test_test_soundscapes(kit):
    files = sorted((kit.data_dir / "test_soundscapes").glob("*.ogg"))
    assert len(files) == 4 + KIT_ARGS["n_synthetic_test_files"]
    for real in sorted(SHIPPED_AUDIO.glob("BC2026_Test_000[1-4]_S90_*.ogg")):
        assert (kit.data_dir / "test_soundscapes" / real.name).read_bytes() == real.read_bytes()
    synthetic = [f for f in files if "_S90_" not in f.name]
    assert len(synthetic) == KIT_ARGS["n_synthetic_test_files"]
    labelled = set(_labelled_sites(kit))
    for f in synthetic:
        assert parse_site(file_stem(f.name)) in labelled
        info = sf.info(str(f))
        assert (info.samplerate, info.channels, info.frames) == (32000, 1, 60 * 32000)


# ------------------------------------------------------------------------------------ MoE


def _manifest(name):
    return [(e["key"], tuple(e["shape"]), e["dtype"]) for e in json.loads((MANIFESTS / f"manifest_{name}.json").read_text())]


def _layout(state):
    return [(k, tuple(v.shape), str(v.dtype).replace("torch.", "")) for k, v in state.items()]


def test_moe_files_load_strictly_and_run(kit, real_windows):
    n_slots = len(_labelled_sites(kit)) + 1
    pts = sorted(p.name for p in kit.moe_dir.glob("*.pt"))
    assert pts == sorted([f"{FOLD_PREFIX}_fold{k}.pt" for k in range(1, 5)] + [CNN_FILENAME, CRNN_FILENAME])

    emb = torch.randn(1, 12, 1536, generator=torch.Generator().manual_seed(0))
    teacher = torch.randn(1, 12, 234, generator=torch.Generator().manual_seed(1)) * 2
    fold_outputs = []
    for k in range(1, 5):
        state = torch.load(kit.moe_dir / f"{FOLD_PREFIX}_fold{k}.pt", weights_only=True)
        assert isinstance(state, dict) and not isinstance(state, torch.nn.Module)
        assert state["site_emb.weight"].shape == (n_slots, 16)
        if MANIFESTS.is_dir():
            expected = [(k_, (n_slots, 16) if k_ == "site_emb.weight" else s, d) for k_, s, d in _manifest("protossm")]
            assert _layout(state) == expected
        net = ProtoSSM(n_sites=n_slots)
        net.load_state_dict(state, strict=True)
        net.eval()
        assert state["fusion_alpha"].std() > 0.5 and state["class_bias"].std() > 0.2
        with torch.no_grad():
            out = net(emb, teacher, torch.tensor([n_slots - 1]), torch.tensor([23]))
        assert out.shape == (1, 12, 234) and torch.isfinite(out).all()
        fold_outputs.append(out)
    for a, b in zip(fold_outputs, fold_outputs[1:]):
        assert not torch.allclose(a, b)  # each fold has its own weights

    mel = LogMel()(torch.from_numpy(real_windows[2]))
    for filename, factory, manifest in ((CNN_FILENAME, StudentCNN, "student_cnn"), (CRNN_FILENAME, StudentCRNN, "student_crnn")):
        state = torch.load(kit.moe_dir / filename, weights_only=True)
        if MANIFESTS.is_dir():
            assert _layout(state) == _manifest(manifest)
        for key, value in state.items():
            if key.endswith("num_batches_tracked"):
                assert value.dtype == torch.int64 and int(value) > 0
            elif key.endswith("running_var"):
                assert (value > 0).all()
        net = factory()
        net.load_state_dict(state, strict=True)
        net.eval()
        with torch.no_grad():
            e, logits = net(mel)
        assert e.shape == (12, 1536) and logits.shape == (12, 234)
        assert torch.isfinite(e).all() and torch.isfinite(logits).all()
        assert 0.5 < float(logits.std()) < 10.0  # trained-looking spread
        assert float(logits.std(dim=0).mean()) > 0.01  # moves with the audio


def test_site_slots_equal_labelled_sites_plus_one(kit):
    sites = _labelled_sites(kit)
    assert len(sites) >= 2
    state = torch.load(kit.moe_dir / f"{FOLD_PREFIX}_fold1.pt", weights_only=True)
    assert state["site_emb.weight"].shape[0] == len(sites) + 1


def test_write_moe_bundle_options_and_rng_isolation(tmp_path):
    before = torch.get_rng_state()
    paths = write_moe_bundle(tmp_path / "moe", n_site_slots=3, n_classes=7, d_model=16, seed=5,
                             with_cnn=False, with_crnn=False)
    assert torch.equal(before, torch.get_rng_state())  # caller's torch RNG untouched
    assert paths == [tmp_path / "moe" / f"{FOLD_PREFIX}_fold{k}.pt" for k in range(1, 5)]
    assert sorted(p.name for p in (tmp_path / "moe").iterdir()) == sorted(p.name for p in paths)
    state = torch.load(paths[0], weights_only=True)
    assert state["prototypes"].shape == (7, 16) and state["site_emb.weight"].shape == (3, 16)
    again = write_moe_bundle(tmp_path / "moe2", n_site_slots=3, n_classes=7, d_model=16, seed=5,
                             with_cnn=False, with_crnn=False)
    for a, b in zip(paths, again):
        sa, sb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


# ------------------------------------------------------------------------------------ determinism


def _csv_files(kit):
    return [kit.perch_labels, *(kit.data_dir / n for n in ("taxonomy.csv", "sample_submission.csv",
                                                          "train_soundscapes_labels.csv"))]


def test_same_seed_same_kit_and_overwrite(kit, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("kit_again")
    # A smaller kit first, then the fixture's kit on top of it: no stale files may remain.
    make_standins(out_dir, seed=0, n_train_files=9, n_labelled_files=2, n_synthetic_test_files=3)
    other = make_standins(out_dir, **KIT_ARGS)

    for a, b in zip(_csv_files(kit), _csv_files(other)):
        assert a.read_bytes() == b.read_bytes(), a.name

    init_a = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(kit.perch_onnx)).graph.initializer}
    init_b = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(other.perch_onnx)).graph.initializer}
    assert init_a.keys() == init_b.keys()
    assert all(np.array_equal(init_a[k], init_b[k]) for k in init_a)

    names_a = sorted(p.name for p in kit.moe_dir.glob("*.pt"))
    assert names_a == sorted(p.name for p in other.moe_dir.glob("*.pt"))
    for name in names_a:
        sa = torch.load(kit.moe_dir / name, weights_only=True)
        sb = torch.load(other.moe_dir / name, weights_only=True)
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), name

    for sub in ("train_soundscapes", "test_soundscapes"):
        files_a = sorted(p.name for p in (kit.data_dir / sub).glob("*.ogg"))
        assert files_a == sorted(p.name for p in (other.data_dir / sub).glob("*.ogg")), sub
        for name in files_a[-2:]:
            xa = sf.read(str(kit.data_dir / sub / name), dtype="float32")[0]
            xb = sf.read(str(other.data_dir / sub / name), dtype="float32")[0]
            np.testing.assert_array_equal(xa, xb)


def test_other_seed_other_kit(kit, tmp_path):
    other = make_standins(tmp_path / "kit", seed=1, n_train_files=2, n_labelled_files=1, n_synthetic_test_files=0)
    assert (kit.data_dir / "taxonomy.csv").read_bytes() != (other.data_dir / "taxonomy.csv").read_bytes()
    assert kit.perch_labels.read_bytes() != other.perch_labels.read_bytes()
    # one labelled file: one site, so two site slots
    state = torch.load(other.moe_dir / f"{FOLD_PREFIX}_fold1.pt", weights_only=True)
    assert state["site_emb.weight"].shape[0] == 2
    assert len(list((other.data_dir / "test_soundscapes").glob("*.ogg"))) == 4


def test_make_standins_rejects_bad_counts(tmp_path):
    with pytest.raises(ValueError):
        make_standins(tmp_path, n_train_files=2, n_labelled_files=3)
    with pytest.raises(ValueError):
        make_standins(tmp_path, n_train_files=0, n_labelled_files=0)
