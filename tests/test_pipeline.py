"""The multiprocess engine: equal to the sequential path for every layout, flat memory, the
budget through the command. Faults and interrupts are in test_faults.py (the fault matrix), the
scheduling rules in test_scheduler.py. Every test is bounded by a timeout so a hang fails
instead of blocking."""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import N_MARKED, assert_same_csv as _assert_same, marked_config as _config, run_marked as _run
from streamer.stages import prepare

pytestmark = pytest.mark.timeout(240)

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
    _run(marked, out, workers=2, threads="default", without=("cnn", "crnn"))
    _assert_same(pd.read_csv(out), reference[False])


def _cli(marked, out, *extra):
    kit, data = marked
    cmd = [
        sys.executable, "-m", "streamer", "-q", "infer", "--data-dir", str(data), "--perch", str(kit.perch_onnx),
        "--moe-dir", str(kit.moe_dir), "--out", str(out), *extra,
    ]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


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
        m = re.search(r"parent (\d+) MB, consumer \(largest\) (\d+) MB", stdout)
        peaks[n] = (int(m.group(1)), int(m.group(2)))
        assert len(pd.read_csv(tmp_path / f"m{n}.csv")) == n * 12
    assert peaks[60][0] - peaks[6][0] < 40, peaks
    assert peaks[60][1] - peaks[6][1] < 40, peaks


def test_budget_of_seconds_via_the_cli(marked, tmp_path):
    """A budget far too small for the whole run: the CSV is still complete, every file is
    accounted for whatever tier it got (which files get which tier depends on the machine's
    speed, so only that is asserted; the timing rules are tested with a fake clock in
    test_scheduler.py)."""
    out = tmp_path / "tiny.csv"
    report = tmp_path / "tiny.json"
    proc = _cli(marked, out, "--budget-minutes", "0.1", "--report-json", str(report))  # 6 s: models barely load
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
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
        members = ("perch", "cnn", "crnn") if students else ("perch",)
        return ModelOutputs(rng.normal(0, 1, (n_windows, 1536)).astype(np.float32), {k: logits() for k in members})

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
    report = _run((kit, local), out, workers=1, threads=1, without=("cnn", "crnn"))
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
