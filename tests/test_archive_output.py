"""Archive score files: wide and top-k, Parquet and CSV, atomic."""

import numpy as np
import pandas as pd
import pytest

from streamer.archive.output import ScoreWriter

CLASSES = ("a", "b", "c")


def _probs(n, seed):
    return np.random.default_rng(seed).random((n, 3), dtype=np.float32)


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_wide_rows_over_two_chunks(tmp_path, fmt):
    out = tmp_path / "sub" / f"rec.ogg.{fmt}"
    w = ScoreWriter(out, "site/rec.ogg", CLASSES, fmt=fmt)
    p1, p2 = _probs(12, 0), _probs(5, 1)
    w.write_chunk(0, p1)
    assert not out.exists()  # nothing under the final name before close
    w.write_chunk(12, p2)
    w.close()
    frame = pd.read_parquet(out) if fmt == "parquet" else pd.read_csv(out)
    assert list(frame.columns) == ["file", "window", "start_s", "end_s", *CLASSES]
    assert frame["window"].tolist() == list(range(17))
    assert frame["start_s"].tolist() == [5.0 * i for i in range(17)] and frame["end_s"].iloc[-1] == 85.0
    assert (frame["file"] == "site/rec.ogg").all()
    np.testing.assert_allclose(frame[list(CLASSES)].to_numpy(np.float32), np.concatenate([p1, p2]), rtol=1e-6)
    assert not list(out.parent.glob(".*.tmp"))


def test_top_k_long_format(tmp_path):
    out = tmp_path / "rec.parquet"
    w = ScoreWriter(out, "rec", CLASSES, top_k=2)
    w.write_chunk(0, np.array([[0.1, 0.9, 0.5], [0.7, 0.2, 0.3]], np.float32))
    w.close()
    frame = pd.read_parquet(out)
    assert frame[["window", "rank", "class"]].values.tolist() == [[0, 1, "b"], [0, 2, "c"], [1, 1, "a"], [1, 2, "c"]]
    np.testing.assert_allclose(frame["score"], [0.9, 0.5, 0.7, 0.3], rtol=1e-6)


def test_abort_leaves_nothing(tmp_path):
    out = tmp_path / "rec.parquet"
    w = ScoreWriter(out, "rec", CLASSES)
    w.write_chunk(0, _probs(3, 2))
    w.abort()
    assert not out.exists() and not list(tmp_path.iterdir())


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="format"):
        ScoreWriter(tmp_path / "x", "x", CLASSES, fmt="xlsx")
    with pytest.raises(ValueError, match="top_k"):
        ScoreWriter(tmp_path / "x", "x", CLASSES, top_k=4)
    w = ScoreWriter(tmp_path / "x.parquet", "x", CLASSES)
    with pytest.raises(ValueError, match="expected"):
        w.write_chunk(0, np.zeros((2, 2)))
    w.abort()


def test_row_groups_hold_an_hour_so_long_files_keep_a_small_footer(tmp_path):
    """A Parquet writer keeps each row group's metadata until it closes the file, and writes it
    into the footer: one group per hour of windows (not per 60-s chunk) keeps both small for a
    day-long recording."""
    import pyarrow.parquet as pq

    from streamer.archive.output import ROW_GROUP_WINDOWS, EmbeddingWriter

    classes = tuple(f"c{j}" for j in range(234))
    n_chunks = 2 * ROW_GROUP_WINDOWS // 12 + 5  # two hours and five minutes
    scores, emb = tmp_path / "rec.parquet", tmp_path / "rec.emb.parquet"
    w, e = ScoreWriter(scores, "rec", classes), EmbeddingWriter(emb, "rec", dim=8)
    rng = np.random.default_rng(0)
    probs = rng.random((n_chunks * 12, len(classes)), dtype=np.float32)
    for i in range(n_chunks):
        w.write_chunk(12 * i, probs[12 * i : 12 * (i + 1)])
        e.write_chunk(12 * i, probs[12 * i : 12 * (i + 1), :8])
    w.close()
    e.close()
    for path in (scores, emb):
        meta = pq.ParquetFile(path).metadata
        assert [meta.row_group(g).num_rows for g in range(meta.num_row_groups)] == [ROW_GROUP_WINDOWS, ROW_GROUP_WINDOWS, 60]
    frame = pd.read_parquet(scores)
    assert frame["window"].tolist() == list(range(n_chunks * 12))
    np.testing.assert_array_equal(frame[list(classes)].to_numpy(np.float32), probs)
    # One group per chunk made the footer alone about 0.2 MB per minute of audio at 234 classes.
    assert pq.ParquetFile(scores).metadata.serialized_size < 1_000_000
