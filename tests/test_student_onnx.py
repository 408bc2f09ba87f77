"""Students exported to onnxruntime give the torch numbers; a failed export falls back to torch."""

import numpy as np
import soundfile as sf

from streamer.models import student_onnx
from streamer.models.moe import Students
from streamer.models.perch import ThreadSettings

from conftest import REAL_AUDIO


def _windows():
    audio, _ = sf.read(REAL_AUDIO / "BC2026_Test_0003_S90_20190522_120000.ogg", dtype="float32")
    return audio[: 3 * 160000].reshape(3, 160000)


def test_onnxruntime_students_equal_torch(kit, tmp_path):
    cnn, crnn = sorted(kit.moe_dir.glob("student_cnn*.pt"))[0], sorted(kit.moe_dir.glob("student_crnn*.pt"))[0]
    paths = student_onnx.export_students(cnn, crnn, n_classes=234, out_dir=tmp_path)
    assert paths is not None and all(p.is_file() for p in paths)
    torch_students = Students(cnn, crnn, n_classes=234)
    ort_students = Students(cnn, crnn, n_classes=234, onnx_paths=paths, threads=ThreadSettings(1))
    assert ort_students.backend == "onnxruntime" and torch_students.backend == "torch"
    windows = _windows()
    for a, b in zip(torch_students.run(windows), ort_students.run(windows)):
        assert a.shape == (3, 234)
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=2e-5)


def test_one_student_only(kit, tmp_path):
    crnn = sorted(kit.moe_dir.glob("student_crnn*.pt"))[0]
    paths = student_onnx.export_students(None, crnn, n_classes=234, out_dir=tmp_path)
    assert paths[0] is None and paths[1].is_file()
    cnn_out, crnn_out = Students(None, crnn, n_classes=234, onnx_paths=paths, threads=ThreadSettings(1)).run(_windows())
    assert cnn_out is None and crnn_out.shape == (3, 234)


def test_failed_export_falls_back_to_torch(kit, tmp_path, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("exporter unavailable")

    monkeypatch.setattr(student_onnx, "_export", broken)
    cnn = sorted(kit.moe_dir.glob("student_cnn*.pt"))[0]
    with caplog.at_level("WARNING"):
        assert student_onnx.export_students(cnn, None, n_classes=234, out_dir=tmp_path) is None
    assert "keeping torch" in caplog.text


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
        assert student_onnx.export_students(cnn, None, n_classes=234, out_dir=tmp_path) is None
    assert "differs from torch" in caplog.text


def test_exports_are_kept_per_weights_and_reused(kit_copy, tmp_path, monkeypatch):
    import shutil

    import torch

    cnn = sorted(kit_copy.moe_dir.glob("student_cnn*.pt"))[0]
    crnn = sorted(kit_copy.moe_dir.glob("student_crnn*.pt"))[0]
    cache = tmp_path / "cache"
    first = student_onnx.cached_students(cnn, crnn, n_classes=234, tmp=tmp_path / "t1", cache_dir=cache)
    assert first is not None and all(p.is_file() and p.is_relative_to(cache) for p in first)

    calls = []
    real_export = student_onnx.export_students
    monkeypatch.setattr(student_onnx, "export_students", lambda *a, **k: calls.append(1) or real_export(*a, **k))
    again = student_onnx.cached_students(cnn, crnn, n_classes=234, tmp=tmp_path / "t2", cache_dir=cache)
    assert again == first and calls == []  # the same weights: reused, not exported again

    state = torch.load(cnn, weights_only=True)
    key = next(k for k, v in state.items() if v.dtype.is_floating_point and v.numel() > 1)
    state[key] = state[key] + 0.01  # other weights, same layout
    torch.save(state, cnn)
    changed = student_onnx.cached_students(cnn, crnn, n_classes=234, tmp=tmp_path / "t3", cache_dir=cache)
    assert calls == [1] and changed[0].parent != first[0].parent
    assert len(list((cache / student_onnx.CACHE_FOLDER).iterdir())) == 2
    shutil.rmtree(cache)


def test_a_consumer_with_onnx_students_never_imports_torch(kit, tmp_path):
    """torch costs a consumer over a second of start-up and a few hundred MB: with the students
    in ONNX, the consumer's whole life (set-up, check, a task) runs without it."""
    import pickle
    import subprocess
    import sys

    from streamer.config import InferConfig
    from streamer.backend import with_student_backend
    from streamer.stages import prepare

    plan = with_student_backend(prepare(InferConfig.create(data_dir=kit.data_dir, perch=kit.perch_onnx, moe_dir=kit.moe_dir)),
                                tmp_path / "students", sequential=False)
    assert plan.model.students_onnx is not None
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
body.handle(ModelTask(task_id=1, slot=0, stem="BC2026_Test_0001_S03_20250301_000000", n_windows=12, with_students=True), sent.append)
assert sent[0].outputs.cnn_logits.shape == (12, 234)
print("torch" in sys.modules)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "False"
