"""The chunks an archive task keeps as it goes (streamer.archive.checkpoint): what a stopped
task leaves is read back to its last whole chunk, a run made for another version of the input
is not used, and the queue plans only what is missing. Whole runs stopped and resumed are in
test_faults_archive.py."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from streamer.archive import checkpoint
from streamer.archive.checkpoint import RunWriter, coverage, header_of, load_run, part_of, prune, runs_of
from streamer.archive.journal import FileKey
from streamer.archive.ranges import WorkQueue
from streamer.archive.scorer import ArchiveTask, TaskResult

C, D, W = 3, 4, 12  # classes, embedding width, windows per chunk


def _rows(index: int, n: int = W):
    rng = np.random.default_rng(index)
    return rng.random((n, C), dtype=np.float32), rng.standard_normal((n, D)).astype(np.float32)


@pytest.fixture
def recording(tmp_path):
    path = tmp_path / "in" / "a.flac"
    path.parent.mkdir()
    path.write_bytes(b"not audio; only its size and time matter here")
    return path


def _writer(folder: Path, path: Path, first: int = 0, widths=(C, D)) -> RunWriter:
    return RunWriter(part_of(folder, "a.flac", first), header_of("a.flac", FileKey.of(path), first, widths, 32000), "a.flac")


def _write(folder, path, chunks, first=0, eof=False):
    run = _writer(folder, path, first)
    for index in chunks:
        probs, emb = _rows(index)
        run.append(index, probs, emb, W * 160000)
    if eof:
        run.reached_end()
    run.close()
    return run.part


def test_a_run_is_read_back_chunk_by_chunk(tmp_path, recording):
    part = _write(tmp_path, recording, range(3), eof=True)
    run = load_run(part)
    assert [(r.index, r.row, r.windows) for r in run.records] == [(0, 0, W), (1, W, W), (2, 2 * W, W)] and run.eof
    np.testing.assert_array_equal(run.rows(0)[W:2 * W], _rows(1)[0])
    np.testing.assert_array_equal(run.rows(1)[2 * W:], _rows(2)[1])
    assert oct(Path(str(part) + checkpoint.RECORDS_SUFFIX).stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask():
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("damage,kept", [
    ("torn line", 2),  # the last line cut short by a kill
    ("rows without their line", 2),  # killed between a chunk's rows and its line
    ("rows lost", 1),  # the line survived a power cut, the rows did not
    ("flipped byte", 1),  # the rows of chunk 1 changed on disk: its CRC does not match
])
def test_a_run_is_cut_at_its_first_chunk_not_whole_on_disk(tmp_path, recording, damage, kept):
    part = _write(tmp_path, recording, range(3))
    records = Path(str(part) + checkpoint.RECORDS_SUFFIX)
    scores = Path(str(part) + checkpoint.SCORES_SUFFIX)
    if damage == "torn line":
        records.write_bytes(records.read_bytes()[:-7])
    elif damage == "rows without their line":
        lines = records.read_bytes().splitlines(keepends=True)
        records.write_bytes(b"".join(lines[:-1]))
    elif damage == "rows lost":
        scores.write_bytes(scores.read_bytes()[: (W + W // 2) * C * 4])
    else:
        data = bytearray(scores.read_bytes())
        data[W * C * 4 + 5] ^= 0xFF
        scores.write_bytes(bytes(data))
    run = load_run(part)
    assert len(run.records) == kept and not run.eof
    # Going on appends after the whole chunks: what followed them is cut first.
    writer = _writer(tmp_path, recording)
    assert writer.n_chunks == kept
    for index in range(kept, 4):
        writer.append(index, *_rows(index), W * 160000)
    writer.close()
    again = load_run(part)
    assert [r.index for r in again.records] == [0, 1, 2, 3]
    np.testing.assert_array_equal(again.rows(0), np.concatenate([_rows(i)[0] for i in range(4)]))
    np.testing.assert_array_equal(again.rows(1), np.concatenate([_rows(i)[1] for i in range(4)]))


def test_a_run_of_another_version_of_the_input_is_not_used(tmp_path, recording):
    part = _write(tmp_path, recording, range(2))
    recording.write_bytes(b"the recording changed: another size")
    assert runs_of(tmp_path, "a.flac", FileKey.of(recording), (C, D), 32000) == []
    writer = _writer(tmp_path, recording)  # starts afresh over the old run's files
    assert writer.n_chunks == 0
    writer.close()
    assert load_run(part).records == []
    with pytest.raises(RuntimeError, match="chunk 3 came where chunk 0 was due"):
        _writer(tmp_path, recording).append(3, *_rows(3), 1)


def test_coverage_of_runs_with_gaps_and_overlaps(tmp_path, recording):
    folder = tmp_path / "parts"
    _write(folder, recording, range(0, 4))
    _write(folder, recording, range(6, 8), first=6)
    key = FileKey.of(recording)
    held = coverage(runs_of(folder, "a.flac", key, (C, D), 32000))
    assert held.gaps == [(4, 6), (8, None)] and held.kept_chunks == 6 and not held.complete
    _write(folder, recording, range(3, 6), first=3)  # overlaps chunk 3 of the first run
    _write(folder, recording, range(8, 9), first=8, eof=True)
    held = coverage(runs_of(folder, "a.flac", key, (C, D), 32000))
    assert held.complete and held.kept_chunks == 9
    assert [(run.first, [r.index for r in records]) for run, records in held.pieces] == [
        (0, [0, 1, 2, 3]), (3, [4, 5]), (6, [6, 7]), (8, [8])]


def test_prune_keeps_only_runs_a_later_run_can_use(tmp_path):
    folder = tmp_path / "parts"
    inputs = {}
    for name in ("keep", "done", "changed", "gone"):
        path = tmp_path / f"{name}.flac"
        path.write_bytes(name.encode())
        inputs[name] = path
        RunWriter(part_of(folder, name, 0), header_of(name, FileKey.of(path), 0, (C, D), 32000), name).close()
    (folder / ".x.chunks.jsonl.123.abc.tmp").write_text("")  # a killed run's temporary file
    (folder / "0123456789abcdef0123.000000.scores.f32").write_bytes(b"")  # rows without a records file
    inputs["changed"].write_bytes(b"longer than before")
    inputs["gone"].unlink()
    done_key = FileKey.of(inputs["done"])
    assert prune(folder, lambda path, key: key == done_key) == 4
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        part_of(folder, "keep", 0).name + suffix for suffix in (".chunks.jsonl", ".scores.f32", ".embeddings.f32"))


def _task(tmp_path, recording, audio_s=600.0):
    return ArchiveTask(path=recording, rel="a.flac", out=tmp_path / "out" / "a.flac.parquet", when=None, audio_s=audio_s,
                       key=FileKey.of(recording), embeddings_out=tmp_path / "out" / "emb.parquet", embedding_dim=D)


def test_the_queue_plans_only_the_chunks_not_kept(tmp_path, recording):
    out = tmp_path / "out"
    folder = checkpoint.parts_dir(out)
    _write(folder, recording, range(0, 4))
    _write(folder, recording, range(5, 7), first=5)
    labels = SimpleNamespace(codes=tuple("abc"))
    task = _task(tmp_path, recording)  # 10 chunks
    work = WorkQueue([task], None, None, labels, out_dir=out)
    assert work.resumed == {"a.flac": pytest.approx(6 * W * 160000 / 32000)}
    units = work.plan(1)
    assert [(u.span.first, u.span.end, u.span.joins, u.audio_s) for u in units] == [(7, None, False, 180.0), (4, 5, False, 60.0)]
    assert list(work.splits) == ["a.flac"]
    # On two workers the 3-chunk gap is not worth splitting (a range is at least 2 chunks, and 2+1 is no better).
    assert sorted((u.span.first, u.span.end) for u in WorkQueue([task], None, None, labels, out_dir=out).plan(2)) == [(4, 5), (7, None)]
    # Every chunk kept (the run stopped before the files were written): a unit that only writes them.
    _write(folder, recording, range(4, 5), first=4)
    _write(folder, recording, range(7, 10), first=7, eof=True)
    units = WorkQueue([task], None, None, labels, out_dir=out).plan(2)
    assert [(u.span.first, u.span.end, u.span.joins, u.span.scores_nothing) for u in units] == [(10, 10, True, True)]


def test_a_settled_input_drops_its_kept_chunks_unless_it_may_be_retried(tmp_path, recording):
    out = tmp_path / "out"
    folder = checkpoint.parts_dir(out)
    labels = SimpleNamespace(codes=tuple("abc"))
    seen = []
    for result, kept in ((TaskResult("a.flac", False, "the worker scoring it died 3 times"), True),
                         (TaskResult("a.flac", False, "Perch gave non-finite outputs", unscorable=True), False)):
        if folder.is_dir():
            checkpoint.remove_runs(folder, "a.flac")
        _write(folder, recording, range(0, 2))
        work = WorkQueue([_task(tmp_path, recording)], lambda t, r: seen.append(r), None, labels, out_dir=out)
        (unit,) = work.plan(1)
        work.report(unit, result)
        assert seen[-1].kept_s == pytest.approx(2 * W * 5) and bool(list(folder.iterdir())) == kept


@pytest.mark.parametrize("header", [b"", b"not json\n", b'{"format": 1}\n', b"[1, 2]\n", b'{"format": 99, "input": "a"}\n'])
def test_a_records_file_this_version_did_not_write_is_no_run(tmp_path, header):
    part = tmp_path / "0123456789abcdef0123.000000"
    Path(str(part) + checkpoint.RECORDS_SUFFIX).write_bytes(header)
    assert load_run(part) is None
    assert checkpoint.kept_by_input(tmp_path) == {}
    assert prune(tmp_path, lambda path, key: False) == 1 and not list(tmp_path.iterdir())
