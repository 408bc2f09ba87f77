"""Post-processing on small cases worked out by hand."""

import numpy as np
import pytest

from streamer import postprocess as pp
from streamer.ensemble import blend

WEIGHTS = (0.8, 0.13, 0.07)


def blend_logits(perch, cnn, crnn, weights):
    """The model-card blend through the recipe's: members perch, cnn, crnn, those given."""
    present = {k: v for k, v in (("perch", perch), ("cnn", cnn), ("crnn", crnn)) if v is not None}
    members = tuple((k, np.full(perch.shape[1], w)) for k, w in zip(("perch", "cnn", "crnn"), weights))
    return blend(present, members)


def test_blend_all_models():
    perch = np.array([[1.0, -2.0]], np.float32)
    cnn = np.array([[3.0, 0.0]], np.float32)
    crnn = np.array([[-1.0, 4.0]], np.float32)
    # (0.8*1 + 0.13*3 + 0.07*-1) / 1.0 = 1.12 ; (0.8*-2 + 0 + 0.07*4) = -1.32
    out = blend_logits(perch, cnn, crnn, (0.8, 0.13, 0.07))
    np.testing.assert_allclose(out, [[1.12, -1.32]], rtol=1e-6)
    assert out.dtype == np.float32


def test_blend_renormalises_over_loaded_models():
    perch = np.array([[1.0]], np.float32)
    cnn = np.array([[3.0]], np.float32)
    # crnn missing: (0.8*1 + 0.13*3) / 0.93 = 1.19 / 0.93
    np.testing.assert_allclose(blend_logits(perch, cnn, None, (0.8, 0.13, 0.07)), [[1.19 / 0.93]], rtol=1e-6)
    # only crnn: (0.6*1 + 0.15*5)/0.75 = 1.8
    np.testing.assert_allclose(blend_logits(perch, None, np.array([[5.0]], np.float32), (0.6, 0.25, 0.15)), [[1.8]], rtol=1e-6)


def test_blend_without_students_passes_perch_through():
    perch = np.array([[0.123, -7.5]], np.float32)
    np.testing.assert_array_equal(blend_logits(perch, None, None, (0.8, 0.13, 0.07)), perch)


def test_add_prior_broadcasts_over_windows():
    logits = np.zeros((3, 2), np.float32)
    out = pp.add_prior(logits, np.array([1.0, -2.0]), 0.2)
    np.testing.assert_allclose(out, [[0.2, -0.4]] * 3, rtol=1e-6)


def test_fold_mean_is_mean_of_sigmoids_not_sigmoid_of_mean():
    folds = np.array([[[0.0]], [[np.log(3.0)]]], np.float32)  # sigmoids 0.5 and 0.75
    np.testing.assert_allclose(pp.fold_mean_probability(folds), [[0.625]], rtol=1e-6)


def test_sigmoid_extremes_are_finite():
    x = np.array([-1000.0, 0.0, 1000.0], np.float32)
    np.testing.assert_allclose(pp.sigmoid(x), [0.0, 0.5, 1.0])


def test_smooth_with_replicated_edges():
    p = np.array([[1.0], [0.0], [0.0], [0.5]], np.float32)
    # t0: 0.8*1 + 0.1*1 + 0.1*0 = 0.9 ; t1: 0.1*1 + 0 + 0 = 0.1
    # t2: 0 + 0 + 0.1*0.5 = 0.05 ; t3: 0.8*0.5 + 0.1*0 + 0.1*0.5 = 0.45
    np.testing.assert_allclose(pp.smooth_kernel(p, (0.1, 0.8, 0.1)), [[0.9], [0.1], [0.05], [0.45]], rtol=1e-6)


def test_top2_multiplier():
    p = np.array([[0.2, 1.0], [0.6, 0.0], [0.4, 0.5]], np.float32)
    # column 0: top-2 mean (0.6+0.4)/2 = 0.5 ; column 1: (1.0+0.5)/2 = 0.75
    np.testing.assert_allclose(pp.top2_multiplier(p), [[0.1, 0.75], [0.3, 0.0], [0.2, 0.375]], rtol=1e-6)


def test_the_model_card_steps_in_order():
    """smooth, then the top-2 multiplier, then the clip (the model-card recipe's last steps)."""
    def last_steps(p):
        return pp.clip_scores(pp.topk_multiplier(pp.smooth_kernel(p, (0.1, 0.8, 0.1)), 2), 0.0, 1.0)

    p = np.array([[1.0], [0.0], [0.0], [0.5]], np.float32)
    smoothed = np.array([[0.9], [0.1], [0.05], [0.45]])
    expected = smoothed * (0.9 + 0.45) / 2
    np.testing.assert_allclose(last_steps(p), expected, rtol=1e-6)
    assert last_steps(np.full((12, 3), 1.0, np.float32)).max() <= 1.0


def test_a_class_whose_present_members_all_weigh_zero_gets_their_plain_mean():
    a, b = np.array([[2.0, 1.0]], np.float32), np.array([[4.0, 3.0]], np.float32)
    members = (("a", np.array([0.0, 1.0])), ("b", np.array([0.0, 3.0])))
    np.testing.assert_allclose(blend({"a": a, "b": b}, members), [[3.0, 2.5]], rtol=1e-6)
    with pytest.raises(ValueError, match="no blend member present"):
        blend({}, members)
