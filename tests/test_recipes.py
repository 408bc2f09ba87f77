"""Recipes: the schema's checks (one line per mistake), the post-processing steps against
their plain definitions, and binding a recipe to the stand-in kit's files."""

import tomllib

import numpy as np
import pytest

from streamer import postprocess
from streamer.recipes import load_recipe, packaged_names, packaged_text
from streamer.recipes.schema import RecipeError, parse_recipe


def _doc():
    return tomllib.loads(packaged_text())


def test_the_packaged_default_is_the_model_card():
    recipe = load_recipe()
    assert recipe.name == "model-card" and "model-card" in packaged_names()
    assert recipe.member_names == ("perch", "cnn", "crnn", "protossm")
    assert [m.weight for m in recipe.blend_members] == [0.80, 0.13, 0.07]
    assert [s.name for s in recipe.steps] == ["prior", "head", "smooth", "topk-multiplier", "clip"]
    assert recipe.steps[0].get("scale") == 0.20 and recipe.steps[2].get("kernel") == (0.1, 0.8, 0.1)
    assert recipe.drop_order == ("crnn", "cnn")
    assert recipe.member("protossm").folds == 4 and recipe.member("protossm").is_head


def test_a_saved_recipe_loads_as_the_packaged_one(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text(packaged_text())
    mine = load_recipe(path)
    assert mine.members == load_recipe().members and mine.steps == load_recipe().steps
    assert mine.folder == tmp_path.resolve()


def _edit(doc, dotted, value):
    node = doc
    *parents, last = dotted.split(".")
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    if value is _DELETE:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return doc


_DELETE = object()

MISTAKES = [
    ("steps.2.step", "smoothen", "steps[2].step = 'smoothen': expected one of"),
    ("steps.2.kernel", [0.5, 0.5], "steps[2].kernel = [0.5, 0.5]: expected an odd number of weights"),
    ("steps.2.kernel", [0.1, -0.8, 0.1], "expected numbers >= 0"),
    ("steps.3.k", 0, "steps[3].k = 0: expected an integer >= 1"),
    ("steps.0.scale", "high", "steps[0].scale = 'high': expected a number"),
    ("steps.1.member", "cnn", "steps[1].member = 'cnn': not a head member of the recipe (protossm)"),
    ("members.cnn.weight", -1.0, "members.cnn.weight = -1.0: expected a number >= 0"),
    ("members.cnn.kind", "resnet", "members.cnn.kind = 'resnet': expected one of"),
    ("members.cnn.input", "perch.embedding", "members.cnn.input = 'perch.embedding': a student-cnn member takes logmel, not perch.embedding"),
    ("members.cnn.input", "mel", "members.cnn.input = 'mel': no such front-end output"),
    ("members.cnn.colour", "red", "members.cnn.colour: unknown key"),
    ("members.cnn.sha256", "abc", "members.cnn.sha256 = 'abc': expected 64 lower-case hex digits"),
    ("members.protossm.weight", 0.5, "members.protossm.weight: a protossm member is a head"),
    ("members.protossm.folds", 0, "members.protossm.folds = 0: expected an integer > 0"),
    ("framing.sample_rate_hz", 48000, "framing.sample_rate_hz = 48000: the perch front-end 'perch' and logmel front-end 'logmel' take 32000"),
    ("framing.resampler", "sinc", "framing.resampler = 'sinc': expected one of 'soxr-hq', 'kaiser_fast'"),
    ("framing.hop_s", 2.5, "framing.hop_s = 2.5: this streamer runs windows that follow each other"),
    ("frontends.logmel.n_mels", 64, "frontends.logmel.n_mels = 64: the log-mel streamer computes has n_mels = 128"),
    ("recipe.format", 2, "recipe.format = 2: this streamer reads format 1"),
    ("budget.drop_order", ["cnn", "bogus"], "budget.drop_order[1] = 'bogus': not a member of the recipe"),
    ("budget.drop_order", ["protossm"], "budget.drop_order[0] = 'protossm': a head cannot be dropped"),
    ("blend.space", "rank-ish", "blend.space = 'rank-ish': expected one of"),
    ("prior.clip", 0.7, "prior.clip = 0.7: expected a number in (0, 0.5)"),
]


@pytest.mark.parametrize("key, value, line", MISTAKES, ids=[m[0] + "=" + str(m[1]) for m in MISTAKES])
def test_each_mistake_is_one_line_naming_the_key(key, value, line):
    with pytest.raises(RecipeError) as info:
        parse_recipe(_edit(_doc(), key, value), "r.toml")
    assert len(info.value.lines) == 1, info.value.lines
    assert line in info.value.lines[0]
    assert str(info.value).startswith("r.toml: ")


def test_all_mistakes_are_reported_at_once():
    doc = _edit(_edit(_doc(), "steps.3.k", 0), "members.cnn.weight", -2)
    with pytest.raises(RecipeError) as info:
        parse_recipe(doc, "r.toml")
    assert len(info.value.lines) == 2


def test_whole_recipe_checks():
    cases = [
        (lambda d: [_edit(d, f"members.{m}.weight", 0.0) for m in ("perch", "cnn", "crnn")][-1], "members: every blend weight is 0"),
        (lambda d: _edit(d, "steps", [s for s in d["steps"] if s["step"] != "head"]), "members.protossm: a protossm head that no 'head' step runs"),
        (lambda d: _edit(d, "steps", [d["steps"][0], d["steps"][3], d["steps"][1]]), "step 1 (topk-multiplier) takes probabilities but gets logits here; add a 'sigmoid' step before it"),
        (lambda d: _edit(d, "steps", [d["steps"][0], d["steps"][1], d["steps"][2]]), "the output must lie in [0, 1]: end with a 'clip' step"),
        (lambda d: _edit(_edit(d, "members.protossm", _DELETE), "steps", [d["steps"][0], {"step": "temperature", "default": 2.0}]), "the last step leaves logits"),
    ]
    for edit, line in cases:
        with pytest.raises(RecipeError) as info:
            parse_recipe(edit(_doc()), "r.toml")
        assert any(line in got for got in info.value.lines), (line, info.value.lines)


def test_bad_files_are_one_line(tmp_path):
    with pytest.raises(RecipeError, match="no such file"):
        load_recipe(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[recipe\nname = 1")
    with pytest.raises(RecipeError, match="not valid TOML"):
        load_recipe(bad)


# ------------------------------------------------------------------------------- the steps


def test_smooth_kernel_reproduces_the_original_smoothing_exactly():
    rng = np.random.default_rng(0)
    p = rng.random((12, 234), dtype=np.float32)
    def model_card(x):  # the original script's arithmetic: centre, then the earlier, then the later window
        prev, nxt = np.concatenate([x[:1], x[:-1]]), np.concatenate([x[1:], x[-1:]])
        return np.float32(0.8) * x + np.float32(0.1) * prev + np.float32(0.1) * nxt

    assert np.array_equal(postprocess.smooth_kernel(p, (0.1, 0.8, 0.1)), model_card(p))
    one = p[:1]
    assert np.array_equal(postprocess.smooth_kernel(one, (0.1, 0.8, 0.1)), model_card(one))


def test_a_five_tap_kernel_is_the_edge_replicated_convolution():
    rng = np.random.default_rng(1)
    p = rng.random((7, 5)).astype(np.float32)
    kernel = (0.05, 0.15, 0.6, 0.15, 0.05)
    padded = np.concatenate([p[:1], p[:1], p, p[-1:], p[-1:]]).astype(np.float64)
    want = sum(w * padded[i : i + 7] for i, w in enumerate(kernel))
    np.testing.assert_allclose(postprocess.smooth_kernel(p, kernel), want, rtol=1e-6)
    np.testing.assert_array_equal(postprocess.smooth_kernel(p, (1.0,)), p)


def test_topk_multiplier():
    rng = np.random.default_rng(2)
    p = rng.random((12, 9), dtype=np.float32)
    assert np.array_equal(postprocess.topk_multiplier(p, 2), postprocess.top2_multiplier(p))
    assert np.array_equal(postprocess.topk_multiplier(p[:1], 2), postprocess.top2_multiplier(p[:1]))
    want = p * np.sort(p, axis=0)[-3:].mean(axis=0, keepdims=True)
    np.testing.assert_allclose(postprocess.topk_multiplier(p, 3), want, rtol=1e-6)
    np.testing.assert_allclose(postprocess.topk_multiplier(p[:2], 5), p[:2] * p[:2].mean(axis=0), rtol=1e-6)


def test_temperature_clip_and_logit():
    logits = np.array([[2.0, -4.0, 1.0]], dtype=np.float32)
    np.testing.assert_array_equal(postprocess.temperature(logits, np.array([2.0, 4.0, 1.0])), [[1.0, -1.0, 1.0]])
    np.testing.assert_array_equal(postprocess.clip_scores(np.array([[-0.5, 0.5, 1.5]]), 0.0, 1.0), [[0.0, 0.5, 1.0]])
    p = np.array([[0.1, 0.5, 0.9]], dtype=np.float32)
    np.testing.assert_allclose(postprocess.sigmoid(postprocess.to_logit(p)), p, rtol=1e-6)


# ---------------------------------------------------------------------------------- binding


def _bind(kit, recipe=None, **roots):
    from streamer.artifacts import resolve_perch
    from streamer.metadata import load_competition
    from streamer.recipes.bind import Roots, bind_recipe

    competition = load_competition(kit.data_dir)
    perch = resolve_perch(kit.perch_onnx)
    settings = dict(perch=perch.onnx_path, perch_labels=perch.labels_path, moe_dir=kit.moe_dir, data_dir=kit.data_dir)
    settings.update(roots)
    return bind_recipe(recipe or load_recipe(), Roots(**settings), columns=competition.classes,
                       columns_scientific=competition.class_names, class_groups=competition.class_groups,
                       perch_labels=perch.labels)


def test_the_default_recipe_binds_to_the_kit(kit):
    bound = _bind(kit)
    assert [m.name for m in bound.members] == ["perch", "cnn", "crnn", "protossm"]
    assert len(bound.member("protossm").paths) == 4
    perch = bound.member("perch")
    assert (perch.class_map >= 0).sum() == 203 and perch.fill == -8.0
    np.testing.assert_array_equal(bound.member("cnn").weight, np.full(234, 0.13))


def test_binding_mistakes(kit, tmp_path):
    from streamer.files import sha256_file

    with pytest.raises(RecipeError, match="no member 'cnnn' in the recipe"):
        _bind(kit, without=("cnnn",))
    with pytest.raises(RecipeError, match="needs --moe-dir"):
        _bind(kit, moe_dir=None)
    doc = _doc()
    cnn = next(kit.moe_dir.glob("student_cnn*.pt"))
    doc["members"]["cnn"]["sha256"] = "0" * 64
    doc["members"]["cnn"]["group_weights"] = {"Avez": 0.3}
    with pytest.raises(RecipeError) as info:
        _bind(kit, parse_recipe(doc, "r.toml"))
    assert any(f"members.cnn.sha256: {cnn} has SHA-256 {sha256_file(cnn)}, the recipe expects {'0' * 64}" in line for line in info.value.lines)
    assert any("members.cnn.group_weights.Avez: no class group 'Avez' in taxonomy.csv" in line for line in info.value.lines)
    doc = _doc()
    doc["members"]["cnn"]["sha256"] = sha256_file(cnn)
    assert _bind(kit, parse_recipe(doc, "r.toml")).member("cnn").paths == (cnn,)


def test_a_missing_optional_member_is_dropped(kit_copy):
    for path in kit_copy.moe_dir.glob("student_crnn*.pt"):
        path.unlink()
    bound = _bind(kit_copy)
    assert [m.name for m in bound.members] == ["perch", "cnn", "protossm"]
    assert bound.dropped[0][0] == "crnn"
