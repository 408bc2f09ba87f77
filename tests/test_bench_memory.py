"""``bench``'s memory columns are each contender's own: a contender runs as a child of the
bench process, and Linux's ``ru_maxrss`` of a child starts at its parent's resident size, so
reading it made every engine's "parent MB" the bench process's own size (~840 MB)."""

import json
import subprocess
import sys
import textwrap

import pytest

#: The size the stand-in for the bench process is blown up to: far above what a contender's
#: parent holds with the small stand-ins.
BALLAST_MB = 1500


@pytest.mark.parametrize("engine_args, key", [
    (("--workers", "1", "--threads", "1", "--decoders", "1"), "parent"),
    (("--engine", "sequential"), "process"),
], ids=["pipeline", "sequential"])
def test_a_contender_s_memory_is_its_own_not_the_bench_process_s(kit, tmp_path, engine_args, key):
    script = textwrap.dedent(f"""
        import json
        from pathlib import Path

        ballast = b"\\x01" * ({BALLAST_MB} << 20)  # a big bench process, every page touched
        from streamer.bench.runner import BenchModels, default_audio_dir, make_inputs, run_infer_subprocess

        models = BenchModels(perch=Path({str(kit.perch_onnx)!r}), moe_dir=Path({str(kit.moe_dir)!r}),
                             data_dir=Path({str(kit.data_dir)!r}), description="small stand-ins")
        work = Path({str(tmp_path)!r})
        data = make_inputs(models, default_audio_dir(), 2, work)
        run = run_infer_subprocess(models, data, {engine_args!r}, work, "cheap")
        print(json.dumps(run["peak_rss_mb"]))
        """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    peaks = json.loads(done.stdout.strip().splitlines()[-1])
    assert 0 < peaks[key] < BALLAST_MB, peaks
    assert all(0 < mb < BALLAST_MB for mb in peaks.values()), peaks
