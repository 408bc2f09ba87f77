"""``streamer clips``: the audio of detections and search hits, cut for review (BirdNET 2.4 on
real recordings)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from conftest import birdnet_archive, needs_birdnet
from streamer import cli

AUDIO = Path(__file__).parent / "data" / "audio"
EXCERPT = AUDIO / "jura_excerpt_48k.flac"
BIRDS = Path(__file__).parent.parent / "streamer" / "data" / "audio" / "birds_10s_32k.ogg"

pytestmark = needs_birdnet


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    return birdnet_archive(tmp_path_factory, [EXCERPT, BIRDS], "--format", "csv", "--embeddings", "--engine", "sequential")


def _detections(archive: Path) -> list[dict]:
    rows = []
    for table in sorted(archive.rglob("*.csv")):
        if not table.name.startswith("_"):
            with open(table, newline="", encoding="utf-8") as handle:
                rows += list(csv.DictReader(handle))
    return rows


def test_each_classs_best_events_are_cut_with_padding_and_sort_by_class_then_score(archive, tmp_path):
    import soundfile as sf

    out = tmp_path / "review"
    assert cli.main(["clips", str(archive), "--out", str(out), "--per-class", "1", "--pad", "1", "--kaleidoscope"]) == 0
    rows = _detections(archive)
    classes = {r["Common name"] for r in rows}
    clips = sorted(out.glob("*.flac"))
    assert len(clips) == len(classes)  # one per class
    for clip in clips:
        label, score = clip.name.split("_")[:2]
        best = max(float(r["Confidence"]) for r in rows if r["Common name"].replace(" ", "-") == label)
        assert float(score) == pytest.approx(best, abs=1e-4)
        info = sf.info(str(clip))
        assert info.samplerate in (32000, 48000) and 3.0 <= info.duration <= 5.0 + 1e-3
    # the warbler at 0-3 s in the 10-s clip: padding stops at the recording's start (4 s of audio)
    warbler = next(c for c in clips if c.name.startswith("Black-and-white-Warbler"))
    assert abs(sf.info(str(warbler)).duration - 4.0) < 1e-3
    data, rate = sf.read(str(warbler), dtype="float32")
    source, _ = sf.read(str(BIRDS), dtype="float32", frames=4 * 32000)
    assert np.max(np.abs(data - source)) < 1e-4  # 16-bit FLAC of the recording's own samples
    with open(out / "kaleidoscope.csv", newline="") as handle:
        kal = list(csv.DictReader(handle))
    assert list(kal[0].keys()) == ["INDIR", "FOLDER", "IN FILE", "OFFSET", "DURATION", "TOP1MATCH", "TOP1DIST"]
    assert len(kal) == len(clips)
    same = tmp_path / "same"  # --format kaleidoscope is the same table
    assert cli.main(["clips", str(archive), "--out", str(same), "--per-class", "1", "--pad", "1", "--format", "kaleidoscope"]) == 0
    assert (same / "kaleidoscope.csv").read_bytes() == (out / "kaleidoscope.csv").read_bytes()


def test_a_seeded_sample_adds_other_events_the_same_way_every_time(archive, tmp_path):
    runs = []
    for n in (1, 2):
        out = tmp_path / f"r{n}"
        assert cli.main(["clips", str(archive), "--out", str(out), "--per-class", "1", "--sample", "2", "--seed", "3", "--audio", "wav"]) == 0
        runs.append(sorted(p.name for p in out.glob("*.wav")))
    assert runs[0] == runs[1] and len(runs[0]) > len({n.split("_")[0] for n in runs[0]})


def test_search_hits_are_cut_too(archive, tmp_path):
    hits = tmp_path / "hits.csv"
    assert cli.main(["search", str(archive), f"{EXCERPT.name}@4", "--top", "3", "--out", str(hits)]) == 0
    out = tmp_path / "review"
    assert cli.main(["clips", str(archive), "--hits", str(hits), "--out", str(out), "--pad", "0"]) == 0
    clips = sorted(out.glob("*.flac"))
    # named by the query (characters other than letters, digits, '.' and '-' become '-'), then the similarity
    assert len(clips) == 3 and all(c.name.startswith("jura-excerpt-48k.flac-4_") for c in clips)
    assert any(c.name.startswith("jura-excerpt-48k.flac-4_1.0000_jura-excerpt-48k.flac_00003.00s") for c in clips)


def test_mistakes_are_one_line(archive, tmp_path, capsys):
    assert cli.main(["clips", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "not an archive folder" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    assert cli.main(["clips", str(archive), "--hits", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "not a search's hits" in capsys.readouterr().err


def _error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("ERROR")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0].removeprefix("ERROR streamer: ")


def test_named_classes_only_by_any_of_their_names_in_any_case(archive, tmp_path):
    rows = _detections(archive)
    out = tmp_path / "review"
    # a common name in other case, a scientific name, and a code (BirdNET's label: only in the folder's class list)
    assert cli.main(["clips", str(archive), "--out", str(out), "--class", "european robin", "--class", "Phylloscopus collybita",
                     "--class", "Strix nebulosa_Great Gray Owl"]) == 0
    names = ("European Robin", "Common Chiffchaff", "Great Gray Owl")
    clips = sorted(p.name.split("_")[0] for p in out.glob("*.flac"))
    assert clips == sorted(r["Common name"].replace(" ", "-") for r in rows if r["Common name"] in names)
    assert set(clips) == {n.replace(" ", "-") for n in names}
    # a class the folder scored but never detected is no mistake: no clip
    empty = tmp_path / "wren"
    assert cli.main(["clips", str(archive), "--out", str(empty), "--class", "Eurasian Wren"]) == 0
    assert not any(r["Common name"] == "Eurasian Wren" for r in rows) and list(empty.iterdir()) == []


def test_an_unknown_class_is_one_line_with_the_closest_names_and_nothing_is_cut(archive, tmp_path, capsys):
    out = tmp_path / "o"
    assert cli.main(["clips", str(archive), "--out", str(out), "--class", "Europen Robin", "--per-class", "1"]) == 2
    assert _error(capsys.readouterr().err) == (
        f"--class 'Europen Robin': no such class in {archive} (closest: 'European Robin', 'European Serin', 'Rose Robin', "
        "'European Starling', 'European Roller', 'European Goldfinch', 'Pink Robin', 'European Greenfinch', "
        "'American Robin', 'European Stonechat')")
    # with a known one: refused all the same; nothing close: how many classes BirdNET's list has
    assert cli.main(["clips", str(archive), "--out", str(out), "--class", "European Robin", "--class", "Zzyzx"]) == 2
    assert _error(capsys.readouterr().err) == f"--class 'Zzyzx': no such class in {archive} (nothing close among its 6522 classes)"
    assert not out.exists()


def test_named_queries_of_search_hits(archive, tmp_path, capsys):
    hits = tmp_path / "hits.csv"
    assert cli.main(["search", str(archive), f"{EXCERPT.name}@4", f"{EXCERPT.name}@10", "--top", "2", "--out", str(hits)]) == 0
    out = tmp_path / "review"
    assert cli.main(["clips", str(archive), "--hits", str(hits), "--out", str(out), "--class", f"{EXCERPT.name}@10"]) == 0
    assert sorted(p.name.split("_")[0] for p in out.glob("*.flac")) == ["jura-excerpt-48k.flac-10"] * 2
    capsys.readouterr()
    assert cli.main(["clips", str(archive), "--hits", str(hits), "--out", str(tmp_path / "o"), "--class", f"{EXCERPT.name}@11"]) == 2
    assert _error(capsys.readouterr().err) == (f"--class '{EXCERPT.name}@11': no such class in the queries of {hits} "
                                               f"(closest: '{EXCERPT.name}@10', '{EXCERPT.name}@4')")
    assert not (tmp_path / "o").exists()
