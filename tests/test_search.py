"""``streamer search``: an archive's stored embeddings searched by example, with BirdNET 2.4
(a model that hears birds) on real recordings."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from conftest import JURA_16MIN, birdnet_archive, needs_birdnet
from streamer import cli

AUDIO = Path(__file__).parent / "data" / "audio"
EXCERPT = AUDIO / "jura_excerpt_48k.flac"  # 30 s at 48 kHz: ten 3-s windows
LONG = JURA_16MIN

pytestmark = needs_birdnet


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    return birdnet_archive(tmp_path_factory, [EXCERPT, LONG], "--labels", "none", "--embeddings", "--embeddings-dtype", "float16")


def _clip(tmp_path: Path, name: str, start_s: float, *, rate: int = 48000, gain: float = 1.0, snr_db: float | None = None) -> Path:
    import soundfile as sf
    import soxr

    x, sr = sf.read(EXCERPT, dtype="float32")
    x = x[int(start_s * sr): int((start_s + 3) * sr)] * gain
    if snr_db is not None:  # white noise at this SNR to the recording's sound (its DC offset left out)
        noise = np.random.default_rng(5).standard_normal(x.shape[0]).astype(np.float32)
        noise *= np.sqrt(np.mean((x - x.mean()) ** 2) / np.mean(noise ** 2) / 10 ** (snr_db / 10))
        x = x + noise
    if rate != sr:
        x = soxr.resample(x, sr, rate).astype(np.float32)
    path = tmp_path / name
    sf.write(path, x, rate, subtype="FLOAT")
    return path


def _search(archive: Path, out: Path, *queries, top: int = 5) -> list[dict]:
    assert cli.main(["search", str(archive), *map(str, queries), "--top", str(top), "--out", str(out)]) == 0
    with open(out, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_a_clip_cut_from_a_recording_finds_its_own_window_first(archive, tmp_path):
    hits = _search(archive, tmp_path / "hits.csv", _clip(tmp_path, "clip.wav", 6.0))
    first = hits[0]
    assert (first["rank"], Path(first["file"]).name, float(first["start_s"])) == ("1", EXCERPT.name, 6.0)
    assert float(first["similarity"]) > 0.999  # float16 storage
    assert [h["rank"] for h in hits] == ["1", "2", "3", "4", "5"]
    assert (tmp_path / "hits.selections.txt").read_text().startswith("Selection\tView\tChannel")


@pytest.mark.parametrize("change", ["noise at 10 dB SNR", "gain x0.3", "resampled to 44.1 kHz"])
def test_the_same_call_changed_stays_in_the_top_5(archive, tmp_path, change):
    kwargs = {"noise at 10 dB SNR": {"snr_db": 10.0}, "gain x0.3": {"gain": 0.3},
              "resampled to 44.1 kHz": {"rate": 44100}}[change]
    hits = _search(archive, tmp_path / "hits.csv", _clip(tmp_path, "clip.wav", 12.0, **kwargs))
    own = [h for h in hits if Path(h["file"]).name == EXCERPT.name and float(h["start_s"]) == 12.0]
    assert own, f"{change}: the clip's own window is not in the top 5: {hits}"


def test_a_stored_window_is_a_query_and_finds_itself(archive, tmp_path):
    hits = _search(archive, tmp_path / "hits.csv", f"{EXCERPT.name}@7.5", top=3)
    assert Path(hits[0]["file"]).name == EXCERPT.name and float(hits[0]["start_s"]) == 6.0
    assert abs(float(hits[0]["similarity"]) - 1.0) < 1e-6
    assert hits[0]["query"] == f"{EXCERPT.name}@7.5"


def test_mistakes_are_one_line(archive, tmp_path, capsys):
    cases = [
        ([str(tmp_path), str(EXCERPT)], "no embeddings here"),
        ([str(archive), "nowhere.wav"], "no such audio file"),
        ([str(archive), f"{EXCERPT.name}@9999"], "no stored window"),
        ([str(archive), str(EXCERPT), "--model", str(LONG)], "SHA-256 differs"),
    ]
    for args, words in cases:
        assert cli.main(["search", *args]) == 2, args
        err = capsys.readouterr().err
        assert words in err and len(err.strip().splitlines()) == 1, (args, err)
