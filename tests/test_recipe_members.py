"""Members added by a recipe alone, no code change: a linear probe (an ONNX MatMul + Add) on
Perch's embedding and a small ONNX network on the log-mel with a label space of its own,
blended with the model-card members; checked against the plain reference of
``test_infer_e2e`` extended with the two members written in numpy."""

import numpy as np
import pandas as pd
import pytest

from streamer import cli
from streamer.recipes import packaged_text

from conftest import infer_args
from test_infer_e2e import _reference_file

N_MEL_LABELS = 40


def _save(graph, path):
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def make_probe(path, seed=1):
    """``logits = embedding @ W + b``: a linear probe on Perch's embedding."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((1536, 234)) * 0.05).astype(np.float32)
    b = rng.standard_normal(234).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["embedding", "W"], ["xw"]), helper.make_node("Add", ["xw", "B"], ["logits"])],
        "probe",
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 1536])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 234])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")],
    )
    _save(graph, path)
    return w, b


def make_melnet(path, seed=2):
    """``scores = mean over time(log-mel) @ W + b``: 40 outputs of its own."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((128, N_MEL_LABELS)) * 0.1).astype(np.float32)
    b = rng.standard_normal(N_MEL_LABELS).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["mel"], ["m"], axes=[3], keepdims=0),
         helper.make_node("Flatten", ["m"], ["f"], axis=1),
         helper.make_node("MatMul", ["f", "W"], ["fw"]),
         helper.make_node("Add", ["fw", "B"], ["scores"])],
        "melnet",
        [helper.make_tensor_value_info("mel", TensorProto.FLOAT, ["N", 1, 128, 501])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", N_MEL_LABELS])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")],
    )
    _save(graph, path)
    return w, b


EXTRA_MEMBERS = """
[members.probe]
kind = "onnx"
input = "perch.embedding"
file = "probe.onnx"
output_tensor = "logits"
weight = 0.1

[members.melnet]
kind = "onnx"
input = "logmel"
file = "melnet.onnx"
output_tensor = "scores"
labels = "melnet_labels.csv"
match = "primary_label"
unmapped = -6.0
weight = 0.05
"""


@pytest.fixture(scope="module")
def five_members(kit, tmp_path_factory):
    """A recipe folder: the model-card recipe plus the two members, their graphs and labels."""
    folder = tmp_path_factory.mktemp("recipe")
    probe = make_probe(folder / "probe.onnx")
    melnet = make_melnet(folder / "melnet.onnx")
    classes = list(pd.read_csv(kit.data_dir / "sample_submission.csv", nrows=0).columns[1:])
    rng = np.random.default_rng(3)
    known = [classes[i] for i in rng.choice(len(classes), N_MEL_LABELS - 5, replace=False)]
    names = known + [f"not_a_class_{i}" for i in range(5)]  # its own label space: 35 of ours, 5 others
    pd.DataFrame({"primary_label": names}).to_csv(folder / "melnet_labels.csv", index=False)
    recipe = folder / "five.toml"
    recipe.write_text(packaged_text().replace('name = "model-card"', 'name = "five-members"') + EXTRA_MEMBERS)
    return recipe, probe, melnet, names


def _members_in_numpy(classes, probe, melnet, names):
    w1, b1 = probe
    w2, b2 = melnet
    where = {n: i for i, n in enumerate(names)}

    def probe_logits(windows, emb, mel):
        return emb @ w1 + b1

    def melnet_logits(windows, emb, mel):
        scores = mel.mean(axis=3).reshape(len(mel), -1) @ w2 + b2
        return np.stack([scores[:, where[c]] if c in where else np.full(len(mel), -6.0, np.float32) for c in classes], axis=1)

    return [(0.1, probe_logits), (0.05, melnet_logits)]


@pytest.mark.slow  # two whole infer runs and the reference of two files
@pytest.mark.parametrize("engine", ["sequential", "pipeline"])
def test_members_added_by_a_recipe_alone(kit, five_members, tmp_path, engine):
    recipe, probe, melnet, names = five_members
    out = tmp_path / "sub.csv"
    assert cli.main(infer_args(kit, out, "--recipe", str(recipe), "--engine", engine, "--report-json", str(tmp_path / "r.json"))) == 0
    got = pd.read_csv(out)
    import json

    report = json.loads((tmp_path / "r.json").read_text())
    assert {"probe", "melnet"} <= set(report["models"])
    assert {"member:probe", "member:melnet", "member:cnn", "member:crnn"} <= set(report["seconds"])  # each member's own time
    for path in sorted((kit.data_dir / "test_soundscapes").glob("*.ogg"))[:2]:
        classes = list(got.columns[1:])
        expected, classes = _reference_file(kit, path, extra=_members_in_numpy(classes, probe, melnet, names))
        rows = got[got["row_id"].str.startswith(path.name[:-4] + "_")][classes].to_numpy()
        np.testing.assert_allclose(rows, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # two whole infer runs
def test_without_the_new_members_is_the_model_card(kit, five_members, tmp_path):
    recipe = five_members[0]
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    assert cli.main(infer_args(kit, a, "--recipe", str(recipe), "--without", "probe", "--without", "melnet", "--engine", "sequential")) == 0
    assert cli.main(infer_args(kit, b, "--engine", "sequential")) == 0
    pd.testing.assert_frame_equal(pd.read_csv(a), pd.read_csv(b))


def test_a_recipe_mistake_stops_before_any_process(kit, five_members, tmp_path, capsys):
    recipe = five_members[0]
    bad = tmp_path / "bad.toml"
    bad.write_text(recipe.read_text().replace('output_tensor = "scores"', 'output_tensor = "score"')
                   .replace('file = "probe.onnx"', f'file = "{recipe.parent / "probe.onnx"}"')
                   .replace('labels = "melnet_labels.csv"', f'labels = "{recipe.parent / "melnet_labels.csv"}"')
                   .replace('file = "melnet.onnx"', f'file = "{recipe.parent / "melnet.onnx"}"')
                   .replace('weight = 0.1\n', 'weight = 0.1\ninput_tensor = "emb"\n'))
    out = tmp_path / "sub.csv"
    assert cli.main(infer_args(kit, out, "--recipe", str(bad))) == 2
    err = capsys.readouterr().err
    assert "members.melnet.output_tensor = 'score': melnet.onnx has no such output (outputs: scores)" in err
    assert "members.probe.input_tensor = 'emb': probe.onnx has no such input (inputs: embedding)" in err
    assert not out.exists()


def test_a_graph_that_does_not_take_its_front_end_is_refused(kit, five_members, tmp_path, capsys):
    recipe = five_members[0]
    bad = recipe.parent / "wrong-input.toml"
    bad.write_text(recipe.read_text().replace('input = "logmel"\nfile = "melnet.onnx"', 'input = "perch.embedding"\nfile = "melnet.onnx"'))
    assert cli.main(["recipe", "check", str(bad), "--data-dir", str(kit.data_dir), "--perch", str(kit.perch_onnx),
                     "--moe-dir", str(kit.moe_dir)]) == 2
    err = capsys.readouterr().err
    assert "members.melnet.input = 'perch.embedding': melnet.onnx's input 'mel' has shape ['N', 1, 128, 501], the front-end gives ['N', 1536]" in err


def test_an_onnx_member_of_several_folds_is_their_mean(kit, tmp_path):
    """``folds = 2`` with ``{fold}`` in the file: the member's logits are the mean of the two
    graphs' outputs (through MemberSet, as a consumer runs it)."""
    from streamer.models.graphs import BackendChoice, ThreadSettings
    from streamer.models.members import MemberSet
    from streamer.recipes.schema import parse_recipe
    import tomllib

    folds = [make_probe(tmp_path / f"probe_fold{k}.onnx", seed=10 + k) for k in (1, 2)]
    text = packaged_text() + EXTRA_MEMBERS.split("[members.melnet]")[0].replace('file = "probe.onnx"', 'file = "probe_fold{fold}.onnx"\nfolds = 2')
    recipe = parse_recipe(tomllib.loads(text), "r.toml", folder=tmp_path)
    from test_recipes import _bind

    bound = _bind(kit, recipe)
    probe = bound.member("probe")
    assert len(probe.paths) == 2
    members = MemberSet((probe,), exported={}, threads=ThreadSettings(1), backend=BackendChoice(), n_classes=234)
    emb = np.random.default_rng(0).standard_normal((12, 1536)).astype(np.float32)
    got = members.run(np.zeros((12, 160000), np.float32), emb, None)["probe"]
    want = np.mean([emb @ w + b for w, b in folds], axis=0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_the_perch_front_end_can_name_its_files_and_hash(kit, tmp_path, capsys):
    from streamer.files import sha256_file

    text = packaged_text().replace('file = "{perch}"', f'file = "{kit.perch_onnx}"\nsha256 = "{"0" * 64}"')
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    args = ["recipe", "check", str(bad), "--data-dir", str(kit.data_dir), "--moe-dir", str(kit.moe_dir), "--perch", str(kit.perch_onnx)]
    assert cli.main(args) == 2
    assert f"frontends.perch.sha256: {kit.perch_onnx} has SHA-256 {sha256_file(kit.perch_onnx)}, the recipe expects {'0' * 64}" in capsys.readouterr().err
    good = tmp_path / "good.toml"
    good.write_text(text.replace("0" * 64, sha256_file(kit.perch_onnx)))
    assert cli.main(args[:2] + [str(good)] + args[3:]) == 0
    assert cli.main(args[:2] + [str(good)] + args[3:-2]) == 0  # the recipe names its Perch: --perch not needed
    assert cli.main(["recipe", "check", "model-card", *args[3:-2]]) == 2  # the model-card's {perch} needs it
    assert "frontends.perch.file = '{perch}': {perch} needs --perch" in capsys.readouterr().err


def test_a_member_that_fails_to_load_names_itself(kit, tmp_path):
    """A graph whose declarations are fine (the parent's check passes) but that onnxruntime
    cannot load: the process building it raises an error naming the member."""
    import tomllib

    import onnx
    from onnx import TensorProto, helper

    from streamer.errors import ArtifactError
    from streamer.models.graphs import BackendChoice, ThreadSettings
    from streamer.models.members import MemberSet
    from streamer.recipes.schema import parse_recipe
    from test_recipes import _bind

    graph = helper.make_graph([helper.make_node("NoSuchOperator", ["embedding"], ["logits"])], "broken",
                              [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 1536])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 234])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "probe.onnx"))
    text = packaged_text() + EXTRA_MEMBERS.split("[members.melnet]")[0]
    bound = _bind(kit, parse_recipe(tomllib.loads(text), "r.toml", folder=tmp_path))  # declarations pass
    with pytest.raises(ArtifactError, match=r"^member 'probe': .*probe\.onnx: onnxruntime cannot load this model"):
        MemberSet((bound.member("probe"),), exported={}, threads=ThreadSettings(1), backend=BackendChoice(), n_classes=234)


def test_a_head_from_streamer_classify_is_a_member_a_recipe_can_name(kit, tmp_path):
    """``streamer classify``'s ONNX head (input ``embedding``, outputs ``logits`` and ``scores``,
    its labels in the metadata) named as an ``onnx`` member on Perch's embedding, with a label
    file of its classes: its logits land in those classes' columns, the others get ``unmapped``."""
    import json

    import onnx
    from streamer.archive.classify import write_head
    from streamer.models.graphs import BackendChoice, ThreadSettings
    from streamer.models.members import MemberSet
    from streamer.recipes.schema import parse_recipe
    import tomllib

    classes = list(pd.read_csv(kit.data_dir / "sample_submission.csv", nrows=0).columns[1:])
    mine = [classes[7], classes[100], classes[201]]
    rng = np.random.default_rng(4)
    w = (rng.standard_normal((1536, 3)) * 0.05).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32)
    write_head(tmp_path / "head.onnx", w, b, mine, {"kind": "perch"}, [])
    labels = json.loads({p.key: p.value for p in onnx.load(str(tmp_path / "head.onnx")).metadata_props}["labels"])
    pd.DataFrame({"primary_label": labels}).to_csv(tmp_path / "head_labels.csv", index=False)
    text = packaged_text() + """
[members.mine]
kind = "onnx"
input = "perch.embedding"
file = "head.onnx"
output_tensor = "logits"
labels = "head_labels.csv"
match = "primary_label"
unmapped = -6.0
weight = 0.1
"""
    from test_recipes import _bind

    member = _bind(kit, parse_recipe(tomllib.loads(text), "r.toml", folder=tmp_path)).member("mine")
    members = MemberSet((member,), exported={}, threads=ThreadSettings(1), backend=BackendChoice(), n_classes=234)
    emb = rng.standard_normal((12, 1536)).astype(np.float32)
    got = members.run(np.zeros((12, 160000), np.float32), emb, None)["mine"]
    want = np.full((12, 234), -6.0, np.float32)
    want[:, [classes.index(c) for c in mine]] = emb @ w + b
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
