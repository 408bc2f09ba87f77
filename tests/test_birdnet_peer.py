"""``--recipe birdnet`` against BirdNET-Analyzer 2.4.0's own outputs (the committed fixture in
``tests/data/birdnet_peer/``; how it was made: its README and ``benchmarks/birdnet_peer/``).

On real recordings of 22, 32, 44.1 (stereo) and 48 kHz, a 16-minute one among them (longer
than the peer's 600-s resampling pieces, and split across workers here), and on silence and
white noise: the same detections at the peer's default threshold with confidences within 1e-4
(the peer prints 4 decimals), the same Raven selections, the same rows down to a confidence of
0.01, the same sensitivity shifts, and the same 1024-d embeddings.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import needs_birdnet
from streamer import cli

HERE = Path(__file__).parent
AUDIO = HERE / "data" / "audio"
PACKAGE_AUDIO = HERE.parent / "streamer" / "data" / "audio"  # the OpenSoundscape clip and the competition-named files
PEER = HERE / "data" / "birdnet_peer"
RECORDINGS = ("birds_10s_32k.ogg", "BC2026_Test_0002_S90_20190522_060000.ogg", "jura_dawn_44k1_stereo.flac",
              "jura_excerpt_48k.flac", "jura_S4A03895_20190522_24h_16min_22k.ogg")
SYNTHETIC = ("silence_20s_48k.wav", "white_noise_20s_48k.wav")
LONG = "jura_S4A03895_20190522_24h_16min_22k.ogg"
#: Both sides print 4 decimals: one unit of the last digit (values a hair apart can round apart).
TOLERANCE = 1e-4 + 1e-9

pytestmark = needs_birdnet


def _white_noise() -> np.ndarray:
    """The peer fixture's white noise, rebuilt bit for bit (benchmarks/birdnet_peer/make_audio.py):
    PCG64's raw stream is the same in every NumPy version."""
    raw = np.random.PCG64(20261207).random_raw(20 * 48000).astype(np.uint64)
    s = ((raw >> np.uint64(32)) * np.uint64(2 * 5677 + 1)) >> np.uint64(32)
    return (s.astype(np.int64) - 5677).astype(np.int16)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    import soundfile as sf

    folder = tmp_path_factory.mktemp("peer-inputs")
    for name in RECORDINGS:
        shutil.copy(AUDIO / name if (AUDIO / name).is_file() else PACKAGE_AUDIO / name, folder / name)
    sf.write(folder / "silence_20s_48k.wav", np.zeros(20 * 48000, np.int16), 48000, subtype="PCM_16")
    sf.write(folder / "white_noise_20s_48k.wav", _white_noise(), 48000, subtype="PCM_16")
    return folder


def _run(tmp_path_factory, inputs: Path, names, *flags) -> Path:
    folder = tmp_path_factory.mktemp("in")
    for name in names:
        (folder / name).symlink_to(inputs / name)
    out = tmp_path_factory.mktemp("out")
    assert cli.main(["archive", "--recipe", "birdnet", str(folder), "--out", str(out), *flags]) == 0
    return out / folder.name  # the input folder's name leads its files' relative paths


def _stem(name: str) -> str:
    return name.rsplit(".", 1)[0]


def _csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _keyed(rows, score: str) -> dict:
    return {(float(r["Start (s)"]), float(r["End (s)"]), r["Scientific name"]): float(r[score]) for r in rows}


def _same_detections(ours: dict, theirs: dict, threshold: float, where: str) -> None:
    """Same rows, confidences within TOLERANCE; a row only one side has must sit within
    TOLERANCE of the threshold (the peer rounds to 4 decimals)."""
    for key in ours.keys() | theirs.keys():
        if key in ours and key in theirs:
            assert abs(ours[key] - theirs[key]) <= TOLERANCE, (where, key, ours[key], theirs[key])
        else:
            score = ours.get(key, theirs.get(key))
            assert abs(score - threshold) <= TOLERANCE, (where, key, "only in " + ("ours" if key in ours else "the peer's"), score)


@pytest.fixture(scope="module")
def default_csv(tmp_path_factory, inputs) -> Path:
    return _run(tmp_path_factory, inputs, RECORDINGS + SYNTHETIC, "--format", "csv")


@pytest.mark.parametrize("name", RECORDINGS + SYNTHETIC)
def test_detections_at_the_default_threshold_equal_the_peers(default_csv, name):
    ours = _csv(default_csv / f"{name}.csv")
    theirs = _csv(PEER / "defaults" / f"{_stem(name)}.BirdNET.results.csv")
    _same_detections(_keyed(ours, "Confidence"), _keyed(theirs, "Confidence"), 0.25, name)
    # the same order: by start, then confidence from the highest
    assert [(r["Start (s)"], r["Scientific name"]) for r in ours] == [(r["Start (s)"], r["Scientific name"]) for r in theirs]
    with open(default_csv / f"{name}.csv", encoding="utf-8") as handle:
        assert handle.readline().strip() == "Start (s),End (s),Scientific name,Common name,Confidence,File"


def test_raven_tables_hold_the_peers_selections(tmp_path_factory, inputs):
    names = tuple(n for n in RECORDINGS + SYNTHETIC if n != LONG)
    out = _run(tmp_path_factory, inputs, names, "--format", "raven")
    for name in names:
        ours = _csv_tab(out / f"{name}.selections.txt")
        theirs = _csv_tab(PEER / "defaults" / f"{_stem(name)}.BirdNET.selection.table.txt")
        assert list(ours[0].keys()) == list(theirs[0].keys()), name
        assert len(ours) == len(theirs), name
        for a, b in zip(ours, theirs):
            same = ("Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)", "High Freq (Hz)",
                    "Common Name", "File Offset (s)")
            assert [a[k] for k in same] == [b[k] for k in same], (name, a, b)
            assert abs(float(a["Confidence"]) - float(b["Confidence"])) <= TOLERANCE, (name, a, b)


def _csv_tab(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def test_every_score_down_to_0_01_equals_the_peers(tmp_path_factory, inputs):
    """Full-precision scores (Parquet) against the peer's rows at --min_conf 0.01."""
    import pyarrow.parquet as pq

    out = _run(tmp_path_factory, inputs, RECORDINGS + SYNTHETIC, "--format", "parquet", "--min-score", "0.0099")
    for name in RECORDINGS + SYNTHETIC:
        table = pq.read_table(out / f"{name}.parquet").to_pylist()
        theirs = _keyed(_csv(PEER / "min_conf_0.01" / f"{_stem(name)}.BirdNET.results.csv"), "Confidence")
        ours = {(round(r["start_s"], 2), round(r["end_s"], 2), r["scientific_name"]): r["score"]
                for r in table if r["score"] >= 0.01 - TOLERANCE}
        _same_detections(ours, theirs, 0.01, name)
        assert len(theirs) > 0 or name.startswith("silence")


@pytest.mark.parametrize("sensitivity", ("1.25", "0.75"))
def test_the_sensitivity_shifts_scores_as_the_peers(tmp_path_factory, inputs, sensitivity):
    name = "BC2026_Test_0002_S90_20190522_060000.ogg"
    folder = PEER / f"sensitivity_{sensitivity}"
    if not folder.is_dir():
        pytest.skip(f"no peer fixture for sensitivity {sensitivity}")
    out = _run(tmp_path_factory, inputs, (name,), "--format", "csv", "--sensitivity", sensitivity, "--min-score", "0.0099",
               "--engine", "sequential")
    ours = {k: v for k, v in _keyed(_csv(out / f"{name}.csv"), "Confidence").items() if v >= 0.01 - TOLERANCE}
    theirs = _keyed(_csv(folder / f"{_stem(name)}.BirdNET.results.csv"), "Confidence")  # made at --min_conf 0.01
    _same_detections(ours, theirs, 0.01, name)
    assert len(theirs) > 10


def test_embeddings_equal_the_peers_1024_d_layer(tmp_path_factory, inputs):
    import pyarrow.parquet as pq

    names = ("birds_10s_32k.ogg", "jura_dawn_44k1_stereo.flac")
    out = _run(tmp_path_factory, inputs, names, "--labels", "none", "--embeddings", "--engine", "sequential")
    for name in names:
        theirs = np.load(PEER / "embeddings" / f"{_stem(name)}.embeddings.npy")
        table = pq.read_table(out.parent / "_embeddings" / out.name / f"{name}.parquet")
        ours = np.asarray(table.column("embedding").combine_chunks().flatten()).reshape(table.num_rows, -1)
        assert ours.shape == theirs.shape, name
        np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0, err_msg=name)
