"""`streamer score` on the stand-in kit's labels, against an independent solution and sklearn."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from streamer import cli
from streamer.errors import ArtifactError
from streamer.metadata import load_competition
from streamer.validate.score import score_submission


def _independent_solution(data_dir):
    """Solution rows written out from the labels CSV directly (rows × classes, 0/1)."""
    classes = list(pd.read_csv(data_dir / "sample_submission.csv", nrows=0).columns[1:])
    lab = pd.read_csv(data_dir / "train_soundscapes_labels.csv", dtype=str)
    stems = sorted({f[:-4] for f in lab["filename"]})
    rows = [f"{stem}_{5 * (w + 1)}" for stem in stems for w in range(12)]
    y = pd.DataFrame(0, index=rows, columns=classes)
    for r in lab.itertuples():
        h, m, s = map(int, r.end.split(":"))
        for label in r.primary_label.split(";"):
            if label in classes:
                y.loc[f"{r.filename[:-4]}_{h * 3600 + m * 60 + s}", label] = 1
    return y


def _write_submission(path, y, rng, extra_rows=()):
    scores = np.clip(0.3 * y.to_numpy() + rng.random(y.shape) * 0.8, 0, 1).round(2)  # rounded: ties
    sub = pd.DataFrame(scores, index=y.index, columns=y.columns)
    for rid in extra_rows:
        sub.loc[rid] = rng.random(y.shape[1])
    sub = sub.sample(frac=1.0, random_state=0)  # row order must not matter
    sub.index.name = "row_id"
    sub.to_csv(path)
    return sub


def test_score_equals_sklearn_on_the_labelled_rows(kit, tmp_path):
    y = _independent_solution(kit.data_dir)
    sub = _write_submission(tmp_path / "sub.csv", y, np.random.default_rng(0), extra_rows=["BC2026_Train_0099_S01_20240101_000000_5"])
    report = score_submission(tmp_path / "sub.csv", load_competition(kit.data_dir))
    s = sub.loc[y.index].to_numpy()
    keep = y.to_numpy().sum(axis=0) > 0
    assert report.macro_auc == pytest.approx(roc_auc_score(y.to_numpy()[:, keep], s[:, keep], average="macro"), abs=1e-12)
    assert report.n_ignored_rows == 1 and report.result.n_rows == len(y)
    assert int(report.result.scored.sum()) == int(keep.sum())


def test_cli_writes_class_and_group_table(kit, tmp_path, capsys):
    y = _independent_solution(kit.data_dir)
    _write_submission(tmp_path / "sub.csv", y, np.random.default_rng(1))
    assert cli.main(["score", str(tmp_path / "sub.csv"), "--data-dir", str(kit.data_dir)]) == 0
    printed = capsys.readouterr().out
    assert "macro ROC-AUC" in printed and "Aves" in printed
    table = pd.read_csv(tmp_path / "sub.scores.csv", keep_default_na=False)
    classes = table[table.level == "class"]
    assert len(classes) == y.shape[1]
    positives = y.sum(axis=0)
    by_label = classes.set_index("label")
    # Skipped classes have an empty AUC and say why; scored ones carry a number.
    assert (by_label.loc[positives[positives == 0].index, "auc"] == "").all()
    assert (by_label.loc[positives[positives == 0].index, "note"] == "skipped: no positive").all()
    assert (by_label.loc[positives[positives > 0].index, "auc"] != "").all()
    np.testing.assert_array_equal(by_label.loc[y.columns, "n_positive"].astype(int), positives.to_numpy())
    # Group rows: macro over the group's scored classes.
    tax = pd.read_csv(kit.data_dir / "taxonomy.csv", dtype=str).set_index("primary_label")["class_name"]
    groups = table[table.level == "class_name"].set_index("label")
    assert set(groups.index) == set(tax.unique())
    scored = classes[classes.auc != ""]
    for g, rows in scored.groupby("class_name"):
        assert float(groups.loc[g, "auc"]) == pytest.approx(rows.auc.astype(float).mean(), abs=2e-6)
        assert int(groups.loc[g, "n_classes_scored"]) == len(rows)
    overall = table[table.level == "overall"].iloc[0]
    assert float(overall.auc) == pytest.approx(scored.auc.astype(float).mean(), abs=2e-6)


def test_missing_labelled_rows_are_named(kit, tmp_path, capsys):
    y = _independent_solution(kit.data_dir)
    sub = _write_submission(tmp_path / "sub.csv", y, np.random.default_rng(2))
    dropped = y.index[13]
    sub.drop(index=dropped).to_csv(tmp_path / "short.csv")
    with pytest.raises(ArtifactError, match=dropped):
        score_submission(tmp_path / "short.csv", load_competition(kit.data_dir))
    assert cli.main(["score", str(tmp_path / "short.csv"), "--data-dir", str(kit.data_dir)]) == 2
    err = capsys.readouterr().err
    assert "short.csv" in err and dropped in err


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda df: df.drop(columns=[df.columns[3]]), "class columns"),
        (lambda df: pd.concat([df, df.iloc[:1]]), "duplicated row ids"),
        (lambda df: df.assign(**{df.columns[5]: np.nan}), "NaN"),
        (lambda df: df.assign(**{df.columns[5]: "x"}), "non-numeric"),
    ],
)
def test_malformed_submission_is_an_error_naming_the_file(kit, tmp_path, mutate, message):
    y = _independent_solution(kit.data_dir)
    sub = _write_submission(tmp_path / "sub.csv", y, np.random.default_rng(3))
    mutate(sub).to_csv(tmp_path / "bad.csv")
    with pytest.raises(ArtifactError, match=message) as info:
        score_submission(tmp_path / "bad.csv", load_competition(kit.data_dir))
    assert "bad.csv" in str(info.value)
