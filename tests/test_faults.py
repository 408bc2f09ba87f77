"""The fault matrix of ``streamer infer``: a failpoint × action per cell, each run as the real
command in its own process group on the marked folder (every window unique).

For each cell: the exit code the README documents; a complete, valid CSV (or, where the CSV
itself cannot be written, none and ``--out`` untouched); every file the fault did not touch
equal to the fault-free run; the faulted file equal after recovery or given the documented
fallback and named in the report; no child process left; no temporary file left. Faults are
triggered at failpoints, never by timing."""

import json
import os
import subprocess
import sys

import pandas as pd
import psutil
import pytest

from conftest import N_MARKED, UNREADABLE_STEM, assert_same_csv, marked_stems

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]

STEMS = marked_stems()
VICTIM = STEMS[2]  # a file named by the keyed cells
FAST = ("--workers", "2", "--threads", "1", "--decoders", "1", "--no-cnn", "--no-crnn")


def run_cli(marked, tmp_path, spec, *extra, args=FAST, out_text=None):
    """``streamer infer`` with ``STREAMER_FAILPOINTS=spec``; returns (exit code, CSV or None,
    report or None, stderr)."""
    kit, data = marked
    out, report = tmp_path / "sub.csv", tmp_path / "report.json"
    if out_text is not None:
        out.write_text(out_text)
    env = {**os.environ, "STREAMER_FAILPOINTS": spec}
    env.pop("STREAMER_FAILPOINTS_STATE", None)
    cmd = [sys.executable, "-m", "streamer", "-q", "infer", "--data-dir", str(data), "--perch", str(kit.perch_onnx),
           "--moe-dir", str(kit.moe_dir), "--out", str(out), "--report-json", str(report), "--no-profile", *args, *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    _, stderr = proc.communicate(timeout=150)
    # No child may outlive the run: every process of its group is gone (waited for, bounded).
    group = [p for p in psutil.process_iter() if _pgid(p.pid) == proc.pid]
    _, alive = psutil.wait_procs(group, timeout=10)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], f"children left: {alive}"
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")], "a temporary file was left"
    frame = pd.read_csv(out) if out.exists() and out.read_text() != out_text else None
    doc = json.loads(report.read_text()) if report.exists() else None
    return proc.returncode, frame, doc, stderr


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def rows_of(frame, stems):
    return frame[frame["row_id"].str.rsplit("_", n=1).str[0].isin(stems)].reset_index(drop=True)


def assert_complete(frame):
    assert frame is not None, "no CSV"
    assert len(frame) == (N_MARKED + 1) * 12 and frame.iloc[:, 1:].notna().all().all()


def check(frame, doc, ref, *, touched=(), reason=None, tier="prior_only"):
    """Complete; every file but ``touched`` equal to ``ref``; the touched files given ``tier``
    with ``reason`` in the report."""
    assert_complete(frame)
    others = [s for s in STEMS if s not in touched] + [UNREADABLE_STEM]
    assert_same_csv(rows_of(frame, others), rows_of(ref, others))
    for stem in touched:
        assert doc["tiers"][stem] == tier, doc["tiers"]
        assert reason in doc["reasons"][stem], doc["reasons"]


# Cells whose fault is recovered from: the CSV equals the fault-free run, exit 0.
RECOVERED = [
    "consumer.setup=kill@1",
    "consumer.task_received=kill@2",
    "consumer.mid_inference=kill@3",
    "consumer.mid_inference=raise@2",
    "decoder.setup=kill@1",
    "decoder.read=kill@2",
    "decoder.read=raise@3",
    "decoder.slot_write=kill@1",
    "parent.reduction=raise@1",
]


@pytest.mark.parametrize("spec", RECOVERED)
def test_recovered(marked, reference, tmp_path, spec):
    code, frame, doc, stderr = run_cli(marked, tmp_path, spec)
    assert code == 0, stderr[-3000:]
    check(frame, doc, reference[False])
    assert set(doc["reasons"]) == {UNREADABLE_STEM}


@pytest.mark.parametrize("spec,flag,message", [
    ("consumer.mid_inference=hang@2", "--task-timeout", "no answer for 5 s on"),
    ("consumer.setup=hang@1", "--startup-timeout", "did not start within 15 s (hung)"),
])
def test_a_hang_is_killed_and_retried(marked, reference, tmp_path, spec, flag, message):
    """One consumer, so nothing else can finish the run before the hang is noticed. The limits
    are far above what a healthy task (under a second) or start (a few seconds) takes."""
    timeout = "5" if flag == "--task-timeout" else "15"
    code, frame, doc, stderr = run_cli(marked, tmp_path, spec, flag, timeout,
                                       args=("--workers", "1", "--threads", "1", "--no-cnn", "--no-crnn"))
    assert code == 0, stderr[-3000:]
    check(frame, doc, reference[False])
    assert message in stderr


@pytest.mark.parametrize("spec,reason", [
    (f"consumer.mid_inference[{VICTIM}]=kill", "the consumer died 3 times on this file"),
    (f"decoder.read[{VICTIM}]=kill", "the decoder died 3 times on this file"),
    (f"decoder.read[{VICTIM}]=raise", "the decoder died 3 times on this file"),
    (f"consumer.mid_inference[{VICTIM}]=nan", "non-finite Perch outputs"),
])
def test_one_file_falls_back_alone(marked, reference, tmp_path, spec, reason):
    code, frame, doc, stderr = run_cli(marked, tmp_path, spec)
    assert code == 0, stderr[-3000:]
    check(frame, doc, reference[False], touched=[VICTIM], reason=reason)


def test_a_reduction_that_always_fails_gives_every_file_prior_only_rows(marked, tmp_path):
    code, frame, doc, stderr = run_cli(marked, tmp_path, "parent.reduction=raise")
    assert code == 0, stderr[-3000:]
    assert_complete(frame)
    assert all(doc["tiers"][s] == "prior_only" and "reduction failed: FailpointError" in doc["reasons"][s] for s in STEMS)


def test_a_failed_student_export_keeps_the_students_in_torch(marked, reference, tmp_path):
    code, frame, doc, stderr = run_cli(marked, tmp_path, "students.export=raise", args=("--workers", "2", "--threads", "1"))
    assert code == 0, stderr[-3000:]
    assert doc["models"]["cnn"] == doc["models"]["crnn"] == "torch fp32"
    assert_complete(frame)
    assert_same_csv(frame, reference[True], rtol=1e-4, atol=1e-5)  # the sequential reference runs them in torch too


def test_non_finite_students_drop_the_students_for_that_file(marked, reference, tmp_path):
    code, frame, doc, stderr = run_cli(marked, tmp_path, f"consumer.students[{VICTIM}]=nan",
                                       args=("--workers", "2", "--threads", "1"))
    assert code == 0, stderr[-3000:]
    check(frame, doc, reference[True], touched=[VICTIM], reason="scored without cnn, crnn", tier="without cnn+crnn")
    assert_same_csv(rows_of(frame, [VICTIM]), rows_of(reference[False], [VICTIM]))  # Perch alone, as the no-students run


def test_a_start_that_hangs_for_good_ends_with_prior_only_rows(marked, tmp_path):
    code, frame, doc, stderr = run_cli(marked, tmp_path, "consumer.setup=hang", "--startup-timeout", "2",
                                       args=("--workers", "1", "--threads", "1", "--no-cnn", "--no-crnn"))
    assert code == 1, stderr[-3000:]
    assert_complete(frame)
    assert set(doc["tiers"].values()) == {"prior_only"}
    assert "every consumer keeps dying" in doc["error"] and "did not start within 2 s (hung)" in doc["error"]


def test_every_consumer_failing_to_start_ends_with_prior_only_rows(marked, reference, tmp_path):
    code, frame, doc, stderr = run_cli(marked, tmp_path, "consumer.setup=raise")
    assert code == 1, stderr[-3000:]
    assert_complete(frame)
    assert set(doc["tiers"].values()) == {"prior_only"}
    assert "every consumer keeps dying" in doc["error"] and "FailpointError" in doc["error"]


@pytest.mark.parametrize("spec", ["parent.checks=sigint", "students.export=sigint", "consumer.setup=sigint@1",
                                  "consumer.task_received=sigint@3", "parent.row_write=sigint@2"])
def test_ctrl_c_at_any_phase_writes_the_complete_csv(marked, reference, tmp_path, spec):
    args = FAST if not spec.startswith(("students", "parent.checks")) else ("--workers", "2", "--threads", "1")
    code, frame, doc, stderr = run_cli(marked, tmp_path, spec, args=args)
    assert code == 130, stderr[-3000:]
    assert_complete(frame)
    assert doc["interrupted"]
    ref = reference[False] if args == FAST else reference[True]
    scored = [s for s in STEMS if doc["tiers"][s] != "prior_only"]
    assert_same_csv(rows_of(frame, scored), rows_of(ref, scored))
    assert all(doc["reasons"][s] == "interrupted" for s in STEMS if s not in scored)


def test_ctrl_c_while_renaming_still_installs_the_scored_csv(marked, reference, tmp_path):
    code, frame, doc, stderr = run_cli(marked, tmp_path, "parent.before_rename=sigint")
    assert code == 130, stderr[-3000:]
    check(frame, doc, reference[False])


@pytest.mark.parametrize("spec", ["parent.row_write=enospc@2", "parent.before_rename=enospc", "parent.before_rename=raise"])
def test_a_csv_that_cannot_be_written_leaves_out_untouched(marked, tmp_path, spec):
    code, frame, doc, stderr = run_cli(marked, tmp_path, spec, out_text="previous\n")
    assert code == 1, stderr[-3000:]
    assert (tmp_path / "sub.csv").read_text() == "previous\n"
    assert "could not write" in stderr or "FailpointError" in stderr


def test_a_killed_parent_leaves_no_children_and_the_next_run_cleans_up(marked, reference, tmp_path):
    kit, data = marked
    out = tmp_path / "sub.csv"
    env = {**os.environ, "STREAMER_FAILPOINTS": "parent.row_write=kill@3"}
    cmd = [sys.executable, "-m", "streamer", "-q", "infer", "--data-dir", str(data), "--perch", str(kit.perch_onnx),
           "--moe-dir", str(kit.moe_dir), "--out", str(out), "--no-profile", *FAST]
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert proc.wait(timeout=150) == -9
    group = [p for p in psutil.process_iter() if _pgid(p.pid) == proc.pid]
    _, alive = psutil.wait_procs(group, timeout=10)  # they die with their parent
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    code, frame, doc, stderr = run_cli(marked, tmp_path, "")  # removes the temporary file the killed run left
    assert code == 0, stderr[-3000:]
    check(frame, doc, reference[False])


@pytest.mark.parametrize("spec,expected", [
    ("decoder.read=raise@2", 0),
    (f"decoder.read[{VICTIM}]=raise", 0),
    ("consumer.mid_inference=sigint@3", 130),
    ("parent.before_rename=sigint", 130),
])
def test_sequential_engine(marked, reference, tmp_path, spec, expected):
    code, frame, doc, stderr = run_cli(marked, tmp_path, spec, args=("--engine", "sequential", "--threads", "1", "--no-cnn", "--no-crnn"))
    assert code == expected, stderr[-3000:]
    if "[" in spec:
        check(frame, doc, reference[False], touched=[VICTIM], reason="failed 3 times")
    elif expected == 130 and "rename" not in spec:
        assert_complete(frame)
        scored = [s for s in STEMS if doc["tiers"][s] != "prior_only"]
        assert len(scored) == 2
        assert_same_csv(rows_of(frame, scored), rows_of(reference[False], scored))
    else:
        check(frame, doc, reference[False])
