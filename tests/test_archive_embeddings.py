"""`streamer archive --embeddings`: each window's Perch embedding, exactly as Perch gave it
(float32) or rounded to float16, one Parquet file per input under ``_embeddings/``; the folder
reads back as one table with one row per window, and the score files still read as theirs."""

import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from streamer import cli
from streamer.archive.output import EMBEDDINGS_FOLDER
from streamer.audio import write_audio
from streamer.config import InferConfig

from conftest import perch_by_chunk


def _args(kit, out, src, *extra):
    return ["archive", str(src), "--out", str(out), "--data-dir", str(kit.data_dir), "--perch", str(kit.perch_onnx),
            "--moe-dir", str(kit.moe_dir), "--no-cnn", "--no-crnn", "--engine", "sequential", "--threads", "1", *extra]


@pytest.fixture
def src(tmp_path):
    folder = tmp_path / "in"
    (folder / "site1").mkdir(parents=True)
    rng = np.random.default_rng(3)
    t = np.arange(32000 * 70) / 32000
    write_audio(folder / "site1" / "a.flac", 0.05 * np.sin(2 * np.pi * 900 * t) + 0.02 * rng.standard_normal(t.size), 32000)
    write_audio(folder / "b.flac", 0.03 * rng.standard_normal(32000 * 12), 32000)  # 3 windows, the last one partial
    return folder


def test_float32_embeddings_are_perchs_output_and_read_as_one_table(kit, src, tmp_path):
    out = tmp_path / "out"
    assert cli.main(_args(kit, out, src, "--embeddings")) == 0
    table = ds.dataset(out / EMBEDDINGS_FOLDER, format="parquet").to_table()
    assert table.num_rows == 14 + 3  # 70 s -> 14 windows, 12 s -> 3 windows: one row per window
    assert table.schema.field("embedding").type.value_type.bit_width == 32
    for rel, path in (("in/site1/a.flac", src / "site1" / "a.flac"), ("in/b.flac", src / "b.flac")):
        part = pq.read_table(out / EMBEDDINGS_FOLDER / f"{rel}.parquet")
        assert part.column("file").to_pylist() == [rel] * part.num_rows
        assert part.column("window").to_pylist() == list(range(part.num_rows))
        np.testing.assert_array_equal(part.column("start_s").to_numpy(), 5.0 * np.arange(part.num_rows))
        stored = np.stack(part.column("embedding").to_numpy(zero_copy_only=False))
        np.testing.assert_array_equal(stored, perch_by_chunk(kit, path)[0])  # exactly
    scores = ds.dataset(out, format="parquet").to_table()  # the scores alone: _embeddings is skipped
    assert scores.num_rows == 17 and "embedding" not in scores.column_names


def test_float16_embeddings_are_rounded_and_half_the_size(kit, src, tmp_path):
    full, half = tmp_path / "f32", tmp_path / "f16"
    assert cli.main(_args(kit, full, src, "--embeddings")) == 0
    assert cli.main(_args(kit, half, src, "--embeddings-dtype", "float16")) == 0
    rel = f"{EMBEDDINGS_FOLDER}/in/site1/a.flac.parquet"
    a = np.stack(pq.read_table(full / rel).column("embedding").to_numpy(zero_copy_only=False))
    b = np.stack(pq.read_table(half / rel).column("embedding").to_numpy(zero_copy_only=False))
    assert b.dtype == np.float16
    np.testing.assert_array_equal(b, a.astype(np.float16))  # float16 rounding of the same values
    assert (half / rel).stat().st_size < 0.7 * (full / rel).stat().st_size


def test_embeddings_are_part_of_the_configuration(kit, src, tmp_path, caplog):
    out = tmp_path / "out"
    assert cli.main(_args(kit, out, src)) == 0
    with caplog.at_level("ERROR"):
        assert cli.main(_args(kit, out, src, "--embeddings")) == 2
    assert "embeddings: null → \"float32\"" in caplog.text
    assert cli.main(_args(kit, out, src, "--embeddings", "--overwrite")) == 0
    assert (out / EMBEDDINGS_FOLDER / "in" / "b.flac.parquet").is_file()
    # A lost embedding file makes its input be scored again on resume.
    (out / EMBEDDINGS_FOLDER / "in" / "b.flac.parquet").unlink()
    assert cli.main(_args(kit, out, src, "--embeddings")) == 0
    assert (out / EMBEDDINGS_FOLDER / "in" / "b.flac.parquet").is_file()


def test_embeddings_with_the_local_engine_equal_the_sequential_ones(kit, src, tmp_path):
    seq, local = tmp_path / "seq", tmp_path / "local"
    assert cli.main(_args(kit, seq, src, "--embeddings")) == 0
    args = _args(kit, local, src, "--embeddings")
    args[args.index("sequential")] = "local"
    assert cli.main(args + ["--workers", "2"]) == 0
    for rel in ("in/site1/a.flac", "in/b.flac"):
        a = pq.read_table(seq / EMBEDDINGS_FOLDER / f"{rel}.parquet")
        b = pq.read_table(local / EMBEDDINGS_FOLDER / f"{rel}.parquet")
        assert a.equals(b)


def test_config_rejects_an_unknown_dtype():
    from streamer.config import ArchiveSettings
    from streamer.errors import ConfigError

    with pytest.raises(ConfigError, match="embeddings-dtype"):
        ArchiveSettings(out_dir="x", embeddings="int8")
    assert InferConfig  # the archive's settings sit beside infer's
