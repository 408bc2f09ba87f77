"""Local validation: the cache, the out-of-fold prior, the sweep, and a sweep point against
a full `infer` + `score` run."""

import shlex

import numpy as np
import pandas as pd
import pytest
import torch

from streamer import cli
from streamer.config import InferConfig
from streamer.errors import ArtifactError, ConfigError
from streamer.metadata import load_competition, parse_site
from streamer.prior import fit_prior
from streamer.recipes import load_recipe
from streamer.stages import ModelOutputs, ModelStage, Reducer, decode_job, dependency_paths, prepare
from streamer.validate.cache import build_cache, hash_dependencies, load_cache
from streamer.validate.sweep import (
    SweepPoint,
    assign_prior_folds,
    in_fold_prior_logits,
    out_of_fold_prior_logits,
    parse_grid,
    recipe_axes,
)

from conftest import infer_args, printed_tolerance

def _point(perch, cnn, crnn, prior, center, side, steps=()):
    """A point over the model-card recipe: its blend weights, prior scale and smoothing, then
    ``(STEP.PARAM, value)`` pairs."""
    return SweepPoint((("perch", perch), ("cnn", cnn), ("crnn", crnn), ("prior", prior), ("smooth", (center, side)), *steps))


MODEL_CARD = load_recipe()
BASE = _point(0.8, 0.13, 0.07, 0.2, 0.8, 0.1)


def _kit_flags(kit):
    return ["--data-dir", str(kit.data_dir), "--perch", str(kit.perch_onnx), "--moe-dir", str(kit.moe_dir)]


@pytest.fixture(scope="module")
def cache_path(kit, tmp_path_factory):
    path = tmp_path_factory.mktemp("cache") / "cache.npz"
    assert cli.main(["-q", "cache", *_kit_flags(kit), "--out", str(path), "--threads", "2"]) == 0
    return path


# --------------------------------------------------------------------------- grid


def test_grid_axes_ranges_and_defaults():
    assert recipe_axes(MODEL_CARD) == {"perch": 0.8, "cnn": 0.13, "crnn": 0.07, "prior": 0.2, "smooth": (0.8, 0.1),
                                       "topk-multiplier.k": 2, "clip.min": 0.0, "clip.max": 1.0}
    points, values = parse_grid(["perch=0.6,0.8", "prior=0:0.4:0.2", "smooth=0.8/0.1,0.7/0.15/0.15,off"], MODEL_CARD)
    assert values["prior"] == [0.0, 0.2, 0.4]
    assert values["smooth"] == [(0.8, 0.1), (0.7, 0.15), (1.0, 0.0)]
    assert values["cnn"] == [0.13] and values["crnn"] == [0.07]  # not given: the recipe's
    assert len(points) == 2 * 3 * 3
    assert points[0] == _point(0.6, 0.13, 0.07, 0.0, 0.8, 0.1)
    assert points[-1].infer_flags() == [
        "--blend", "perch=0.8", "--blend", "cnn=0.13", "--blend", "crnn=0.07",
        "--prior-scale", "0.4", "--smooth-center", "1", "--smooth-side", "0",
    ]
    assert parse_grid([], MODEL_CARD)[0] == [BASE]
    # The point's recipe is the model-card recipe with those numbers.
    recipe = points[-1].recipe(MODEL_CARD)
    assert [m.weight for m in recipe.blend_members] == [0.8, 0.13, 0.07]
    assert recipe.steps[0].get("scale") == 0.4 and recipe.steps[2].get("kernel") == (0.0, 1.0, 0.0)
    assert BASE.recipe(MODEL_CARD).steps == MODEL_CARD.steps


def test_grid_over_step_parameters():
    """``STEP.PARAM`` axes: any numeric parameter of a step the recipe has once (``prior.scale``
    is ``prior``); an integer parameter takes whole numbers; the infer flag is ``--set``."""
    points, values = parse_grid(["topk-multiplier.k=1:3:1", "prior.scale=0.1", "clip.max=0.9,1"], MODEL_CARD)
    assert values["topk-multiplier.k"] == [1, 2, 3] and all(type(k) is int for k in values["topk-multiplier.k"])
    assert values["prior"] == [0.1] and values["clip.max"] == [0.9, 1.0]
    assert len(points) == 3 * 2
    assert points[0] == _point(0.8, 0.13, 0.07, 0.1, 0.8, 0.1, (("topk-multiplier.k", 1), ("clip.max", 0.9)))
    assert points[-1].infer_flags()[-4:] == ["--set", "topk-multiplier.k=3", "--set", "clip.max=1"]
    recipe = points[-1].recipe(MODEL_CARD)
    assert recipe.steps[3].get("k") == 3 and recipe.steps[4].get("max") == 1.0 and recipe.steps[0].get("scale") == 0.1


def test_a_whole_number_in_the_recipe_does_not_make_an_axis_integer():
    """``scale = 1`` or ``max = 1`` in a recipe file are numbers like 1.0: the sweep takes 0.5
    for them; only a parameter the step declares integer (``k``) takes whole numbers alone."""
    import tomllib

    from streamer.recipes import packaged_text
    from streamer.recipes.schema import parse_recipe

    text = packaged_text()
    assert "scale = 0.20" in text and "max = 1.0" in text
    recipe = parse_recipe(tomllib.loads(text.replace("scale = 0.20", "scale = 1").replace("max = 1.0", "max = 1")), "ints.toml")
    assert recipe.steps[0].get("scale") == 1 and recipe.steps[4].get("max") == 1
    points, values = parse_grid(["prior=0.5,1", "clip.max=0.9,1"], recipe)
    assert values["prior"] == [0.5, 1.0] and values["clip.max"] == [0.9, 1.0] and len(points) == 4
    assert points[0].recipe(recipe).steps[0].get("scale") == 0.5 and points[0].recipe(recipe).steps[4].get("max") == 0.9
    with pytest.raises(ConfigError, match="whole numbers"):
        parse_grid(["topk-multiplier.k=1.5"], recipe)


def test_an_asymmetric_kernel_is_not_a_smooth_axis():
    """``smooth`` is ``(center, side)``, a symmetric 3-window kernel: a recipe whose 3-window
    kernel is asymmetric has no such axis, and its points keep its kernel as it is."""
    import tomllib

    from streamer.recipes import packaged_text
    from streamer.recipes.schema import parse_recipe

    text = packaged_text()
    assert "kernel = [0.1, 0.8, 0.1]" in text
    recipe = parse_recipe(tomllib.loads(text.replace("kernel = [0.1, 0.8, 0.1]", "kernel = [0.1, 0.7, 0.2]")), "asym.toml")
    assert "smooth" not in recipe_axes(recipe)
    points, values = parse_grid(["prior=0.2,0.4"], recipe)
    assert "smooth" not in values and points[0].recipe(recipe) == recipe  # the recipe's own point is the recipe
    assert points[1].recipe(recipe).steps[2].get("kernel") == (0.1, 0.7, 0.2)
    assert not any(flag.startswith("--smooth") for flag in points[1].infer_flags())
    with pytest.raises(ConfigError, match="unknown axis 'smooth'"):
        parse_grid(["smooth=0.8/0.1"], recipe)


@pytest.mark.parametrize(
    "spec, message",
    [
        (["blend=0.5"], "unknown axis"),
        (["perch=0.5", "perch=0.6"], "twice"),
        (["perch=a"], "not a number"),
        (["cnn=-0.1"], ">= 0"),
        (["prior=0.5:0.1:0.1"], "stop >= start"),
        (["smooth=0.7/0.2/0.1"], "symmetric"),
        (["smooth=0.8"], "CENTER/SIDE"),
        (["prior"], "AXIS=VALUES"),
        (["protossm=0.5"], "unknown axis"),  # a head is not blended
        (["topk-multiplier.z=1"], "unknown axis"),
        (["topk-multiplier.k=1.5"], "whole numbers"),
        (["topk-multiplier.k=0"], "expected an integer >= 1"),  # what the step refuses, reported now
    ],
)
def test_grid_errors(spec, message):
    with pytest.raises(ConfigError, match=message):
        parse_grid(spec, MODEL_CARD)


# --------------------------------------------------------------------------- out-of-fold prior


def _labels(kit):
    comp = load_competition(kit.data_dir)
    return comp.labels.copy(), comp.label_files


@pytest.mark.parametrize("group, n_folds", [("file", 5), ("file", 100), ("site", 3)])
def test_oof_prior_is_the_prior_fitted_on_the_other_folds(kit, group, n_folds):
    labels, stems = _labels(kit)
    folds = assign_prior_folds(stems, group=group, n_folds=n_folds)
    oof = out_of_fold_prior_logits(labels, stems, folds)
    for i, stem in enumerate(stems):
        others = [j for j in range(len(stems)) if folds.fold[j] != folds.fold[i]]
        assert i not in others
        expected = fit_prior(labels[others], [stems[j] for j in others]).for_stem(stem)
        np.testing.assert_array_equal(oof[i], expected)
    if group == "site":  # a site never spans two folds
        for site in {parse_site(s) for s in stems}:
            assert len({folds.fold[i] for i, s in enumerate(stems) if parse_site(s) == site}) == 1


@pytest.mark.parametrize("group", ["file", "site"])
def test_a_files_own_labels_cannot_move_its_prior(kit, group):
    labels, stems = _labels(kit)
    folds = assign_prior_folds(stems, group=group, n_folds=3)
    before = out_of_fold_prior_logits(labels, stems, folds)
    target = 2
    changed = labels.copy()
    changed[target] = ~changed[target]  # every window and class of one file flipped
    after = out_of_fold_prior_logits(changed, stems, folds)
    same_fold = folds.fold == folds.fold[target]
    np.testing.assert_array_equal(after[same_fold], before[same_fold])  # its own, and its fold's
    assert not np.allclose(after[~same_fold], before[~same_fold])  # the others did see the change
    # The leaky in-fold prior, by contrast, moves with the file's own labels.
    assert not np.allclose(in_fold_prior_logits(changed, stems)[target], in_fold_prior_logits(labels, stems)[target])


def test_prior_folds_errors_and_leave_one_group_out(kit):
    _, stems = _labels(kit)
    folds = assign_prior_folds(stems, group="file", n_folds=100)
    assert folds.n_folds == len(stems) and sorted(folds.fold.tolist()) == list(range(len(stems)))
    with pytest.raises(ConfigError, match=">= 2"):
        assign_prior_folds(stems, n_folds=1)
    with pytest.raises(ConfigError, match="at least 2 sites"):
        assign_prior_folds([s for s in stems if parse_site(s) == parse_site(stems[0])], group="site")


# --------------------------------------------------------------------------- ProtoSSM split


def test_protossm_similarity_then_fuse_is_the_forward_pass(kit):
    plan = prepare(InferConfig.create(data_dir=kit.data_dir, perch=kit.perch_onnx, moe_dir=kit.moe_dir), files=[])
    folds = Reducer(plan.reducer).heads["protossm"]
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(12, 1536)).astype(np.float32)
    teacher = rng.normal(size=(12, plan.competition.n_classes)).astype(np.float32)
    direct = folds.run(emb, teacher, 1, 7)
    np.testing.assert_array_equal(folds.fuse(folds.similarity(emb, 1, 7), teacher), direct)
    # Batched over files, as the sweep fuses them.
    stacked = np.stack([folds.similarity(emb, 1, 7)] * 3, axis=1)
    np.testing.assert_array_equal(folds.fuse(stacked, np.stack([teacher] * 3))[:, 1], direct)


# --------------------------------------------------------------------------- cache


def test_cache_holds_the_model_stage_outputs(kit, cache_path):
    cache = load_cache(cache_path)
    comp = load_competition(kit.data_dir)
    assert cache.stems == comp.label_files and cache.classes == comp.classes
    assert cache.embedding.shape == (len(comp.label_files), 12, 1536) and cache.embedding.dtype == np.float32
    assert set(cache.logits) == {"perch", "cnn", "crnn"}
    for name in ("perch", "cnn", "crnn"):
        assert cache.logits[name].shape == (len(comp.label_files), 12, comp.n_classes)
    plan = prepare(InferConfig.create(data_dir=kit.data_dir, perch=kit.perch_onnx, moe_dir=kit.moe_dir, engine="sequential"),
                   files=[kit.data_dir / "train_soundscapes" / f"{cache.stems[1]}.ogg"])
    out = ModelStage(plan.model).run(decode_job(plan.jobs[0]).windows)
    np.testing.assert_array_equal(cache.embedding[1], out.embedding)
    np.testing.assert_array_equal(cache.logits["perch"][1], out.logits["perch"])
    np.testing.assert_allclose(cache.logits["cnn"][1], out.logits["cnn"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(cache.logits["crnn"][1], out.logits["crnn"], rtol=0, atol=1e-5)
    roles = set(cache.dependencies)
    assert roles == {"perch_onnx", "perch_labels", "taxonomy", "sample_submission", "cnn", "crnn"}
    assert all(len(d["sha256"]) == 64 for d in cache.dependencies.values())


def test_up_to_date_cache_is_reused(kit, cache_path):
    config = InferConfig.create(data_dir=kit.data_dir, perch=kit.perch_onnx, moe_dir=kit.moe_dir)
    before = cache_path.stat().st_ino  # a rewrite would install a new file (atomic rename)
    cache, built = build_cache(config, cache_path)
    assert not built and cache_path.stat().st_ino == before


def _keep_labels_of(data_dir, n_files):
    path = data_dir / "train_soundscapes_labels.csv"
    table = pd.read_csv(path, dtype=str)
    keep = sorted(table.filename.unique())[:n_files]
    table[table.filename.isin(keep)].to_csv(path, index=False)


def test_changed_model_invalidates_the_cache(kit_copy, tmp_path, capsys):
    _keep_labels_of(kit_copy.data_dir, 2)  # a small cache: two files
    config = InferConfig.create(data_dir=kit_copy.data_dir, perch=kit_copy.perch_onnx, moe_dir=kit_copy.moe_dir, without=("crnn",))
    path = tmp_path / "cache.npz"
    first, built = build_cache(config, path, threads=2)
    assert built and set(first.logits) == {"perch", "cnn"} and "crnn" not in first.dependencies
    assert load_cache(path).logits.keys() == first.logits.keys()

    cnn_path = next(kit_copy.moe_dir.glob("student_cnn*.pt"))
    state = torch.load(cnn_path, weights_only=True)
    state["logit_head.bias"] = state["logit_head.bias"] + 0.5
    torch.save(state, cnn_path)

    plan = prepare(config, files=[])
    with pytest.raises(ArtifactError, match="cnn changed") as info:
        load_cache(path).check_dependencies(hash_dependencies(dependency_paths(plan)), path)
    assert str(path) in str(info.value)
    flags = ["--data-dir", str(kit_copy.data_dir), "--perch", str(kit_copy.perch_onnx), "--moe-dir", str(kit_copy.moe_dir), "--no-crnn"]
    assert cli.main(["sweep", *flags, "--cache", str(path), "--out", str(tmp_path / "s.csv")]) == 2
    assert "cnn changed" in capsys.readouterr().err

    second, built = build_cache(config, path, threads=2)  # rebuilt automatically
    assert built
    np.testing.assert_array_equal(second.logits["perch"], first.logits["perch"])
    np.testing.assert_allclose(second.logits["cnn"], first.logits["cnn"] + 0.5, atol=1e-4)
    # Loading the CRNN now, which the cache lacks, is a mismatch too; dropping a cached student is not.
    with pytest.raises(ArtifactError, match="crnn .* is loaded now"):
        second.check_dependencies(hash_dependencies(dependency_paths(prepare(InferConfig.create(
            data_dir=kit_copy.data_dir, perch=kit_copy.perch_onnx, moe_dir=kit_copy.moe_dir), files=[]))), path)
    second.check_dependencies(hash_dependencies(dependency_paths(prepare(InferConfig.create(
        data_dir=kit_copy.data_dir, perch=kit_copy.perch_onnx, moe_dir=kit_copy.moe_dir, without=("cnn", "crnn")), files=[]))), path)


def test_bad_cache_files_are_errors(tmp_path):
    with pytest.raises(ArtifactError, match="not found"):
        load_cache(tmp_path / "nope.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ArtifactError, match="not a streamer cache"):
        load_cache(tmp_path / "junk.npz")


def test_missing_labelled_audio_is_an_error(kit_copy, tmp_path):
    victim = sorted((kit_copy.data_dir / "train_soundscapes").glob("*.ogg"))[0]
    victim.unlink()
    config = InferConfig.create(data_dir=kit_copy.data_dir, perch=kit_copy.perch_onnx, moe_dir=kit_copy.moe_dir)
    with pytest.raises(ArtifactError, match=victim.stem):
        build_cache(config, tmp_path / "c.npz")


# --------------------------------------------------------------------------- sweep


def test_sweep_cli_ranks_writes_csv_heatmap_and_infer_command(kit, cache_path, tmp_path, capsys):
    out = tmp_path / "sweep.csv"
    args = ["sweep", *_kit_flags(kit), "--cache", str(cache_path), "--out", str(out),
            "--grid", "perch=0.6,0.8", "cnn=0,0.25", "prior=0,0.4", "smooth=0.8/0.1,off"]
    # Two axes vary only when the others are fixed: first the 4-D grid (no heatmap) ...
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "out of fold: 5 folds grouped by file" in printed and "ms per point" in printed
    table = pd.read_csv(out)
    assert len(table) == 16 and list(table["rank"]) == list(range(1, 17))
    assert table.macro_auc.is_monotonic_decreasing
    assert {"auc_Aves", "auc_Insecta", "seconds"} <= set(table.columns)
    assert not out.with_suffix(".png").exists()
    best = table.iloc[0]
    line = next(l for l in printed.splitlines() if l.startswith("best: "))
    parsed = cli.build_parser().parse_args(shlex.split(line)[2:])  # after "best: streamer"
    assert parsed.command == "infer"
    assert dict(parsed.blend) == pytest.approx({"perch": best.perch, "cnn": best.cnn, "crnn": 0.07})
    assert (parsed.prior_scale, parsed.smooth_center, parsed.smooth_side) == pytest.approx(
        (best.prior, best.smooth_center, best.smooth_side))
    # The printed command runs the best point's recipe.
    point = _point(best.perch, best.cnn, 0.07, best.prior, best.smooth_center, best.smooth_side)
    assert cli.config_from_args(parsed).ensemble.load_recipe() == point.recipe(MODEL_CARD)
    # ... then a 2-D grid: a heatmap.
    assert cli.main(["sweep", *_kit_flags(kit), "--cache", str(cache_path), "--out", str(out), "--group", "site",
                     "--grid", "perch=0.6,0.8", "prior=0,0.2,0.4"]) == 0
    assert "grouped by site" in capsys.readouterr().out
    assert out.with_suffix(".png").stat().st_size > 0


@pytest.mark.parametrize("kernel, grid", [("[0.2, 0.6, 0.2]", ["smooth=0.8/0.1,off"]), ("[0.1, 0.7, 0.2]", ["prior=0,0.4"])])
def test_best_command_with_a_set_kernel_runs_the_best_point(kit, cache_path, tmp_path, capsys, kernel, grid):
    """A kernel given to sweep with --set: when the grid varies ``smooth``, the printed command
    carries the best point's smoothing and not the --set that would replace it; an asymmetric
    kernel (no ``smooth`` axis) is carried as it is."""
    out = tmp_path / "sweep.csv"
    assert cli.main(["sweep", *_kit_flags(kit), "--cache", str(cache_path), "--out", str(out),
                     "--set", f"smooth.kernel={kernel}", "--grid", *grid]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("best: "))
    parsed = cli.build_parser().parse_args(shlex.split(line)[2:])
    top = pd.read_csv(out).iloc[0]
    base = InferConfig.create(data_dir=kit.data_dir, perch=kit.perch_onnx, moe_dir=kit.moe_dir,
                              steps=(("smooth.kernel", tuple(float(w) for w in kernel.strip("[]").split(","))),))
    smooth = (("smooth", (top.smooth_center, top.smooth_side)),) if "smooth_center" in top else ()
    best = SweepPoint((("perch", 0.8), ("cnn", 0.13), ("crnn", 0.07), ("prior", top.prior), *smooth))
    assert cli.config_from_args(parsed).ensemble.load_recipe() == best.recipe(base.ensemble.load_recipe())


def test_prior_scale_zero_is_the_same_in_and_out_of_fold(kit, cache_path, tmp_path):
    rows = {}
    for fit in ("oof", "all"):
        out = tmp_path / f"{fit}.csv"
        assert cli.main(["-q", "sweep", *_kit_flags(kit), "--cache", str(cache_path), "--prior-fit", fit, "--out", str(out),
                         "--grid", "prior=0,0.5"]) == 0
        rows[fit] = pd.read_csv(out).set_index("prior").macro_auc
    assert rows["oof"][0.0] == rows["all"][0.0]
    assert rows["oof"][0.5] != rows["all"][0.5]


def test_sweep_errors(kit, cache_path, tmp_path, capsys):
    assert cli.main(["sweep", *_kit_flags(kit), "--cache", str(cache_path), "--grid", "perch=oops"]) == 2
    assert "not a number" in capsys.readouterr().err
    assert cli.main(["sweep", *_kit_flags(kit), "--cache", str(cache_path), "--out", str(tmp_path / "s.csv"),
                     "--grid", "perch=0", "cnn=0", "crnn=0"]) == 2
    assert "sum to 0" in capsys.readouterr().err


@pytest.mark.parametrize("steps", [(), (("topk-multiplier.k", 1),)])
def test_sweep_point_equals_infers_reducer_on_cached_outputs(kit, cache_path, steps):
    """Fast check of the post-model path: infer's own reduction stage (Reducer, with its prior
    fitted on all labels, the recipe changed by infer's flags) on the cached outputs gives the
    sweep point's probabilities (the point applied to the unchanged recipe)."""
    from streamer.validate.sweep import prepare_sweep

    settings = dict(blend_perch=0.5, blend_cnn=0.3, blend_crnn=0.2, prior_scale=0.6, smooth_center=0.6, smooth_side=0.2)
    kit_settings = dict(data_dir=kit.data_dir, perch=kit.perch_onnx, moe_dir=kit.moe_dir)
    plan = prepare(InferConfig.create(**kit_settings, **settings, steps=steps), files=[])
    cache = load_cache(cache_path)
    data = prepare_sweep(prepare(InferConfig.create(**kit_settings), files=[]), cache, cache_path, prior_fit="all")
    point = _point(*settings.values(), steps)
    probs = data.probabilities(point)
    reducer = Reducer(plan.reducer)
    assert plan.reducer.member_names == ("perch", "cnn", "crnn")
    for i, stem in enumerate(cache.stems):
        outputs = ModelOutputs(cache.embedding[i], {name: cache.logits[name][i] for name in plan.reducer.member_names})
        np.testing.assert_array_equal(probs[i], reducer.reduce(stem, outputs))


@pytest.mark.slow
def test_sweep_point_reproduces_infer_and_score(kit_copy, cache_path, tmp_path, capsys):
    """The same settings through `infer` (full engine, sequential) and `score`, and through the
    cache + sweep with the prior fitted like infer's (`--prior-fit all`): the same rows, the same
    score. The copy's artifacts are byte-identical, so the kit's cache matches them."""
    for f in (kit_copy.data_dir / "test_soundscapes").glob("*.ogg"):
        f.unlink()  # infer's dry run then scores train_soundscapes/
    labelled = set(load_competition(kit_copy.data_dir).label_files)
    for f in (kit_copy.data_dir / "train_soundscapes").glob("*.ogg"):
        if f.stem not in labelled:
            f.unlink()  # unlabelled rows would be ignored by score anyway; save their model time
    settings = ["--blend-perch", "0.6", "--blend-cnn", "0.25", "--blend-crnn", "0.15", "--prior-scale", "0.4",
                "--smooth-center", "0.7", "--smooth-side", "0.15"]
    sub = tmp_path / "submission.csv"
    assert cli.main(["-q", *infer_args(kit_copy, sub, "--engine", "sequential", *settings)]) == 0
    assert cli.main(["-q", "score", str(sub), "--data-dir", str(kit_copy.data_dir)]) == 0
    score_table = pd.read_csv(tmp_path / "submission.scores.csv")
    infer_auc = float(score_table[score_table.level == "overall"].auc.iloc[0])
    capsys.readouterr()

    out = tmp_path / "sweep.csv"
    flags = ["--data-dir", str(kit_copy.data_dir), "--perch", str(kit_copy.perch_onnx), "--moe-dir", str(kit_copy.moe_dir)]
    assert cli.main(["-q", "sweep", *flags, "--cache", str(cache_path), "--prior-fit", "all", "--out", str(out),
                     "--grid", "perch=0.6,0.8", "cnn=0.25", "crnn=0.15", "prior=0.4", "smooth=0.7/0.15,0.8/0.1"]) == 0
    table = pd.read_csv(out)
    same = table[(table.perch == 0.6) & (table.smooth_center == 0.7)]
    assert len(same) == 1
    # Both CSVs print 6 decimals: equal to one unit of the last one; exactly through the library below.
    assert same.macro_auc.iloc[0] == pytest.approx(infer_auc, abs=printed_tolerance(6))

    from streamer.validate.score import score_submission
    from streamer.validate.sweep import prepare_sweep

    config = InferConfig.create(data_dir=kit_copy.data_dir, perch=kit_copy.perch_onnx, moe_dir=kit_copy.moe_dir)
    data = prepare_sweep(prepare(config, files=[]), load_cache(cache_path), cache_path, prior_fit="all")
    point = _point(0.6, 0.25, 0.15, 0.4, 0.7, 0.15)
    probs = data.probabilities(point)
    written = pd.read_csv(sub).set_index("row_id")
    rows = [f"{s}_{5 * (w + 1)}" for s in data.stems for w in range(12)]
    np.testing.assert_allclose(written.loc[rows].to_numpy(), probs.reshape(len(rows), -1), rtol=0, atol=1e-6)
    assert data.score(point).macro_auc == pytest.approx(score_submission(sub, load_competition(kit_copy.data_dir)).macro_auc, abs=1e-12)


def test_compare_two_caches_at_the_best_point(kit, cache_path, tmp_path, capsys):
    """The evidence for bf16: two caches of the same files scored side by side. A copy of the
    cache differs by nothing; a cache whose Perch logits moved gives the metric and the
    probability differences that move."""
    import dataclasses

    same = tmp_path / "same.npz"
    load_cache(cache_path).save(same)
    out = tmp_path / "sweep.csv"
    assert cli.main(["sweep", *_kit_flags(kit), "--cache", str(cache_path), "--compare", str(same), "--out", str(out)]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("at the best point"))
    assert "difference +0.0000" in line and "differ by up to 0.0000 (mean 0.00000)" in line

    cache = load_cache(cache_path)
    rng = np.random.default_rng(0)
    perch = cache.logits["perch"]
    moved = dataclasses.replace(cache, logits={**cache.logits, "perch": perch + rng.normal(0, 0.3, perch.shape).astype(np.float32)})
    moved_path = moved.save(tmp_path / "moved.npz")
    plan = prepare(InferConfig.create(data_dir=kit.data_dir, perch=kit.perch_onnx, moe_dir=kit.moe_dir), files=[])
    from streamer.validate.sweep import compare_at, prepare_sweep

    folds = assign_prior_folds(plan.competition.label_files)
    a = prepare_sweep(plan, cache, cache_path, folds=folds)
    b = prepare_sweep(plan, moved, moved_path, folds=folds)
    c = compare_at(a, b, BASE)
    pa, pb = a.probabilities(BASE), b.probabilities(BASE)
    assert c["max_prob_difference"] == pytest.approx(float(np.abs(pa - pb).max())) and c["max_prob_difference"] > 1e-3
    assert c["auc_difference"] == pytest.approx(c["macro_auc_b"] - c["macro_auc_a"])
    assert c["macro_auc_a"] == pytest.approx(a.score(BASE).macro_auc)


def test_a_cache_made_in_another_backend_is_rebuilt(kit, cache_path, tmp_path):
    import shutil

    copy = tmp_path / "cache.npz"
    shutil.copy(cache_path, copy)
    cache = load_cache(copy)
    cache.info["backend"] = "openvino bf16"
    cache.save(copy)
    config = InferConfig.create(data_dir=kit.data_dir, perch=kit.perch_onnx, moe_dir=kit.moe_dir)
    _, built = build_cache(config, copy)
    assert built and load_cache(copy).info["backend"] == "onnxruntime fp32"


# --------------------------------------------------------------------------- a recipe's own member


_CRNN_BLOCK = '''[members.crnn]
kind = "student-crnn"
input = "logmel"
file = "{moe_dir}/student_crnn*.pt"
optional = true
weight = 0.07
'''

_PROBE_BLOCK = '''[members.probe]
kind = "onnx"
input = "perch.embedding"
file = "models/probe.onnx"
output_tensor = "logits"
weight = 0.1
'''


def _probe_recipe(folder):
    """The model-card recipe with its member crnn replaced by ``probe``, an ONNX graph on
    Perch's embedding (``embedding @ W + b``) that only the recipe names. Returns the recipe's
    path and (W, b)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from streamer.recipes import packaged_text

    rng = np.random.default_rng(7)
    weight = (rng.standard_normal((1536, 234)) / np.sqrt(1536)).astype(np.float32)
    bias = rng.normal(-2.0, 0.5, 234).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["embedding", "W"], ["projected"]), helper.make_node("Add", ["projected", "b"], ["logits"])],
        "probe",
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 1536])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 234])],
        initializer=[numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    (folder / "models").mkdir(parents=True)
    onnx.save(model, str(folder / "models" / "probe.onnx"))
    text = packaged_text()
    assert _CRNN_BLOCK in text and 'drop_order = ["crnn", "cnn"]' in text and 'name = "model-card"' in text
    text = (text.replace(_CRNN_BLOCK, _PROBE_BLOCK).replace('drop_order = ["crnn", "cnn"]', 'drop_order = ["probe", "cnn"]')
            .replace('name = "model-card"', 'name = "with-probe"'))
    path = folder / "with-probe.toml"
    path.write_text(text)
    return path, weight, bias


def test_cache_and_sweep_over_a_member_only_the_recipe_names(kit_copy, tmp_path, capsys):
    """A third blend member added by the recipe alone (an ONNX graph on Perch's embedding, its
    file relative to the recipe) is cached by name, swept as an axis beside a step's parameter,
    printed in the best command as --blend/--set, and each point's probabilities are infer's
    reducer's (RecipeReducer) on the cached outputs."""
    from streamer.ensemble import RecipeReducer
    from streamer.validate.sweep import prepare_sweep

    _keep_labels_of(kit_copy.data_dir, 3)  # a small cache: three files
    recipe_path, weight, bias = _probe_recipe(tmp_path / "recipe")
    recipe = load_recipe(recipe_path)
    assert [m.name for m in recipe.blend_members] == ["perch", "cnn", "probe"]
    flags = [*_kit_flags(kit_copy), "--recipe", str(recipe_path)]

    cache_path = tmp_path / "cache.npz"
    assert cli.main(["-q", "cache", *flags, "--out", str(cache_path), "--threads", "2"]) == 0
    cache = load_cache(cache_path)
    assert set(cache.logits) == {"perch", "cnn", "probe"} and cache.info["recipe"] == "with-probe"
    assert {"perch_onnx", "perch_labels", "taxonomy", "sample_submission", "cnn", "probe"} == set(cache.dependencies)
    assert cache.dependencies["probe"]["path"] == str((recipe_path.parent / "models" / "probe.onnx").resolve())
    # The probe ran on Perch's embedding of each window.
    np.testing.assert_allclose(cache.logits["probe"], cache.embedding @ weight + bias, rtol=1e-5, atol=1e-4)

    grid = ["probe=0,0.1,0.3", "topk-multiplier.k=1,2"]
    out = tmp_path / "sweep.csv"
    capsys.readouterr()
    assert cli.main(["sweep", *flags, "--cache", str(cache_path), "--out", str(out), "--grid", *grid]) == 0
    printed = capsys.readouterr().out
    table = pd.read_csv(out)
    assert len(table) == 6 and {"perch", "cnn", "probe", "topk-multiplier.k"} <= set(table.columns)
    assert sorted(zip(table.probe, table["topk-multiplier.k"])) == [(w, k) for w in (0.0, 0.1, 0.3) for k in (1, 2)]
    assert out.with_suffix(".png").stat().st_size > 0  # two axes vary: a heatmap
    line = next(l for l in printed.splitlines() if l.startswith("best: "))
    assert "--blend probe=" in line and "--set topk-multiplier.k=" in line
    best = cli.build_parser().parse_args(shlex.split(line)[2:])
    assert best.command == "infer" and best.recipe == str(recipe_path)
    top = table.iloc[0]
    assert dict(best.blend)["probe"] == pytest.approx(top.probe) and dict(best.steps)["topk-multiplier.k"] == top["topk-multiplier.k"]

    # Each point against infer's reducer, the point given as infer's own flags.
    points, _ = parse_grid(grid, recipe)
    assert len(points) == 6
    base = prepare(InferConfig.create(data_dir=kit_copy.data_dir, perch=kit_copy.perch_onnx, moe_dir=kit_copy.moe_dir,
                                      recipe=str(recipe_path)), files=[])
    data = prepare_sweep(base, cache, cache_path, prior_fit="all")
    assert set(data.logits) == {"perch", "cnn", "probe"}
    by_value = {(p.value("probe"), p.value("topk-multiplier.k")): p for p in points}
    assert not np.allclose(data.probabilities(by_value[0.0, 2]), data.probabilities(by_value[0.3, 2]), rtol=0, atol=1e-4)
    for point in points:
        args = cli.build_parser().parse_args(["infer", *flags, *point.infer_flags()])
        plan = prepare(cli.config_from_args(args), files=[])
        assert plan.reducer.member_names == ("perch", "cnn", "probe")
        assert plan.reducer.weights["probe"] == point.value("probe")
        reducer = RecipeReducer(plan.reducer)
        probs = data.probabilities(point)
        for i, stem in enumerate(cache.stems):
            outputs = ModelOutputs(cache.embedding[i], {name: cache.logits[name][i] for name in cache.logits})
            np.testing.assert_allclose(probs[i], reducer.reduce(stem, outputs), rtol=0, atol=4 * np.finfo(np.float32).eps)
