"""``streamer search`` against a brute-force reference, no model needed: stored rows of small
integers (so every similarity is computed exactly and ties are real ties), spread over files
of both stored dtypes and over several Parquet batches per file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from streamer.archive.output import EmbeddingWriter
from streamer.archive.search import SEARCH_BATCH_ROWS, Query, search

DIM = 16


def _archive(folder: Path) -> list[tuple[str, np.ndarray]]:
    """Three files (float16, float32, float16), the first over three batches; returns each
    file's label and rows."""
    rng = np.random.default_rng(7)
    files = []
    for k, (n, dtype) in enumerate(((2 * SEARCH_BATCH_ROWS + 50, "float16"), (40, "float32"), (300, "float16"))):
        rows = rng.integers(0, 4, size=(n, DIM)).astype(np.float32)
        rows[:, 0] = rng.integers(0, 3, size=n)
        files.append((f"rec_{k}.flac", rows))
    first, second, third = (rows for _, rows in files)
    exact = np.zeros(DIM, np.float32)
    exact[0] = 5.0  # the query's direction: a tie of similarity 1 in every file, and twice in the first
    for rows, at in ((third, 10), (second, 7), (first, SEARCH_BATCH_ROWS + 3), (first, 2 * SEARCH_BATCH_ROWS + 1)):
        rows[at] = exact
    first[4] = 0.0  # an all-zero window matches nothing (similarity 0)
    for k, ((label, rows), dtype) in enumerate(zip(files, ("float16", "float32", "float16"))):
        writer = EmbeddingWriter(folder / "_embeddings" / f"{label}.parquet", label, dtype=dtype, dim=DIM, window_s=5.0)
        for start in range(0, rows.shape[0], 12):  # 60-s chunks, as the archive writes them
            writer.write_chunk(start, rows[start: start + 12])
        writer.close()
    return files


def _reference(files, queries: np.ndarray, top: int) -> list[list[tuple]]:
    """Each query's best ``(label, start, similarity)``: float64, ties to the earlier file, then window."""
    out = []
    for q in queries.astype(np.float64):
        items = []
        for k, (label, rows) in enumerate(files):
            norms = np.linalg.norm(rows.astype(np.float64), axis=1)
            sims = np.where(norms > 0, rows @ q / np.where(norms > 0, norms, 1), 0.0)
            items += [(-s, k, i, label) for i, s in enumerate(sims)]
        out.append([(label, i * 5.0, -s) for s, _, i, label in sorted(items)[:top]])
    return out


@pytest.mark.parametrize("threads", [1, 2])
def test_search_equals_brute_force_with_ties_across_files_and_batches(tmp_path, threads):
    files = _archive(tmp_path)
    rng = np.random.default_rng(1)
    axis = np.eye(DIM, dtype=np.float32)[:1]  # ties at 1; and its opposite: ties at 0, the all-zero window among them
    vectors = np.vstack([axis, -axis, rng.standard_normal((3, DIM)).astype(np.float32)])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    top = 25
    hits = search(tmp_path, [Query(f"q{j}", v) for j, v in enumerate(vectors)], top=top, threads=threads)
    want = _reference(files, vectors, top)
    for j, expected in enumerate(want):
        got = [h for h in hits if h["query"] == f"q{j}"]
        assert [h["rank"] for h in got] == list(range(1, top + 1))
        assert [(h["file"], h["start_s"]) for h in got] == [(label, start) for label, start, _ in expected], f"q{j}"
        np.testing.assert_allclose([h["similarity"] for h in got], [s for _, _, s in expected], rtol=0, atol=1e-6)
    ties = [(h["file"], h["start_s"], h["similarity"]) for h in hits if h["query"] == "q0"][:4]
    assert ties == [("rec_0.flac", (SEARCH_BATCH_ROWS + 3) * 5.0, 1.0), ("rec_0.flac", (2 * SEARCH_BATCH_ROWS + 1) * 5.0, 1.0),
                    ("rec_1.flac", 35.0, 1.0), ("rec_2.flac", 50.0, 1.0)]
    assert ("rec_0.flac", 20.0, 0.0) in [(h["file"], h["start_s"], h["similarity"]) for h in hits if h["query"] == "q1"]


def test_a_tie_at_the_bar_goes_to_the_earlier_file_whichever_file_is_read_first():
    import pyarrow as pa

    from streamer.archive.search import _Best

    def batch(label):
        return pa.record_batch({"file": [label] * 3, "start_s": [0.0, 5.0, 10.0], "end_s": [5.0, 10.0, 15.0]})

    best = _Best(1, 2)
    sims = np.array([[0.5], [0.75], [0.5]], np.float32)
    best.offer(sims, 2, 0, batch("late.flac"))  # the later file first (threads finish in any order)
    best.offer(sims, 0, 0, batch("early.flac"))
    assert [(t[3], t[4], -t[0]) for t in best.kept[0]] == [("early.flac", 5.0, 0.75), ("late.flac", 5.0, 0.75)]
    best.offer(np.array([[0.75], [0.75], [0.25]], np.float32), 1, 3, batch("middle.flac"))  # rows 3, 4 of file 1
    assert [(t[1], t[2]) for t in best.kept[0]] == [(0, 1), (1, 3)]
