"""--backend and --precision: the rules (refusals before any model loads), OpenVINO against
onnxruntime on the graphs, the start-up parity check and its fallback, and the report naming
what ran each model."""

import json

import numpy as np
import pandas as pd
import pytest

from streamer import backend, cli, stages
from streamer.config import ExecutionSettings
from streamer.errors import ConfigError, DependencyError
from streamer.install import install_hint
from streamer.models import graphs
from streamer.audio import write_audio
from streamer.models.graphs import BackendChoice, ThreadSettings

from conftest import infer_args

needs_openvino = pytest.mark.skipif(not graphs.openvino_available(), reason="OpenVINO is not installed (the openvino extra)")
needs_bf16 = pytest.mark.skipif(graphs.hardware_bf16() is None, reason="this CPU has neither AVX512-BF16 nor AMX")


@pytest.fixture
def no_models_load(monkeypatch):
    """Any attempt to load a graph fails the test: a refusal must come before."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the refusal")

    monkeypatch.setattr(graphs, "load_graph", refuse)
    monkeypatch.setattr(stages.Reducer, "__init__", refuse)


def test_bf16_refused_without_hardware_bf16(kit, tmp_path, monkeypatch, capsys, no_models_load):
    monkeypatch.setattr(graphs, "cpu_flags", lambda: frozenset({"avx2", "avx512f", "fma"}))
    out = tmp_path / "sub.csv"
    assert cli.main(infer_args(kit, out, "--precision", "bf16")) == 2
    assert "AVX512-BF16 or AMX" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("flag", ["avx512_bf16", "amx_bf16"])
def test_bf16_accepted_with_either_cpu_feature(monkeypatch, flag):
    monkeypatch.setattr(graphs, "cpu_flags", lambda: frozenset({"avx512f", flag}))
    monkeypatch.setattr(graphs, "import_openvino", lambda: None)
    assert graphs.resolve_backend("auto", "bf16") == BackendChoice("openvino", "bf16")
    assert graphs.resolve_backend("openvino", "bf16") == BackendChoice("openvino", "bf16")


def test_bf16_with_onnxruntime_refused(kit, tmp_path, monkeypatch, capsys, no_models_load):
    monkeypatch.setattr(graphs, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    assert cli.main(infer_args(kit, tmp_path / "sub.csv", "--precision", "bf16", "--backend", "onnxruntime")) == 2
    assert "onnxruntime has no bf16 kernels" in capsys.readouterr().err


def test_openvino_missing_is_a_clear_error(kit, tmp_path, monkeypatch, capsys, no_models_load):
    def missing():
        raise DependencyError(f"OpenVINO is not installed: {install_hint('openvino')} (or run with --backend onnxruntime)")

    monkeypatch.setattr(graphs, "import_openvino", missing)
    assert cli.main(infer_args(kit, tmp_path / "sub.csv", "--backend", "openvino")) == 2
    assert install_hint("openvino") in capsys.readouterr().err


@pytest.mark.parametrize("command", ["infer", "archive"])
def test_bf16_without_openvino_gives_one_hint_that_works(kit, tmp_path, monkeypatch, capsys, no_models_load, command):
    """bf16 runs only in OpenVINO: the hint is to install it (an editable install from this
    checkout) or to drop bf16, never --backend onnxruntime, which refuses bf16."""
    import sys

    from streamer.install import install_hint

    monkeypatch.setattr(graphs, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino fails, as when it is not installed
    if command == "infer":
        argv = infer_args(kit, tmp_path / "sub.csv", "--precision", "bf16")
    else:
        argv = ["archive", str(tmp_path), "--out", str(tmp_path / "out"), "--data-dir", str(kit.data_dir), "--perch",
                str(kit.perch_onnx), "--moe-dir", str(kit.moe_dir), "--precision", "bf16"]
        write_audio(tmp_path / "rec.flac", np.zeros(32000, np.float32), 32000)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "--precision bf16 runs in OpenVINO, which is not installed" in err
    assert install_hint("openvino") in err and "pip install -e " in err and "drop --precision bf16" in err
    assert "--backend onnxruntime" not in err


def test_auto_follows_the_profile_and_defaults_to_onnxruntime(monkeypatch):
    monkeypatch.setattr(graphs, "openvino_available", lambda: True)
    monkeypatch.setattr(graphs, "import_openvino", lambda: None)
    assert graphs.resolve_backend("auto", "fp32") == BackendChoice("onnxruntime", "fp32")
    assert graphs.resolve_backend("auto", "fp32", profile_backend="openvino") == BackendChoice("openvino", "fp32")
    monkeypatch.setattr(graphs, "openvino_available", lambda: False)
    assert graphs.resolve_backend("auto", "fp32", profile_backend="openvino") == BackendChoice("onnxruntime", "fp32")
    with pytest.raises(ConfigError, match="--precision"):
        ExecutionSettings(precision="fp16")


def test_tuned_bf16_applies_only_when_precision_is_not_given(monkeypatch):
    from streamer import profile

    monkeypatch.setattr(profile, "profile_backend", lambda execution: ("openvino", "bf16"))
    monkeypatch.setattr(graphs, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    monkeypatch.setattr(graphs, "import_openvino", lambda: None)
    assert stages.choose_backend(ExecutionSettings()) == BackendChoice("openvino", "bf16")
    assert stages.choose_backend(ExecutionSettings(precision="fp32")) == BackendChoice("openvino", "fp32")
    assert stages.choose_backend(ExecutionSettings(precision="fp32", backend="onnxruntime")) == BackendChoice("onnxruntime", "fp32")


@needs_openvino
def test_openvino_graph_equals_onnxruntime_and_declares_the_same_ports(kit):
    ort = graphs.load_graph(kit.perch_onnx, ThreadSettings(1))
    ov = graphs.load_graph(kit.perch_onnx, ThreadSettings(1), BackendChoice("openvino", "fp32"))
    assert [p.name for p in ov.inputs] == [p.name for p in ort.inputs]
    assert [(p.name, p.shape) for p in ov.outputs] == [(p.name, p.shape) for p in ort.outputs]
    ov.keep_outputs(["embedding", "label"])
    windows = backend.check_windows()[:3]
    want = ort.run(["embedding", "label"], {"inputs": windows})
    got = ov.run(["embedding", "label"], {"inputs": windows})
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == np.float32
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4 * float(np.abs(w).max()))


@needs_openvino
def test_openvino_fp32_sets_f32_explicitly(kit):
    """OpenVINO's CPU plugin would pick bf16 itself on a CPU that has it."""
    graph = graphs.OpenVinoGraph(kit.perch_onnx, ThreadSettings(1), "fp32")
    graph.compile()
    assert str(graph._request.get_compiled_model().get_property("INFERENCE_PRECISION_HINT")) in ("<Type: 'float32'>", "f32")
    assert graphs.openvino_config(ThreadSettings(2), "fp32") == {
        "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 2, "NUM_STREAMS": 1,
        "PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": False}


def _probs(path):
    frame = pd.read_csv(path)
    return frame.drop(columns="row_id").to_numpy()


@needs_openvino
def test_openvino_passes_the_check_and_the_report_names_it(kit, tmp_path):
    ref, out = tmp_path / "ort.csv", tmp_path / "ov.csv"
    assert cli.main(infer_args(kit, ref, "--backend", "onnxruntime", "--workers", "1", "--threads", "1")) == 0
    report = tmp_path / "ov.json"
    assert cli.main(infer_args(kit, out, "--backend", "openvino", "--workers", "1", "--threads", "1", "--report-json", str(report))) == 0
    doc = json.loads(report.read_text())
    assert doc["models"]["perch"] == doc["models"]["cnn"] == doc["models"]["crnn"] == "openvino fp32"
    check = doc["backend_check"]
    assert check["passed"] and check["used"] == "openvino fp32"
    assert 0 <= check["max_prob_diff"] <= backend.PARITY_TOLERANCE
    np.testing.assert_allclose(_probs(out), _probs(ref), atol=backend.PARITY_TOLERANCE, rtol=0)


@needs_openvino
def test_a_disagreeing_openvino_falls_back_to_onnxruntime(kit, tmp_path, monkeypatch, caplog):
    ref, out = tmp_path / "ort.csv", tmp_path / "ov.csv"
    assert cli.main(infer_args(kit, ref, "--backend", "onnxruntime", "--workers", "1", "--threads", "1")) == 0
    monkeypatch.setenv("STREAMER_FAILPOINTS", "parent.backend_check=nan")
    report = tmp_path / "ov.json"
    assert cli.main(infer_args(kit, out, "--backend", "openvino", "--workers", "1", "--threads", "1", "--report-json", str(report))) == 0
    doc = json.loads(report.read_text())
    assert doc["backend_check"]["passed"] is False and doc["backend_check"]["used"] == "onnxruntime fp32"
    assert doc["models"]["perch"] == "onnxruntime fp32"
    assert "disagrees with onnxruntime" in caplog.text
    # onnxruntime in both; the parent's batched reduction groups files by their arrival, which
    # moves the ProtoSSM folds' float32 round-off (about 1e-7), nothing more.
    np.testing.assert_allclose(_probs(out), _probs(ref), atol=1e-6, rtol=0)


@needs_openvino
@needs_bf16
def test_bf16_runs_in_openvino_and_reports_its_difference(kit, tmp_path):
    ref, out = tmp_path / "fp32.csv", tmp_path / "bf16.csv"
    assert cli.main(infer_args(kit, ref, "--workers", "1", "--threads", "1")) == 0
    report = tmp_path / "bf16.json"
    assert cli.main(infer_args(kit, out, "--precision", "bf16", "--workers", "1", "--threads", "1", "--report-json", str(report))) == 0
    doc = json.loads(report.read_text())
    assert doc["models"]["perch"] == "openvino bf16"
    check = doc["backend_check"]
    assert check["used"] == "openvino bf16" and check["max_prob_diff"] > 0
    diff = np.abs(_probs(out) - _probs(ref)).max()
    assert 0 < diff < 0.2, diff  # changed numbers, not different models


def test_describe_models_names_each_model(kit):
    from streamer.config import InferConfig

    plan = stages.prepare(InferConfig.create(data_dir=kit.data_dir, perch=kit.perch_onnx, moe_dir=kit.moe_dir, backend="onnxruntime"))
    assert backend.describe_models(plan.model)["perch"] == "onnxruntime fp32"
    assert backend.describe_models(plan.model)["cnn"] == "torch fp32"  # not exported yet


@needs_openvino
def test_the_parity_check_runs_once_per_machine_and_models(kit, tmp_path, monkeypatch):
    """The verdict is kept in the cache folder: a second run reuses it, a run with another
    precision or other models checks again."""
    from dataclasses import replace

    from streamer.config import InferConfig

    monkeypatch.setenv("STREAMER_CACHE", str(tmp_path / "cache"))
    calls = []
    real = backend.check_backend

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(backend, "check_backend", counting)
    plan = stages.prepare(InferConfig.create(data_dir=kit.data_dir, perch=kit.perch_onnx, moe_dir=kit.moe_dir,
                                             backend="openvino", without=("cnn", "crnn")))
    first_plan, first = backend.with_backends(plan, tmp_path / "s1")
    again_plan, again = backend.with_backends(plan, tmp_path / "s2")
    assert len(calls) == 1 and again == first and again_plan.model.backend == first_plan.model.backend
    (perch,) = plan.model.members  # the member perch alone: its columns reversed are other models
    other = replace(plan, model=replace(plan.model, members=(replace(perch, class_map=perch.class_map[::-1].copy()),)))
    backend.with_backends(other, tmp_path / "s3")
    assert len(calls) == 2
    assert len(list((tmp_path / "cache" / backend.CHECK_FOLDER).glob("*.json"))) == 2
