"""Tuned profiles, the benchmark's pieces, and a small end-to-end bench and tune run."""

import json

import numpy as np
import pytest

from streamer import cli
from streamer.bench.runner import BenchModels, build_contenders, layout_grid, run_bench
from streamer.bench.tune import run_tune
from streamer.errors import ConfigError
from streamer.profile import TunedLayout, load_profile, machine_fingerprint, save_profile

from conftest import infer_args


def test_profile_round_trip(tmp_path):
    path = save_profile(tmp_path / "p.json", TunedLayout(1, 2, 1, False), [{"name": "x", "windows_per_s": 3.0}])
    assert load_profile(path, required=True) == TunedLayout(1, 2, 1, False)
    doc = json.loads(path.read_text())
    assert doc["machine"] == machine_fingerprint() and doc["measurements"][0]["name"] == "x"


def test_profile_from_another_machine_is_ignored(tmp_path, caplog):
    path = save_profile(tmp_path / "p.json", TunedLayout(1, 2, 1), [])
    doc = json.loads(path.read_text())
    doc["machine"]["n_cpus"] += 62
    path.write_text(json.dumps(doc))
    with caplog.at_level("INFO"):
        assert load_profile(path, required=True) is None
    assert "another machine" in caplog.text


def test_missing_or_broken_profile(tmp_path):
    assert load_profile(tmp_path / "none.json", required=False) is None
    with pytest.raises(ConfigError, match="not found"):
        load_profile(tmp_path / "none.json", required=True)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not a streamer profile"):
        load_profile(tmp_path / "bad.json", required=True)
    assert load_profile(tmp_path / "bad.json", required=False) is None


def test_infer_uses_the_profile_unless_layout_flags_are_given(kit, tmp_path):
    profile = save_profile(tmp_path / "p.json", TunedLayout(workers=1, threads=1, decoders=2), [])
    out = tmp_path / "a.csv"
    rep = tmp_path / "a.json"
    assert cli.main(infer_args(kit, out, "--no-cnn", "--no-crnn", "--profile", str(profile), "--report-json", str(rep))) == 0
    assert "1 consumer(s) x 1 thread(s)" in json.loads(rep.read_text())["engine"]
    assert "2 decoder(s)" in json.loads(rep.read_text())["engine"]
    assert cli.main(infer_args(kit, out, "--no-cnn", "--no-crnn", "--profile", str(profile), "--workers", "2", "--threads", "1", "--report-json", str(rep))) == 0
    assert "2 consumer(s) x 1 thread(s)" in json.loads(rep.read_text())["engine"]


def test_layout_grid_and_contenders():
    assert layout_grid(2, full=False) == [(1, 2), (2, 1)]
    assert (2, 2) in layout_grid(2, full=True)
    assert (4, 1) in layout_grid(4, full=True) and (2, 2) in layout_grid(4, full=True)
    names = [c.name for c in build_contenders(2, quick=True)]
    assert names[0].startswith("baseline") and names[1].startswith("engine")
    assert any(n.startswith("ceiling") for n in names)
    baseline = build_contenders(2, quick=True)[0]
    assert baseline.args == ("--engine", "sequential", "--threads", "default", "--backend", "onnxruntime", "--precision", "fp32")


def test_backend_contenders_and_what_tune_may_save():
    from streamer.bench.runner import REFERENCE_BACKEND, Contender
    from streamer.bench.tune import _eligible
    from streamer.models.graphs import BackendChoice

    ov, bf16 = BackendChoice("openvino", "fp32"), BackendChoice("openvino", "bf16")
    contenders = build_contenders(2, quick=True, backends=[REFERENCE_BACKEND, ov, bf16])
    by_name = {c.name: c for c in contenders}
    assert by_name["engine (automatic layout), openvino bf16"].args[-4:] == ("--backend", "openvino", "--precision", "bf16")
    assert {c.backend for c in contenders if c.kind == "ceiling"} == {REFERENCE_BACKEND, ov, bf16}
    grid = build_contenders(2, quick=True, backends=[REFERENCE_BACKEND, ov], grid_backends=[REFERENCE_BACKEND, ov])
    assert sum(c.backend == ov and c.kind == "infer" for c in grid) == len(layout_grid(2, full=False))
    assert _eligible(Contender("a", "infer", backend=bf16), allow_bf16=False) == "bf16 is saved only with --allow-bf16"
    assert _eligible(Contender("a", "infer", backend=bf16), allow_bf16=True) is None
    failed = Contender("b", "infer", backend=ov, runs=[{"backend_check_passed": False}])
    assert "parity check" in _eligible(failed, allow_bf16=True)
    assert _eligible(Contender("c", "infer", backend=ov, runs=[{"backend_check_passed": True}]), allow_bf16=False) is None


def test_b3_standin_has_perchs_interface():
    import torch

    from streamer.bench.perch_b3 import build_model

    model = build_model()
    with torch.no_grad():
        emb, spatial, spec, label = model(torch.zeros(1, 160000) + 0.01)
    assert emb.shape == (1, 1536) and spatial.shape == (1, 16, 4, 1536)
    assert spec.shape == (1, 500, 128) and label.shape == (1, 14795)
    n_params = sum(p.numel() for p in model.parameters())
    assert 30e6 < n_params < 120e6  # B3 backbone + the 14,795-class head


@pytest.mark.timeout(600)
def test_small_bench_and_tune_run(kit, tmp_path):
    """The whole bench loop on the small stand-ins, kept tiny: every output and key is there."""
    models = BenchModels(perch=kit.perch_onnx, moe_dir=kit.moe_dir, data_dir=kit.data_dir, description="small stand-ins")
    from streamer.bench.runner import REFERENCE_BACKEND
    from streamer.models.graphs import BackendChoice, openvino_available

    backends = [REFERENCE_BACKEND] + ([BackendChoice("openvino", "fp32")] if openvino_available() else [])
    result = run_bench(out_dir=tmp_path / "out", quick=True, n_files=2, repeats=1, models=models, cache_dir=tmp_path / "cache",
                       backends=backends)
    for key in ("baseline_windows_per_s", "engine_windows_per_s", "ceiling_windows_per_s", "speedup_vs_baseline",
                "efficiency_vs_ceiling", "projected_minutes_600_files"):
        assert np.isfinite(result[key]) and result[key] > 0, key
    on_disk = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert on_disk["speedup_vs_baseline"] == pytest.approx(result["speedup_vs_baseline"])
    assert (tmp_path / "out" / "bench.png").stat().st_size > 1000
    table = (tmp_path / "out" / "bench.md").read_text()
    assert "| baseline (sequential, library threads) |" in table and "Engine vs baseline" in table
    assert result["speedup_vs_baseline"] == pytest.approx(result["engine_windows_per_s"] / result["baseline_windows_per_s"])
    engine_run = next(c for c in result["contenders"] if c["name"].startswith("engine"))["runs"][0]
    seconds = engine_run["seconds"]
    # Throughput is over the scoring interval, which lies inside the run: its fixed cost is the rest.
    assert 0 < seconds["scoring"] < seconds["total"] - seconds["setup"] + 1e-6
    assert engine_run["windows_per_s"] == pytest.approx(engine_run["windows"] / seconds["scoring"])
    assert engine_run["fixed_s"] == pytest.approx(engine_run["wall_s"] - seconds["scoring"])
    assert 0 < seconds["decode_cpu"]  # the decoders' CPU time is measured (it backs the stage table)
    assert "decode CPU" in table
    assert [e["backend"] for e in result["backends"]] == [e.describe() for e in backends]
    by_name = {c["name"]: c for c in result["contenders"]}
    for e, backend in zip(result["backends"], backends):
        assert e["windows_per_s"] > 0 and e["ceiling_windows_per_s"] > 0 and e["consumer_rss_mb"] > 0
        own = by_name["engine (automatic layout)" + ("" if backend == REFERENCE_BACKEND else f", {backend.describe()}")]["runs"][0]
        assert 0 < e["first_file_s"] == own["first_file_s"] <= own["wall_s"]  # inside that backend's own run
    assert 0 < engine_run["first_file_s"] <= engine_run["wall_s"]
    baseline_run = result["contenders"][0]["runs"][0]
    assert result["whole_process_speedup"] == pytest.approx(baseline_run["wall_s"] / engine_run["wall_s"])
    ceiling_run = next(c for c in result["contenders"] if c["kind"] == "ceiling")["runs"][0]
    # The ceiling is the sum of its workers' own rates, never below the slowest worker's view.
    assert ceiling_run["windows_per_s"] == pytest.approx(sum(ceiling_run["worker_windows_per_s"]))
    assert ceiling_run["windows_per_s"] >= ceiling_run["slowest_windows_per_s"] > 0

    layout, measurements = run_tune(profile_path=tmp_path / "profile.json", models=models, quick=True, n_files=2, repeats=1)
    assert load_profile(tmp_path / "profile.json", required=True) == layout
    assert measurements[0]["windows_per_s"] >= measurements[-1]["windows_per_s"]


def test_repeat_order_is_a_fixed_shuffle_per_repeat():
    from streamer.bench.runner import repeat_order

    items = list(range(12))
    orders = [repeat_order(items, r) for r in range(3)]
    assert all(sorted(o) == items for o in orders)  # every contender, once
    assert orders == [repeat_order(items, r) for r in range(3)]  # repeatable
    assert len({tuple(o) for o in orders}) == 3  # a new order each repeat
    # not a rotation of the first order, so neighbours change too
    first = orders[0]
    rotations = {tuple(first[k:] + first[:k]) for k in range(len(first))}
    assert any(tuple(o) not in rotations for o in orders[1:])
