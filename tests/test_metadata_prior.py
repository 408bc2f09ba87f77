"""File-name parsing, the label matrix and the site/hour prior, by hand."""

import numpy as np
import pytest

from streamer.errors import ArtifactError
from streamer.metadata import load_competition, parse_hour, parse_site, read_label_matrix, row_ids
from streamer.prior import PRIOR_EPS, fit_prior


@pytest.mark.parametrize(
    "stem,site,hour",
    [
        ("BC2026_Test_0001_S05_20250227_010002", "S05", 1),
        ("BC2026_Train_0012_S22_20240101_235959", "S22", 23),
        ("BC2025_Test_1_S3_20250101_120000", "S3", 12),
        ("my_recording", "S00", 0),  # unparsable: placeholder site, hour 0
        ("a_b_c_d_e_xx1234", "S00", 0),  # six fields but non-digit hour
        ("a_b_c_d_e_301234", "S00", 6),  # 30 mod 24
        ("BC2026_Test_0001_S05_20250227", "S05", 0),  # only 5 fields
    ],
)
def test_parse_site_and_hour(stem, site, hour):
    assert parse_site(stem) == site
    assert parse_hour(stem) == hour


def test_row_ids():
    assert row_ids("abc") == [f"abc_{s}" for s in range(5, 65, 5)]


def _write_labels(path, rows):
    path.write_text("filename,start,end,primary_label\n" + "".join(f"{r}\n" for r in rows))


def test_label_matrix_unions_duplicates_and_drops_unknown(tmp_path):
    p = tmp_path / "labels.csv"
    _write_labels(
        p,
        [
            "f1.ogg,00:00:00,00:00:05,a;b",
            "f1.ogg,00:00:00,00:00:05,a;b",  # duplicate row: harmless
            "f1.ogg,00:00:00,00:00:05,c",  # union with another row of the same window
            "f1.ogg,00:00:55,00:01:00,zz",  # unknown label dropped
            "f0.ogg,00:00:10,00:00:15,b",
        ],
    )
    m, stems = read_label_matrix(p, ("a", "b", "c"))
    assert stems == ("f0", "f1")
    assert m.shape == (2, 12, 3)
    assert m[1, 0].tolist() == [True, True, True]
    assert not m[1, 11].any()
    assert m[0, 2].tolist() == [False, True, False]
    assert m.sum() == 4


def test_label_matrix_bad_time(tmp_path):
    p = tmp_path / "labels.csv"
    _write_labels(p, ["f1.ogg,00:00:00,five,a"])
    with pytest.raises(ArtifactError, match="line 2"):
        read_label_matrix(p, ("a",))


def test_prior_by_hand():
    # 2 files x 12 windows, 1 class. File A (site S1, hour 3): 6 positives. File B (S2, hour 3): 0.
    labels = np.zeros((2, 12, 1), bool)
    labels[0, :6, 0] = True
    stems = ["BC2026_Train_0001_S1_20250101_030000", "BC2026_Train_0002_S2_20250101_031500"]
    prior = fit_prior(labels, stems)
    assert prior.global_rate[0] == pytest.approx(0.25)
    assert prior.site_rates["S1"][0][0] == pytest.approx(0.5) and prior.site_rates["S1"][1] == 12
    assert prior.site_rates["S2"][0][0] == pytest.approx(PRIOR_EPS)  # clipped
    assert prior.hour_rates[3][1] == 24
    # File at S1, hour 3: w_s = 12/20 = 0.6 -> p = 0.4*0.25 + 0.6*0.5 = 0.4; w_h = 24/32 = 0.75
    # -> p = 0.25*0.4 + 0.75*0.25 = 0.2875
    assert prior.probability("S1", 3)[0] == pytest.approx(0.2875)
    assert prior.logit("S1", 3)[0] == pytest.approx(np.log(0.2875 / 0.7125))
    # Unknown site, hour with no table: global rate only.
    assert prior.probability("S99", 5)[0] == pytest.approx(0.25)
    # Unparsable name -> site S00 (no table), hour 0 (no table here).
    assert prior.for_stem("whatever")[0] == pytest.approx(np.log(0.25 / 0.75))
    # Site first, then hour: S2, hour 3 -> 0.4*0.25 + 0.6*1e-4 = 0.10006 ; then 0.25*0.10006 + 0.75*0.25
    assert prior.probability("S2", 3)[0] == pytest.approx(0.25 * (0.4 * 0.25 + 0.6 * PRIOR_EPS) + 0.75 * 0.25)


def test_prior_without_labels_is_flat():
    prior = fit_prior(np.zeros((0, 12, 3), bool), [])
    assert np.all(prior.logit("S1", 0) == prior.logit("S1", 0)[0])


def test_competition_errors_name_the_file(tmp_path):
    with pytest.raises(ArtifactError, match="sample_submission.csv"):
        load_competition(tmp_path)
    (tmp_path / "sample_submission.csv").write_text("row_id,a,b\n")
    with pytest.raises(ArtifactError, match="taxonomy.csv"):
        load_competition(tmp_path)
    (tmp_path / "taxonomy.csv").write_text("primary_label,scientific_name\na,A a\n")
    with pytest.raises(ArtifactError, match="not in the taxonomy"):
        load_competition(tmp_path)
    (tmp_path / "taxonomy.csv").write_text("primary_label,scientific_name,class_name\nb,B b,Aves\na,A a,Aves\n")
    with pytest.raises(ArtifactError, match="train_soundscapes_labels.csv"):
        load_competition(tmp_path)
    _write_labels(tmp_path / "train_soundscapes_labels.csv", ["x.ogg,00:00:00,00:00:05,b"])
    comp = load_competition(tmp_path)
    assert comp.classes == ("a", "b") and comp.class_names == ("A a", "B b")
    assert comp.site_index() == {"S00": 1}
