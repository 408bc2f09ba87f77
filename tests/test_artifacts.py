"""Artifact resolution and loading: every missing or malformed artifact stops the run before any
audio is read, with a message naming the file."""

import shutil

import numpy as np
import pytest
import torch

from streamer import cli, stages
from streamer.artifacts import resolve_perch
from streamer.config import InferConfig
from streamer.errors import ArtifactError
from streamer.metadata import load_competition
from streamer.models.perch import PerchModel
from streamer.recipes import RecipeError

from conftest import infer_args


@pytest.fixture
def no_audio(monkeypatch):
    """Fail the test if any audio is decoded."""

    def boom(*a, **k):
        raise AssertionError("audio was read before the artifacts were checked")

    monkeypatch.setattr(stages, "read_span", boom)


def _run(kit, tmp_path, *extra):
    return cli.main(infer_args(kit, tmp_path / "sub.csv", *extra))


def test_perch_folder_resolution(kit, tmp_path):
    for name in ("perch_v2_ir9.onnx", "perch_v2_no_dft.onnx"):
        folder = tmp_path / name.replace(".", "_")
        folder.mkdir()
        shutil.copy(kit.perch_onnx, folder / name)
        (folder / "assets").mkdir()
        shutil.copy(kit.perch_labels, folder / "assets" / "labels.csv")
        art = resolve_perch(folder)
        assert art.onnx_path.name == name and art.labels_path.name == "labels.csv"
        assert len(art.labels) == 14795
    # perch_v2_labels.csv beside the file is also found
    folder = tmp_path / "alt"
    folder.mkdir()
    shutil.copy(kit.perch_onnx, folder / "perch_v2.onnx")
    shutil.copy(kit.perch_labels, folder / "perch_v2_labels.csv")
    assert resolve_perch(folder).labels_path.name == "perch_v2_labels.csv"


def test_label_header_variants(kit, tmp_path):
    names = resolve_perch(kit.perch_onnx).labels
    for header in ("scientific_name", "whatever"):
        folder = tmp_path / header
        folder.mkdir()
        shutil.copy(kit.perch_onnx, folder / "perch_v2.onnx")
        (folder / "labels.csv").write_text(header + "\n" + "\n".join(names) + "\n")
        assert resolve_perch(folder).labels == names


def test_class_mapping_and_fill():
    """Perch's labels onto the submission's columns by exact scientific name, the first of a
    repeated name, the fill where a name is absent (the perch-logits member of a recipe)."""
    from streamer.recipes.bind import BoundMember, apply_map, map_labels
    from streamer.recipes.schema import Member

    member = Member(name="perch", kind="perch-logits", input="perch.label", match="scientific_name", unmapped=-8.0)
    mapping, proxies = map_labels(("A a", "B b", "A a"), ("c1", "c2", "c3"), ("B b", "X x", "A a"), member)
    assert mapping.tolist() == [1, -1, 0] and proxies == ()
    logits = np.array([[1.0, 2.0, 3.0]], np.float32)
    bound = BoundMember("perch", "perch-logits", "perch.label", (), mapping, -8.0)
    np.testing.assert_array_equal(apply_map(logits, bound), [[2.0, -8.0, 1.0]])


@pytest.mark.parametrize(
    "breakage,needle",
    [
        ("perch_missing", "Perch ONNX"),
        ("labels_missing", "label list"),
        ("onnx_garbage", "perch_v2.onnx"),
        ("fold_missing", "_fold3.pt"),
        ("fold_garbage", "_fold2.pt"),
        ("fold_wrong_layout", "_fold1.pt"),
        ("student_wrong_layout", "student_cnn"),
        ("labels_wrong_count", "label list has"),
        ("taxonomy_missing", "taxonomy.csv"),
    ],
)
def test_broken_artifacts_stop_before_audio(kit_copy, tmp_path, no_audio, caplog, breakage, needle):
    kit = kit_copy
    perch_dir = tmp_path / "perch"
    shutil.copytree(kit.perch_onnx.parent, perch_dir)
    perch = perch_dir / "perch_v2.onnx"
    folds = sorted(kit.moe_dir.glob("*_fold*.pt"))
    if breakage == "perch_missing":
        perch.unlink()
    elif breakage == "labels_missing":
        (perch_dir / "labels.csv").unlink()
    elif breakage == "onnx_garbage":
        perch.write_bytes(b"not an onnx model")
    elif breakage == "fold_missing":
        folds[2].unlink()
    elif breakage == "fold_garbage":
        folds[1].write_bytes(b"garbage")
    elif breakage == "fold_wrong_layout":
        state = torch.load(folds[0], weights_only=True)
        del state["merge.0.bias"]
        torch.save(state, folds[0])
    elif breakage == "student_wrong_layout":
        cnn = next(kit.moe_dir.glob("student_cnn*.pt"))
        state = torch.load(cnn, weights_only=True)
        state["extra.weight"] = torch.zeros(3)
        torch.save(state, cnn)
    elif breakage == "labels_wrong_count":
        lines = (perch_dir / "labels.csv").read_text().splitlines()
        (perch_dir / "labels.csv").write_text("\n".join(lines[:-5]) + "\n")
    elif breakage == "taxonomy_missing":
        (kit.data_dir / "taxonomy.csv").unlink()
    with caplog.at_level("ERROR"):
        code = cli.main(infer_args(kit, tmp_path / "sub.csv", "--perch", str(perch)))
    assert code == 2
    assert needle in caplog.text
    assert not (tmp_path / "sub.csv").exists()


def _bind(kit, **settings):
    """The run's recipe bound to the kit's files, as ``infer`` binds it (no audio read)."""
    config = InferConfig.create(data_dir=kit.data_dir, perch=kit.perch_onnx, moe_dir=kit.moe_dir, **settings)
    bound, _ = stages.bind_config(config, load_competition(kit.data_dir))
    return bound


def test_fold_prefix_discovery_and_override(kit_copy):
    folds = _bind(kit_copy).member("protossm").paths
    assert [p.name for p in folds] == [f"moe_p0.60_c0.25_r0.15_post_p0.45_fold{k}.pt" for k in range(1, 5)]
    assert all(p.parent == kit_copy.moe_dir and p.is_file() for p in folds)
    for p in folds:
        shutil.copy(p, p.with_name(p.name.replace("moe_p0.60", "other")))
    with pytest.raises(RecipeError, match=r"several fold prefixes .*choose one with --weights-prefix"):
        _bind(kit_copy)
    chosen = _bind(kit_copy, weights_prefix="other_c0.25_r0.15_post_p0.45").member("protossm").paths
    assert [p.name for p in chosen] == [f"other_c0.25_r0.15_post_p0.45_fold{k}.pt" for k in range(1, 5)]
    with pytest.raises(RecipeError, match="nope_fold1.pt"):
        _bind(kit_copy, weights_prefix="nope")


def test_missing_students_allowed(kit_copy, caplog):
    from streamer.ensemble import blend

    next(kit_copy.moe_dir.glob("student_crnn*.pt")).unlink()
    with caplog.at_level("WARNING"):
        bound = _bind(kit_copy)
    assert "the blend renormalises without it" in caplog.text
    assert [m.name for m in bound.blend] == ["perch", "cnn"] and bound.member("cnn").paths[0].is_file()
    assert [name for name, _ in bound.dropped] == ["crnn"]
    # The blend renormalises over the members left: (0.80 perch + 0.13 cnn) / 0.93.
    plan = stages.prepare(InferConfig.create(data_dir=kit_copy.data_dir, perch=kit_copy.perch_onnx, moe_dir=kit_copy.moe_dir), files=[])
    assert plan.reducer.member_names == ("perch", "cnn") and plan.model.member_names == ("perch", "cnn")
    rng = np.random.default_rng(0)
    perch, cnn = (rng.normal(size=(12, 234)).astype(np.float32) for _ in range(2))
    np.testing.assert_allclose(blend({"perch": perch, "cnn": cnn}, plan.reducer.members),
                               (0.80 * perch + 0.13 * cnn) / 0.93, rtol=1e-5, atol=1e-6)


def test_site_slots_read_from_checkpoint(kit_copy):
    from streamer.models.moe import ProtoSSMFolds
    from streamer.standins import write_moe_bundle

    write_moe_bundle(kit_copy.moe_dir, n_site_slots=11, with_cnn=False, with_crnn=False)
    folds = ProtoSSMFolds(_bind(kit_copy).member("protossm").paths, n_classes=234)
    assert folds.n_site_slots == 11


def test_proto_d_model_checked(kit):
    with pytest.raises(ArtifactError, match="d_model=320"):
        stages.Reducer(stages.prepare(InferConfig.create(data_dir=kit.data_dir, perch=kit.perch_onnx, moe_dir=kit.moe_dir, proto_d_model=256)).reducer)


def test_perch_requests_only_needed_outputs(kit):
    model = PerchModel(kit.perch_onnx)
    asked = []
    real_run = model.graph.session.run

    def spy(names, feeds):
        asked.append(list(names))
        return real_run(names, feeds)

    model.graph.session.run = spy
    emb, logits = model.run(np.zeros((2, 160000), np.float32))
    assert asked == [["embedding", "label"]]
    assert emb.shape == (2, 1536) and logits.shape == (2, 14795)


def test_rank4_input_and_positional_outputs(kit, tmp_path):
    from streamer.standins import build_perch_onnx

    rng = np.random.default_rng(0)
    windows = (0.1 * rng.standard_normal((3, 160000))).astype(np.float32)
    ref_emb, ref_logits = PerchModel(build_perch_onnx(tmp_path / "ref.onnx")).run(windows)
    rank4 = build_perch_onnx(tmp_path / "rank4.onnx", input_rank=4)
    renamed = build_perch_onnx(tmp_path / "renamed.onnx", output_names=("out0", "out1", "out2", "out3"))
    for path in (rank4, renamed):
        emb, logits = PerchModel(path).run(windows)
        np.testing.assert_allclose(emb, ref_emb, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(logits, ref_logits, rtol=1e-5, atol=1e-5)
    assert PerchModel(renamed).label_name == "out3"


def test_fixed_batch_export_is_fed_in_chunks(tmp_path):
    import onnx

    from streamer.standins import build_perch_onnx

    ref_path = build_perch_onnx(tmp_path / "ref.onnx")
    model = onnx.load(str(ref_path))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1  # batch fixed to 1
    for out in model.graph.output:
        out.type.tensor_type.shape.dim[0].dim_value = 1
    fixed = tmp_path / "fixed.onnx"
    onnx.save(model, str(fixed))
    windows = (0.1 * np.random.default_rng(3).standard_normal((3, 160000))).astype(np.float32)
    ref_emb, ref_logits = PerchModel(ref_path).run(windows)
    emb, logits = PerchModel(fixed).run(windows)
    np.testing.assert_allclose(emb, ref_emb, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-5, atol=1e-5)


def test_declared_outputs_equal_onnx_s_own_reading(kit, tmp_path):
    import onnx

    from streamer.onnx_outputs import OnnxFormatError, declared_outputs

    model = onnx.load(str(kit.perch_onnx))
    expected = [(o.name, tuple(d.dim_value if d.HasField("dim_value") else d.dim_param for d in o.type.tensor_type.shape.dim))
                for o in model.graph.output]
    assert [(o.name, o.shape) for o in declared_outputs(kit.perch_onnx)] == expected
    truncated = tmp_path / "cut.onnx"
    truncated.write_bytes(kit.perch_onnx.read_bytes()[:5000])
    for bad in (truncated, tmp_path / "empty.onnx"):
        bad.touch()
        with pytest.raises(OnnxFormatError):
            declared_outputs(bad)


def test_models_are_called_in_chunks_of_windows_per_call(kit):
    """Memory: the engine calls Perch and the students on a few windows at a time (onnxruntime's
    arenas grow to the largest call and never shrink); the baseline's library defaults keep
    whole batches, as the original script ran."""
    from streamer.models.graphs import BackendChoice, ThreadSettings, windows_per_call
    from streamer.models.members import MemberSet
    from streamer.models.student_onnx import cached_exports

    windows = np.full((12, 160000), 1e-3, np.float32)
    for threads, want in ((ThreadSettings(1), [3, 3, 3, 3]), (ThreadSettings(2), [6, 6]), (ThreadSettings(None), [12])):
        model = PerchModel(kit.perch_onnx, threads)
        sizes = []
        real_run = model.graph.session.run
        model.graph.session.run = lambda names, feeds: sizes.append(len(feeds["inputs"])) or real_run(names, feeds)
        emb, logits = model.run(windows)
        assert sizes == want and emb.shape == (12, 1536)
    assert windows_per_call(ThreadSettings(4)) == 12

    import tempfile
    from pathlib import Path

    students = tuple(m for m in _bind(kit).blend if m.kind in ("student-cnn", "student-crnn"))
    assert [m.name for m in students] == ["cnn", "crnn"]
    with tempfile.TemporaryDirectory() as tmp:
        exported = dict(cached_exports(students, n_classes=234, tmp=Path(tmp) / "t", cache_dir=Path(tmp) / "cache"))
        assert set(exported) == {"cnn", "crnn"}
        whole = MemberSet(students, exported=exported, threads=ThreadSettings(None), backend=BackendChoice(), n_classes=234)
        chunked = MemberSet(students, exported=exported, threads=ThreadSettings(1), backend=BackendChoice(), n_classes=234)
        assert not whole.uses_torch and not chunked.uses_torch
        seen = []
        real = chunked.runners["cnn"].graph.session.run
        chunked.runners["cnn"].graph.session.run = lambda names, feeds: seen.append(len(feeds["mel"])) or real(names, feeds)
        rng = np.random.default_rng(0)
        audio = (0.05 * rng.standard_normal((12, 160000))).astype(np.float32)
        no_embedding = np.zeros((12, 0), np.float32)
        a, b = whole.run(audio, no_embedding, None), chunked.run(audio, no_embedding, None)
        assert seen == [3, 3, 3, 3]
        assert set(a) == set(b) == {"cnn", "crnn"}
        for name in ("cnn", "crnn"):
            assert a[name].shape == (12, 234)
            np.testing.assert_allclose(b[name], a[name], rtol=1e-5, atol=1e-5)
