"""State-dict members exported to onnxruntime give the torch numbers; a failed export falls back to torch."""

from dataclasses import replace

import numpy as np
import soundfile as sf

from streamer.config import InferConfig
from streamer.metadata import load_competition
from streamer.models import student_onnx
from streamer.models.graphs import BackendChoice
from streamer.models.members import MemberSet
from streamer.models.perch import ThreadSettings
from streamer.stages import ModelStage, bind_config, prepare

from conftest import REAL_AUDIO


def _windows():
    audio, _ = sf.read(REAL_AUDIO / "BC2026_Test_0003_S90_20190522_120000.ogg", dtype="float32")
    return audio[: 3 * 160000].reshape(3, 160000)


def _students(kit, **settings):
    """The recipe's state-dict members (``cnn``, ``crnn``), bound to the kit's files."""
    config = InferConfig.create(data_dir=kit.data_dir, perch=kit.perch_onnx, moe_dir=kit.moe_dir, **settings)
    bound, _ = bind_config(config, load_competition(kit.data_dir))
    return tuple(m for m in bound.blend if m.kind in ("student-cnn", "student-crnn"))


def _members(members, exported=None, threads=ThreadSettings(None)):
    return MemberSet(members, exported=exported, threads=threads, backend=BackendChoice(), n_classes=234)


def test_onnxruntime_students_equal_torch(kit, tmp_path):
    students = _students(kit)
    cnn, crnn = sorted(kit.moe_dir.glob("student_cnn*.pt"))[0], sorted(kit.moe_dir.glob("student_crnn*.pt"))[0]
    assert [(m.name, m.paths) for m in students] == [("cnn", (cnn,)), ("crnn", (crnn,))]
    paths = {"cnn": student_onnx.export_student("cnn", cnn, n_classes=234, out_path=tmp_path / "cnn.onnx"),
             "crnn": student_onnx.export_student("crnn", crnn, n_classes=234, out_path=tmp_path / "crnn.onnx")}
    assert all(p is not None and p.is_file() for p in paths.values())
    torch_students = _members(students)
    ort_students = _members(students, exported=paths, threads=ThreadSettings(1))
    assert not ort_students.uses_torch and torch_students.uses_torch
    assert {type(r).__name__ for r in ort_students.runners.values()} == {"_GraphMember"}
    assert {type(r).__name__ for r in torch_students.runners.values()} == {"_TorchStudent"}
    windows = _windows()
    no_embedding = np.zeros((3, 0), np.float32)
    a, b = torch_students.run(windows, no_embedding, None), ort_students.run(windows, no_embedding, None)
    assert set(a) == set(b) == {"cnn", "crnn"}
    for name in ("cnn", "crnn"):
        assert a[name].shape == (3, 234)
        np.testing.assert_allclose(b[name], a[name], rtol=1e-5, atol=2e-5)


def test_one_student_only(kit, tmp_path):
    """With the member cnn left out, only crnn is exported, and the run gives crnn alone."""
    plan = prepare(InferConfig.create(data_dir=kit.data_dir, perch=kit.perch_onnx, moe_dir=kit.moe_dir, without=("cnn",)), files=[])
    assert [m.name for m in plan.model.state_dict_members] == ["crnn"]
    exported = student_onnx.cached_exports(plan.model.state_dict_members, n_classes=234, tmp=tmp_path / "t", cache_dir=tmp_path / "cache")
    assert [name for name, _ in exported] == ["crnn"] and exported[0][1].is_file()
    stage = ModelStage(replace(plan.model, exported=exported, threads=ThreadSettings(1)))
    assert not stage.members.uses_torch
    outputs = stage.run(_windows())
    assert set(outputs.logits) == {"perch", "crnn"} and "cnn" not in outputs.logits
    assert outputs.logits["crnn"].shape == (3, 234)


def test_failed_export_falls_back_to_torch(kit, tmp_path, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("exporter unavailable")

    monkeypatch.setattr(student_onnx, "_export", broken)
    cnn = sorted(kit.moe_dir.glob("student_cnn*.pt"))[0]
    with caplog.at_level("WARNING"):
        assert student_onnx.export_student("cnn", cnn, n_classes=234, out_path=tmp_path / "cnn.onnx") is None
    assert "keeping torch" in caplog.text
    # Through the cache: nothing exported, nothing kept, the member stays in torch.
    cache = tmp_path / "cache"
    assert student_onnx.cached_export("cnn", cnn, n_classes=234, tmp=tmp_path / "t", cache_dir=cache) is None
    assert student_onnx.cached_exports(_students(kit), n_classes=234, tmp=tmp_path / "t", cache_dir=cache) == ()
    assert not (cache / student_onnx.CACHE_FOLDER).exists()


def test_export_that_disagrees_is_rejected(kit, tmp_path, monkeypatch, caplog):
    real_export = student_onnx._export

    def skewed(net, path, example):
        import torch

        with torch.no_grad():
            net.logit_head.bias.add_(1.0)  # the exported graph no longer matches the checkpoint
        real_export(net, path, example)
        with torch.no_grad():
            net.logit_head.bias.sub_(1.0)

    monkeypatch.setattr(student_onnx, "_export", skewed)
    cnn = sorted(kit.moe_dir.glob("student_cnn*.pt"))[0]
    with caplog.at_level("WARNING"):
        assert student_onnx.export_student("cnn", cnn, n_classes=234, out_path=tmp_path / "cnn.onnx") is None
    assert "differs from torch" in caplog.text


def test_exports_are_kept_per_weights_and_reused(kit_copy, tmp_path, monkeypatch):
    import shutil

    import torch

    cnn = sorted(kit_copy.moe_dir.glob("student_cnn*.pt"))[0]
    crnn = sorted(kit_copy.moe_dir.glob("student_crnn*.pt"))[0]
    cache = tmp_path / "cache"
    first = dict(student_onnx.cached_exports(_students(kit_copy), n_classes=234, tmp=tmp_path / "t1", cache_dir=cache))
    assert set(first) == {"cnn", "crnn"} and all(p.is_file() and p.is_relative_to(cache) for p in first.values())
    assert first["cnn"].parent != first["crnn"].parent  # one folder per checkpoint

    calls = []
    real_export = student_onnx.export_student
    monkeypatch.setattr(student_onnx, "export_student", lambda *a, **k: calls.append(a[0]) or real_export(*a, **k))
    again = {kind: student_onnx.cached_export(kind, path, n_classes=234, tmp=tmp_path / "t2", cache_dir=cache)
             for kind, path in (("cnn", cnn), ("crnn", crnn))}
    assert again == first and calls == []  # the same weights: reused, not exported again

    state = torch.load(cnn, weights_only=True)
    key = next(k for k, v in state.items() if v.dtype.is_floating_point and v.numel() > 1)
    state[key] = state[key] + 0.01  # other weights, same layout
    torch.save(state, cnn)
    changed = dict(student_onnx.cached_exports(_students(kit_copy), n_classes=234, tmp=tmp_path / "t3", cache_dir=cache))
    assert calls == ["cnn"]  # only the changed checkpoint is exported again
    assert changed["cnn"].parent != first["cnn"].parent and changed["crnn"] == first["crnn"]
    assert len(list((cache / student_onnx.CACHE_FOLDER).iterdir())) == 3
    shutil.rmtree(cache)


def test_a_consumer_with_onnx_students_never_imports_torch(kit, tmp_path):
    """torch costs a consumer over a second of start-up and a few hundred MB: with the students
    in ONNX, the consumer's whole life (set-up, check, a task) runs without it."""
    import pickle
    import subprocess
    import sys

    from streamer.backend import with_student_backend

    plan = with_student_backend(prepare(InferConfig.create(data_dir=kit.data_dir, perch=kit.perch_onnx, moe_dir=kit.moe_dir)),
                                tmp_path / "students", sequential=False)
    assert [name for name, _ in plan.model.exported] == ["cnn", "crnn"]
    (tmp_path / "spec.pkl").write_bytes(pickle.dumps(plan.model))
    script = f"""
import pickle, sys
import numpy as np
from streamer.pipeline.children import Body
from streamer.infer.messages import ModelTask
from streamer.infer.workers import ConsumerBody, SlotBuffer
spec = pickle.loads(open({str(tmp_path / "spec.pkl")!r}, "rb").read())
slots = SlotBuffer({str(tmp_path / "slots.f32")!r}, 1, 12 * 160000)
np.memmap(slots.path, dtype=np.float32, mode="w+", shape=(1, slots.slot_samples))[:] = 0.01
body = ConsumerBody(spec, None, slots)
body.setup("consumer", 0, 0)
sent = []
body.handle(ModelTask(task_id=1, slot=0, stem="BC2026_Test_0001_S03_20250301_000000", n_windows=12, dropped=frozenset()), sent.append)
assert sent[0].outputs.logits["cnn"].shape == (12, 234)
assert sent[0].outputs.logits["crnn"].shape == (12, 234)
print("torch" in sys.modules)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "False"
