"""``bench-archive --recipe birdnet``'s measuring and report (the runs themselves are benchmarks)."""

import sys

import pytest

from streamer.bench.birdnet import birdnet_markdown, run_measured


def test_run_measured_sees_a_childs_memory_and_time(tmp_path):
    # a child holding 200 MB for a moment: the sampler sees at least most of it
    code = "import time; b = bytearray(200 * 2**20); b[::4096] = b'x' * len(b[::4096]); time.sleep(0.5)"
    got = run_measured([sys.executable, "-c", code], log_path=tmp_path / "log")
    assert got["wall_s"] >= 0.5 and got["cpu_s"] > 0
    assert got["largest_mb"] >= 150 and got["tree_mb"] >= got["largest_mb"]


def test_a_failing_command_is_an_error_naming_its_log(tmp_path):
    with pytest.raises(RuntimeError, match="log"):
        run_measured([sys.executable, "-c", "raise SystemExit(3)"], log_path=tmp_path / "log")


def test_the_report_gives_ratios_from_the_same_run():
    row = {"wall_s": 10.0, "cpu_s": 15.0, "largest_mb": 600.0, "tree_mb": 1200.0}
    result = {
        "machine": {"cpu_model": "test CPU", "memory_gb": 8}, "cpus": 2, "source": "x.ogg", "repeats": 1, "bench_s": 60.0,
        "summary": [{"contender": "streamer", "shape": "1 x 16 min", "rtf": 96.0, **row},
                    {"contender": "BirdNET-Analyzer", "shape": "1 x 16 min", "rtf": 32.0, **row}],
        "ceiling": {"processes": 2, "rtf": 192.0, "ms_per_window": 31.0},
    }
    text = birdnet_markdown(result)
    assert "| 1 x 16 min | streamer | 10.0 | 96x |" in text
    assert "streamer 3.00x BirdNET-Analyzer's real-time factor, 0.50 of the ceiling" in text
