"""The multiprocess engine: equal to the sequential path for every layout, and robust to faults,
interrupts and budgets. Every test is bounded by a timeout so a hang fails instead of blocking."""

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest

from streamer.audio import write_audio
from streamer.config import InferConfig
from streamer.pipeline.runner import PipelineError
from streamer.run import run_infer
from streamer.stages import prepare

pytestmark = pytest.mark.timeout(240)

N_MARKED = 7


def _marked_audio(file_no: int) -> np.ndarray:
    """60 s whose every 5-s window is unique: a tone, level and click position that encode
    (file, window), so a lost, duplicated or misplaced window changes the output."""
    sr = 32000
    t = np.arange(5 * sr) / sr
    rng = np.random.default_rng(100 + file_no)
    windows = []
    for w in range(12):
        freq = 400.0 + 150.0 * w + 37.0 * file_no
        x = (0.05 + 0.02 * w) * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(t.size)
        x[(w * 9973 + file_no * 131) % t.size] += 0.8
        windows.append(x)
    return np.concatenate(windows).astype(np.float32)


@pytest.fixture(scope="module")
def marked(kit, tmp_path_factory):
    """The kit with test_soundscapes replaced by marked files (labelled sites, an unknown site,
    an odd name) and one unreadable file."""
    root = tmp_path_factory.mktemp("marked")
    data = root / "competition"
    shutil.copytree(kit.data_dir, data, ignore=shutil.ignore_patterns("test_soundscapes"))
    test_dir = data / "test_soundscapes"
    test_dir.mkdir()
    sites = ["S03", "S08", "S13", "S90", "S15", "S22", None]
    for i in range(N_MARKED):
        name = f"BC2026_Test_{i + 1:04d}_{sites[i]}_20250301_{(3 * i) % 24:02d}0000.ogg" if sites[i] else "odd_name_recording.ogg"
        write_audio(test_dir / name, _marked_audio(i), 32000)
    (test_dir / "BC2026_Test_0099_S03_20250301_050000.ogg").write_bytes(b"not audio")
    return kit, data


def _config(kit_and_data, out, **kw):
    kit, data = kit_and_data
    base = dict(data_dir=data, perch=kit.perch_onnx, moe_dir=kit.moe_dir, out=out, progress=False)
    base.update(kw)
    return InferConfig(**base)


def _run(kit_and_data, out, **kw):
    return run_infer(prepare(_config(kit_and_data, out, **kw)))


@pytest.fixture(scope="module")
def reference(marked, tmp_path_factory):
    """Sequential outputs: with the students, and without (the faster fault tests use that)."""
    d = tmp_path_factory.mktemp("ref")
    refs = {}
    for students in (True, False):
        out = d / f"seq_{students}.csv"
        _run(marked, out, engine="sequential", use_cnn=students, use_crnn=students)
        refs[students] = pd.read_csv(out)
    return refs


def _assert_same(frame, ref):
    assert list(frame.columns) == list(ref.columns)
    assert frame["row_id"].tolist() == ref["row_id"].tolist()
    np.testing.assert_allclose(frame.iloc[:, 1:].to_numpy(), ref.iloc[:, 1:].to_numpy(), rtol=1e-5, atol=1e-6)


def test_marked_windows_are_all_distinct(reference):
    ref = reference[True]
    scored = ref[~ref["row_id"].str.startswith("BC2026_Test_0099")].iloc[:, 1:].to_numpy()
    assert len(np.unique(scored.round(7), axis=0)) == scored.shape[0]


@pytest.mark.parametrize(
    "workers,threads,decoders",
    [(1, 1, 1), (2, 1, 1), (1, 2, 2), (3, 1, 2)],
)
def test_pipeline_equals_sequential(marked, reference, tmp_path, workers, threads, decoders):
    out = tmp_path / "pipe.csv"
    report = _run(marked, out, workers=workers, threads=threads, decoders=decoders)
    _assert_same(pd.read_csv(out), reference[True])
    assert report.fallbacks.keys() == {"BC2026_Test_0099_S03_20250301_050000"}
    assert f"{workers} consumer(s) x {threads} thread(s)" in report.engine
    # With several consumers the last files are scored in parts; the windows are all marked,
    # so a part put back in the wrong place would change the output above.
    assert (report.n_files_in_parts > 0) == (workers > 1)


def test_pipeline_with_library_default_threads(marked, reference, tmp_path):
    out = tmp_path / "pipe.csv"
    _run(marked, out, workers=2, threads="default", use_cnn=False, use_crnn=False)
    _assert_same(pd.read_csv(out), reference[False])


@pytest.mark.parametrize("fault", ["consumer:0:2", "consumer:1:1", "decoder:0:3"])
def test_killed_child_is_replaced_and_result_unchanged(marked, reference, tmp_path, caplog, fault):
    out = tmp_path / "fault.csv"
    with caplog.at_level("ERROR"):
        report = _run(marked, out, workers=2, decoders=1, use_cnn=False, use_crnn=False, debug_faults=(fault,))
    _assert_same(pd.read_csv(out), reference[False])
    role, wid = fault.split(":")[:2]
    assert f"{role} {wid} (pid" in caplog.text and "killed by SIGKILL" in caplog.text
    assert report.error is None


def test_child_that_keeps_dying_stops_the_run_after_writing(marked, tmp_path, caplog):
    out = tmp_path / "dying.csv"
    with caplog.at_level("ERROR"), pytest.raises(PipelineError, match="keeps dying") as info:
        _run(marked, out, workers=1, use_cnn=False, use_crnn=False, debug_faults=("consumer:*:1:always",))
    report = info.value.report
    assert report is not None and report.out == out
    frame = pd.read_csv(out)
    assert len(frame) == (N_MARKED + 1) * 12
    assert set(report.tiers.values()) == {"prior_only"}
    assert "consumer 0" in caplog.text


def test_tiny_budget_still_writes_a_complete_csv_on_time(marked, tmp_path):
    out = tmp_path / "budget.csv"
    budget_s = 20.0
    start, start_wall = time.monotonic(), time.time()
    config = _config(marked, out, workers=1, budget_minutes=budget_s / 60, debug_model_delay_s=4.0)
    report = run_infer(prepare(config), start=start)
    frame = pd.read_csv(out)
    assert len(frame) == (N_MARKED + 1) * 12 and frame.iloc[:, 1:].notna().all().all()
    # The property under test is a deadline, not a speed: the CSV exists before it.
    assert os.path.getmtime(out) <= start_wall + budget_s
    not_full = {s: t for s, t in report.tiers.items() if t != "full"}
    assert len(not_full) > 1  # the budget cannot fit 7 files at 4 s each after start-up
    assert any("budget" in r for r in report.reasons.values())


def test_budget_drops_students_when_they_do_not_fit(marked, tmp_path):
    out = tmp_path / "tier.csv"
    # Students made 5 s slower per file: 7 files cannot all be scored with them in 30 s, but
    # without them the rest take well under a second each. The monitor must drop the students
    # (for the files not yet sent) and still score every readable file.
    report = _run(marked, out, workers=1, budget_minutes=0.5, debug_students_delay_s=5.0)
    frame = pd.read_csv(out)
    assert len(frame) == (N_MARKED + 1) * 12
    tiers = report.tiers
    assert "no_students" in tiers.values() and "full" in tiers.values()
    assert report.fallbacks.keys() == {"BC2026_Test_0099_S03_20250301_050000"}  # only the unreadable one
    assert report.budget_notes and "dropping the students" in report.budget_notes[0]
    # files scored without students follow the files scored with them (tiers only step down)
    order = [tiers[s] for s in sorted(tiers) if tiers[s] != "prior_only"]
    assert order.index("no_students") > order.index("full")


def _children(pid):
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _cli(marked, out, *extra):
    kit, data = marked
    cmd = [
        sys.executable, "-m", "streamer", "-q", "infer", "--data-dir", str(data), "--perch", str(kit.perch_onnx),
        "--moe-dir", str(kit.moe_dir), "--out", str(out), *extra,
    ]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _wait_for_children(proc, n, timeout=60):
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        kids = [k for k in _children(proc.pid) if "resource_tracker" not in " ".join(k.cmdline())]
        if len(kids) >= n:
            return kids
        time.sleep(0.2)
    raise AssertionError("children did not start")


def test_ctrl_c_writes_complete_csv_and_exits_130(marked, tmp_path):
    out = tmp_path / "int.csv"
    proc = _cli(marked, out, "--workers", "2", "--no-cnn", "--no-crnn", "--debug-model-delay", "3")
    kids = _wait_for_children(proc, 3)
    time.sleep(6.0)  # models loaded, some files in flight
    os.killpg(proc.pid, signal.SIGINT)  # like a terminal's Ctrl-C: the whole process group
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stdout
    frame = pd.read_csv(out)
    assert len(frame) == (N_MARKED + 1) * 12 and frame.iloc[:, 1:].notna().all().all()
    time.sleep(0.5)
    assert not [k for k in kids if k.is_running() and k.status() != psutil.STATUS_ZOMBIE]


def test_external_sigkill_of_a_consumer_recovers(marked, reference, tmp_path):
    out = tmp_path / "ext.csv"
    proc = _cli(marked, out, "--workers", "2", "--no-cnn", "--no-crnn", "--debug-model-delay", "1")
    kids = _wait_for_children(proc, 3)
    time.sleep(5.0)
    victim = max(kids, key=lambda k: k.memory_info().rss)  # a consumer: it holds the models
    victim.send_signal(signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert "died: killed by SIGKILL" in stderr
    _assert_same(pd.read_csv(out), reference[False])


def test_no_orphans_when_the_parent_is_killed(marked, tmp_path):
    proc = _cli(marked, tmp_path / "orphan.csv", "--workers", "2", "--no-cnn", "--no-crnn", "--debug-model-delay", "5")
    kids = _wait_for_children(proc, 3)
    proc.kill()
    proc.communicate(timeout=30)
    t_end = time.monotonic() + 15
    alive = kids
    while alive and time.monotonic() < t_end:
        time.sleep(0.3)
        alive = [k for k in kids if k.is_running() and k.status() != psutil.STATUS_ZOMBIE]
    assert not alive


def test_setup_failure_in_a_child_stops_before_audio(marked, tmp_path):
    kit, data = marked
    bad = tmp_path / "perch"
    bad.mkdir()
    shutil.copy(kit.perch_labels, bad / "labels.csv")
    lines = (bad / "labels.csv").read_text().splitlines()
    (bad / "labels.csv").write_text("\n".join(lines[:-3]) + "\n")  # label count != model outputs
    shutil.copy(kit.perch_onnx, bad / "perch_v2.onnx")
    out = tmp_path / "never.csv"
    with pytest.raises(PipelineError, match="label list has") as info:
        run_infer(prepare(replace(_config(marked, out), perch=bad, workers=1)))
    assert info.value.report is None and not out.exists()


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_number_of_files(marked, tmp_path):
    """Parent and child peak RSS with 6 files vs 60 files (same audio, other names)."""
    import re

    kit, data = marked
    peaks = {}
    for n in (6, 60):
        d = tmp_path / f"data{n}"
        shutil.copytree(data, d, ignore=shutil.ignore_patterns("test_soundscapes"))
        (d / "test_soundscapes").mkdir()
        src = next(data.glob("test_soundscapes/BC2026_Test_0001_*.ogg"))
        for i in range(n):
            shutil.copy(src, d / "test_soundscapes" / f"BC2026_Test_{i + 1:04d}_S03_20250301_{i % 24:02d}0000.ogg")
        proc = _cli((kit, d), tmp_path / f"m{n}.csv", "--workers", "2", "--no-cnn", "--no-crnn")
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr
        m = re.search(r"parent (\d+) MB, largest child (\d+) MB", stdout)
        peaks[n] = (int(m.group(1)), int(m.group(2)))
        assert len(pd.read_csv(tmp_path / f"m{n}.csv")) == n * 12
    assert peaks[60][0] - peaks[6][0] < 40, peaks
    assert peaks[60][1] - peaks[6][1] < 40, peaks


def test_budget_of_seconds_via_the_cli(marked, tmp_path):
    """A budget far too small for any model: the CSV is still complete and on time."""
    out = tmp_path / "tiny.csv"
    start = time.time()
    report = tmp_path / "tiny.json"
    proc = _cli(marked, out, "--budget-minutes", "0.1", "--report-json", str(report))  # 6 s: models barely load
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert os.path.getmtime(out) <= start + 6.0  # counted from before the interpreter started
    frame = pd.read_csv(out)
    assert len(frame) == (N_MARKED + 1) * 12 and frame.iloc[:, 1:].notna().all().all()
    import json

    tiers = json.loads(report.read_text())["tiers"]
    assert len(tiers) == N_MARKED + 1  # every file accounted for, whatever tier it got


def test_batched_reduction_matches_one_file_at_a_time(marked):
    """The parent reduces several files at once; each file's rows match its own reduction (to
    float32 round-off), files of another length go in their own batch, and the order holds."""
    from streamer.stages import ModelOutputs, Reducer

    plan = prepare(_config(marked, Path("unused.csv")))
    reducer = Reducer(plan.reducer)
    rng = np.random.default_rng(7)
    n_classes = plan.reducer.n_classes

    def outputs(n_windows, students=True):
        logits = lambda: rng.normal(0, 2, (n_windows, n_classes)).astype(np.float32)  # noqa: E731
        return ModelOutputs(rng.normal(0, 1, (n_windows, 1536)).astype(np.float32), logits(),
                            logits() if students else None, logits() if students else None)

    stems = [job.stem for job in plan.jobs[:6]]
    items = [(stem, outputs(12 if k != 3 else 7, students=k != 4)) for k, stem in enumerate(stems)]
    together = reducer.reduce_files(items)
    alone = [reducer.reduce(stem, out) for stem, out in items]
    assert [p.shape for p in together] == [p.shape for p in alone]
    for a, b in zip(together, alone):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not np.allclose(together[0], together[1])  # distinct files stay distinct
    np.testing.assert_array_equal(reducer.reduce_files(items[:1])[0], alone[0])  # one file: the very same numbers


def test_unreadable_file_decoded_during_start_up_gets_fallback_rows(marked, reference, tmp_path):
    """Decoding starts while the consumers load their models, before the submission writer
    exists; a file that fails then (here the first one) still gets its fallback rows."""
    kit, data = marked
    local = tmp_path / "competition"
    shutil.copytree(data, local)
    (local / "test_soundscapes" / "BC2026_Test_0000_S03_20250301_010000.ogg").write_bytes(b"\x00" * 64)
    out = tmp_path / "early.csv"
    report = _run((kit, local), out, workers=1, threads=1, use_cnn=False, use_crnn=False)
    frame = pd.read_csv(out)
    assert report.fallbacks.keys() == {"BC2026_Test_0000_S03_20250301_010000", "BC2026_Test_0099_S03_20250301_050000"}
    assert report.reasons["BC2026_Test_0000_S03_20250301_010000"].startswith("unreadable")
    _assert_same(frame[~frame["row_id"].str.startswith("BC2026_Test_0000")].reset_index(drop=True), reference[False])


def test_reduction_in_the_consumers_equals_sequential(marked, reference, tmp_path):
    """``--reduce-in consumer``: each consumer reduces its own files; files are then never cut
    into parts (a part cannot be reduced alone)."""
    out = tmp_path / "in_consumers.csv"
    report = _run(marked, out, workers=2, threads=1, reduce_in="consumer")
    _assert_same(pd.read_csv(out), reference[True])
    assert report.n_files_in_parts == 0
    assert report.seconds["protossm"] > 0  # the consumers' reduction is accounted for
