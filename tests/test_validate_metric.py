"""The competition metric against scikit-learn's roc_auc_score."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from streamer.validate.metric import SKIP_NO_NEGATIVE, SKIP_NO_POSITIVE, average_ranks, macro_auc


def _sklearn_macro(y, s):
    keep = y.sum(axis=0) > 0
    return roc_auc_score(y[:, keep], s[:, keep], average="macro")


@pytest.mark.parametrize("seed", range(5))
def test_macro_auc_equals_sklearn_with_ties_and_empty_classes(seed):
    rng = np.random.default_rng(seed)
    n, c = 240, 30
    y = rng.random((n, c)) < rng.uniform(0.01, 0.3, size=c)
    y[:, :4] = False  # classes without a positive are skipped
    y[rng.integers(0, n), 5] = True  # a class with a single positive
    # Coarse scores: many ties, within and across the classes' positives and negatives.
    s = np.round(rng.random((n, c)) + 0.3 * y, 1)
    s[:, 6] = 0.25  # one column entirely tied
    result = macro_auc(y, s)
    assert result.macro_auc == pytest.approx(_sklearn_macro(y, s), abs=1e-12)
    assert result.skipped[:4] == (SKIP_NO_POSITIVE,) * 4 and np.isnan(result.auc[:4]).all()
    for j in range(4, c):
        assert result.auc[j] == pytest.approx(roc_auc_score(y[:, j], s[:, j]), abs=1e-12)
    assert result.auc[6] == 0.5
    np.testing.assert_array_equal(result.n_positive, y.sum(axis=0))


def test_float32_probabilities_like_a_submission():
    rng = np.random.default_rng(7)
    y = rng.random((600, 12)) < 0.05
    s = (rng.random((600, 12)) ** 3).astype(np.float32)
    assert macro_auc(y, s).macro_auc == pytest.approx(_sklearn_macro(y, s), abs=1e-12)


def test_perfect_reversed_and_monotone_transform():
    y = np.array([[0, 1], [0, 0], [1, 1], [1, 0]], dtype=bool)
    s = np.array([[0.1, 0.9], [0.2, 0.1], [0.8, 0.7], [0.9, 0.3]])
    r = macro_auc(y, s)
    assert r.auc[0] == 1.0 and r.auc[1] == 1.0
    assert macro_auc(y, -s).macro_auc == 0.0
    # Rank-based: a strictly increasing transform of one column changes nothing.
    t = s.copy()
    t[:, 1] = np.exp(10 * t[:, 1])
    assert macro_auc(y, t).macro_auc == r.macro_auc


def test_class_with_only_positives_is_skipped_and_said_so():
    y = np.array([[1, 1], [1, 0], [1, 1]], dtype=bool)
    s = np.array([[0.3, 0.9], [0.2, 0.1], [0.1, 0.8]])
    r = macro_auc(y, s)
    assert r.skipped == (SKIP_NO_NEGATIVE, "")
    assert r.macro_auc == 1.0 and list(r.scored) == [False, True]


def test_no_scorable_class_gives_nan():
    r = macro_auc(np.zeros((5, 3), bool), np.random.default_rng(0).random((5, 3)))
    assert np.isnan(r.macro_auc) and r.skipped == (SKIP_NO_POSITIVE,) * 3


def test_average_ranks_share_ties():
    ranks = average_ranks(np.array([[3.0], [1.0], [3.0], [2.0], [3.0]]))
    np.testing.assert_array_equal(ranks[:, 0], [4.0, 1.0, 4.0, 2.0, 4.0])


def test_bad_input_is_an_error():
    with pytest.raises(ValueError, match="same"):
        macro_auc(np.zeros((3, 2), bool), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="NaN"):
        macro_auc(np.array([[1], [0]], bool), np.array([[np.nan], [0.1]]))
