"""Stand-in artifacts and competition data with the real formats and random weights.

The real Perch 2.0 ONNX (~409 MB) and the chaneyma MoE bundle cannot be downloaded on our
machines, so tests, benchmarks and dry runs use a *kit* made
here: every file has exactly the real artifact's format (file names, ONNX input/output names and
shapes, state-dict keys, shapes and dtypes, CSV headers) but random, seeded content.

Kit layout (``make_standins(out_dir)``)::

    out_dir/
      perch/perch_v2.onnx            small graph, real signature
      perch/labels.csv               header ``inat2024_fsd50k``, 14,795 names in logit order
      moe/moe_p0.60_c0.25_r0.15_post_p0.45_fold{1..4}.pt   ProtoSSM state dicts
      moe/student_cnn_…_seed42.pt, moe/student_crnn_…_seed42.pt
      multi/multi-model.toml         a second recipe: three ONNX members (sed.onnx on the log-mel,
                                     wave.onnx on the waveform, probe.onnx on Perch's embedding)
                                     with label files of their own, a rank blend
      competition/taxonomy.csv, sample_submission.csv, train_soundscapes_labels.csv
      competition/train_soundscapes/*.ogg    synthetic one-minute files
      competition/test_soundscapes/*.ogg     the four shipped real recordings + synthetic files

Everything is a pure function of ``seed``: the same seed gives the same CSVs, the same decoded
audio and the same tensors. (OGG files are not byte-identical across builds: libsndfile gives
every Vorbis stream a random serial number; the decoded samples are identical.)
"""

from __future__ import annotations

import csv
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from streamer.files import atomic_open
from streamer.metadata import file_stem, parse_site

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# Public constants. Other modules and tests depend on these names.
# --------------------------------------------------------------------------------------------

#: Size of Perch 2.0's label vocabulary (rows of its label list, width of its ``label`` output).
PERCH_N_LABELS = 14795
#: Width of Perch 2.0's ``embedding`` output.
PERCH_EMBED_DIM = 1536
#: File-name prefix of the four ProtoSSM folds in the released MoE bundle.
FOLD_PREFIX = "moe_p0.60_c0.25_r0.15_post_p0.45"
#: File names of the two students in the released MoE bundle.
CNN_FILENAME = "student_cnn_2025_plus_2026_nodistill_keepperch_ed28_cv45_c6_m45_ps0.40_seed42.pt"
CRNN_FILENAME = "student_crnn_2025_plus_2026_nodistill_keepperch_ed28_cv45_c6_m45_ps0.40_seed42.pt"

#: Header of the Perch 2.0 label list.
PERCH_LABELS_HEADER = "inat2024_fsd50k"
#: Number of ProtoSSM folds in the bundle.
N_FOLDS = 4

# Perch 2.0 signature.
PERCH_SAMPLE_RATE_HZ = 32000
PERCH_WINDOW_SAMPLES = 160000
PERCH_SPEC_FRAMES = 500
PERCH_SPEC_BINS = 128
PERCH_SPATIAL_SHAPE = (16, 4)
PERCH_DEFAULT_OUTPUT_NAMES = ("embedding", "spatial_embedding", "spectrogram", "label")

# Competition shape.
N_CLASSES = 234
N_SONOTYPES = 25
SONOTYPE_TAXON_ID = 47158
#: Classes of the taxonomy by class_name; sums to 234. Insecta = 25 sonotypes + 3 named insects.
CLASS_COUNTS = {"Aves": 160, "Amphibia": 35, "Insecta": 28, "Mammalia": 8, "Reptilia": 3}
#: On the real data 203 of the 234 taxonomy names occur in Perch's list.
N_MATCHED_CLASSES = 203
SOUNDSCAPE_DURATION_S = 60
LABEL_WINDOW_S = 5


#: Sites of the synthetic training files (a handful, like the real recorders' ids).
TRAIN_SITES = ("S03", "S08", "S13", "S15", "S22")
#: Size of the pool of classes the synthetic labels are drawn from (most classes stay negative).
N_LABEL_POOL_CLASSES = 60

# Stand-in Perch graph tuning. All values were chosen by measuring the stand-in on the four
# shipped real recordings (rms ~0.03) and on synthetic noise/tones:
#: Gain of the random frame filterbank, so that rms 0.03 audio gives |projection| ~ 10 and
#: log(1 + |x|) spans ~0 (silence) to ~4.5 (rms 0.3).
_FRAME_GAIN = 300.0
#: Gain of the per-frame feature layer before tanh (keeps tanh mostly out of saturation).
_FEATURE_GAIN = 1.5
#: Rank of the label head: [1536, 32] @ [32, n_labels] keeps the file at ~3.3 MB.
_HEAD_RANK = 32
#: Std of the audio-dependent part of the logits on the calibration signals. Field recordings
#: move the head more than the calibration tones do: 1.6 here, with the class bias spread below,
#: gives logits of std 2.6-3.0 on the shipped recordings and the synthetic soundscapes, and
#: about 70 % of the sigmoids in (0.05, 0.95).
_LOGIT_TARGET_STD = 1.6
_LOGIT_BIAS_MEAN = -1.0
_LOGIT_BIAS_STD = 1.0


@dataclass(frozen=True)
class StandinKit:
    """Paths of a kit written by :func:`make_standins`.

    Attributes:
        root: the kit's top folder (``out_dir``).
        perch_onnx: ``root/perch/perch_v2.onnx``.
        perch_labels: ``root/perch/labels.csv``.
        moe_dir: ``root/moe`` (four ProtoSSM folds and the two students).
        data_dir: ``root/competition`` (Kaggle-style competition folder).
    """

    root: Path
    perch_onnx: Path
    perch_labels: Path
    moe_dir: Path
    data_dir: Path

    @property
    def multi_recipe(self) -> Path:
        """``root/multi/multi-model.toml``: the second recipe (ONNX members with label spaces
        of their own, a rank blend), see :func:`write_multi_model_example`."""
        return self.root / "multi" / "multi-model.toml"


# --------------------------------------------------------------------------------------------
# Perch 2.0 stand-in ONNX
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _PerchWeights:
    """float32 weights of the stand-in graph (see :func:`build_perch_onnx`)."""

    frame_proj: np.ndarray  # [320, 128]
    feat_w: np.ndarray  # [128, 1536]
    feat_b: np.ndarray  # [1536]
    cell_w: np.ndarray  # [32, 1536]
    cell_b: np.ndarray  # [1536]
    head_low: np.ndarray  # [1536, rank]
    head_up: np.ndarray  # [rank, n_labels]
    head_b: np.ndarray  # [n_labels]


_FRAME_LEN = PERCH_WINDOW_SAMPLES // PERCH_SPEC_FRAMES  # 320 samples = 10 ms
_CELL_T, _CELL_F = PERCH_SPATIAL_SHAPE  # 16 x 4 cells
_CELL_FRAMES = PERCH_SPEC_FRAMES // _CELL_T  # 31 frames per cell (the last 4 frames are dropped)
_CELL_BINS = PERCH_SPEC_BINS // _CELL_F  # 32 bins per cell


def _spectrogram_np(frame_proj: np.ndarray, waveform: np.ndarray) -> np.ndarray:
    """``[B,160000]`` → ``[B,500,128]``, the stand-in's "spectrogram": log(1 + |frames @ W|)."""
    frames = waveform.reshape(-1, PERCH_SPEC_FRAMES, _FRAME_LEN).astype(np.float32)
    return np.log1p(np.abs(frames @ frame_proj))


def _calibration_windows(rng: np.random.Generator, n_windows: int = 8) -> np.ndarray:
    """Synthetic windows spanning silence to loud tones, used to centre and scale the head.

    Returns: float32 ``[n_windows, 160000]``.
    """
    t = np.arange(PERCH_WINDOW_SAMPLES) / PERCH_SAMPLE_RATE_HZ
    levels = np.geomspace(0.001, 0.1, n_windows)
    out = np.empty((n_windows, PERCH_WINDOW_SAMPLES), dtype=np.float32)
    for i, level in enumerate(levels):
        noise = rng.standard_normal(PERCH_WINDOW_SAMPLES) * level
        freq_hz = rng.uniform(300.0, 10000.0)
        tone = rng.uniform(0.0, 0.3) * np.sin(2 * np.pi * freq_hz * t + rng.uniform(0, 2 * np.pi))
        out[i] = noise + tone
    return out


def _make_perch_weights(n_labels: int, seed: int) -> _PerchWeights:
    rng = np.random.default_rng(seed)
    f32 = np.float32
    frame_proj = (rng.standard_normal((_FRAME_LEN, PERCH_SPEC_BINS)) * (_FRAME_GAIN / np.sqrt(_FRAME_LEN))).astype(f32)
    feat_gain = _FEATURE_GAIN / np.sqrt(PERCH_SPEC_BINS)
    feat_w = (rng.standard_normal((PERCH_SPEC_BINS, PERCH_EMBED_DIM)) * feat_gain).astype(f32)
    cell_w = (rng.standard_normal((_CELL_BINS, PERCH_EMBED_DIM)) * (_FEATURE_GAIN / np.sqrt(_CELL_BINS))).astype(f32)
    head_low = (rng.standard_normal((PERCH_EMBED_DIM, _HEAD_RANK)) / np.sqrt(PERCH_EMBED_DIM)).astype(f32)
    head_up = (rng.standard_normal((_HEAD_RANK, n_labels)) / np.sqrt(_HEAD_RANK)).astype(f32)
    class_bias = rng.normal(_LOGIT_BIAS_MEAN, _LOGIT_BIAS_STD, size=n_labels)

    # Centre the features on the calibration signals so that embeddings and logits move with
    # the audio instead of sitting on a large constant offset.
    calib = _calibration_windows(rng)
    spec = _spectrogram_np(frame_proj, calib)
    spec_centre = float(spec.mean())
    feat_b = (-spec_centre * feat_w.sum(axis=0)).astype(f32)
    cell_b = (-spec_centre * cell_w.sum(axis=0)).astype(f32)
    embedding = np.tanh(spec @ feat_w + feat_b).mean(axis=1)  # [n, 1536]
    emb_centre = embedding.mean(axis=0)
    deviation = ((embedding - emb_centre) @ head_low) @ head_up
    scale = _LOGIT_TARGET_STD / max(float(deviation.std()), 1e-6)
    head_up = (head_up * scale).astype(f32)
    head_b = (class_bias - (emb_centre @ head_low) @ head_up).astype(f32)
    return _PerchWeights(frame_proj, feat_w, feat_b, cell_w, cell_b, head_low, head_up, head_b)


def build_perch_onnx(
    path: str | Path,
    *,
    n_labels: int = PERCH_N_LABELS,
    seed: int = 0,
    input_rank: int = 2,
    output_names: Sequence[str] = PERCH_DEFAULT_OUTPUT_NAMES,
    ir_version: int = 9,
    opset: int = 17,
) -> Path:
    """Write a small ONNX model with Perch 2.0's exact signature and random weights.

    Graph (``B`` = symbolic dim ``batch``)::

        inputs [B,160000] (or [B,1,1,160000])
          → Reshape [B,500,320] → MatMul [320,128] → Abs → +1 → Log      = spectrogram [B,500,128]
          → MatMul [128,1536] + b → Tanh → ReduceMean(frames)            = embedding [B,1536]
        spectrogram[:, :496] → Reshape [B,16,31,4,32] → ReduceMean(31)
          → MatMul [32,1536] + b → Tanh                                  = spatial_embedding [B,16,4,1536]
        embedding → MatMul [1536,32] → MatMul [32,n_labels] + b         = label [B,n_labels]

    Every output depends on the audio, is deterministic and finite, and costs ~0.1 GMAC per
    window. The label head is centred and scaled on synthetic calibration signals so that
    logits on real recordings have std ~2-3.

    Args:
        path: output file (parent folders are created).
        n_labels: width of the ``label`` output.
        seed: seed of ``numpy.random.default_rng`` for all weights.
        input_rank: 2 declares ``[batch,160000]``; 4 declares ``[batch,1,1,160000]`` (seen in
            some exports) and reshapes inside.
        output_names: names of the four outputs, in the order embedding, spatial embedding,
            spectrogram, label.
        ir_version: the model's IR version (9 loads in older onnxruntime builds).
        opset: default-domain opset (13 or later).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    path = Path(path)
    names = tuple(output_names)
    if len(names) != 4 or len(set(names)) != 4 or any(not n for n in names):
        raise ValueError(f"output_names must be 4 distinct non-empty names, got {names!r}")
    if "inputs" in names:
        raise ValueError("no output may be called 'inputs' (the input's name)")
    if input_rank not in (2, 4):
        raise ValueError(f"input_rank must be 2 or 4, got {input_rank}")
    if opset < 13:
        raise ValueError(f"opset must be 13 or later, got {opset}")
    if n_labels < 1:
        raise ValueError(f"n_labels must be positive, got {n_labels}")
    emb_name, spatial_name, spec_name, label_name = names

    w = _make_perch_weights(n_labels, seed)
    prefix = "standin/"  # internal tensor names cannot clash with user-chosen output names

    def const(name: str, array: np.ndarray):
        return numpy_helper.from_array(np.asarray(array), prefix + name)

    initializers = [
        const("frame_shape", np.array([-1, PERCH_SPEC_FRAMES, _FRAME_LEN], dtype=np.int64)),
        const("frame_proj", w.frame_proj),
        const("one", np.array(1.0, dtype=np.float32)),
        const("feat_w", w.feat_w),
        const("feat_b", w.feat_b),
        const("cell_start", np.array([0], dtype=np.int64)),
        const("cell_end", np.array([_CELL_T * _CELL_FRAMES], dtype=np.int64)),
        const("cell_axis", np.array([1], dtype=np.int64)),
        const("cell_shape", np.array([-1, _CELL_T, _CELL_FRAMES, _CELL_F, _CELL_BINS], dtype=np.int64)),
        const("cell_w", w.cell_w),
        const("cell_b", w.cell_b),
        const("head_low", w.head_low),
        const("head_up", w.head_up),
        const("head_b", w.head_b),
    ]

    def reduce_mean(x: str, axis: int, out: str):
        if opset >= 18:  # axes became an input in opset 18
            initializers.append(const(f"axes_{axis}", np.array([axis], dtype=np.int64)))
            return helper.make_node("ReduceMean", [x, prefix + f"axes_{axis}"], [out], keepdims=0)
        return helper.make_node("ReduceMean", [x], [out], axes=[axis], keepdims=0)

    p = prefix
    nodes = [
        helper.make_node("Reshape", ["inputs", p + "frame_shape"], [p + "frames"]),
        helper.make_node("MatMul", [p + "frames", p + "frame_proj"], [p + "proj"]),
        helper.make_node("Abs", [p + "proj"], [p + "proj_abs"]),
        helper.make_node("Add", [p + "proj_abs", p + "one"], [p + "proj_1p"]),
        helper.make_node("Log", [p + "proj_1p"], [spec_name]),
        helper.make_node("MatMul", [spec_name, p + "feat_w"], [p + "feat_lin"]),
        helper.make_node("Add", [p + "feat_lin", p + "feat_b"], [p + "feat_pre"]),
        helper.make_node("Tanh", [p + "feat_pre"], [p + "feat"]),
        reduce_mean(p + "feat", 1, emb_name),
        helper.make_node("Slice", [spec_name, p + "cell_start", p + "cell_end", p + "cell_axis"], [p + "spec_cut"]),
        helper.make_node("Reshape", [p + "spec_cut", p + "cell_shape"], [p + "cells"]),
        reduce_mean(p + "cells", 2, p + "cell_mean"),
        helper.make_node("MatMul", [p + "cell_mean", p + "cell_w"], [p + "cell_lin"]),
        helper.make_node("Add", [p + "cell_lin", p + "cell_b"], [p + "cell_pre"]),
        helper.make_node("Tanh", [p + "cell_pre"], [spatial_name]),
        helper.make_node("MatMul", [emb_name, p + "head_low"], [p + "head_z"]),
        helper.make_node("MatMul", [p + "head_z", p + "head_up"], [p + "head_lin"]),
        helper.make_node("Add", [p + "head_lin", p + "head_b"], [label_name]),
    ]

    input_shape = ["batch", PERCH_WINDOW_SAMPLES] if input_rank == 2 else ["batch", 1, 1, PERCH_WINDOW_SAMPLES]
    graph = helper.make_graph(
        nodes,
        "perch_v2_standin",
        inputs=[helper.make_tensor_value_info("inputs", TensorProto.FLOAT, input_shape)],
        outputs=[
            helper.make_tensor_value_info(emb_name, TensorProto.FLOAT, ["batch", PERCH_EMBED_DIM]),
            helper.make_tensor_value_info(
                spatial_name, TensorProto.FLOAT, ["batch", *PERCH_SPATIAL_SHAPE, PERCH_EMBED_DIM]
            ),
            helper.make_tensor_value_info(spec_name, TensorProto.FLOAT, ["batch", PERCH_SPEC_FRAMES, PERCH_SPEC_BINS]),
            helper.make_tensor_value_info(label_name, TensorProto.FLOAT, ["batch", n_labels]),
        ],
        initializer=initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset)],
        producer_name="streamer.standins",
        doc_string="Stand-in with Perch 2.0's signature and random weights (not a trained model).",
    )
    model.ir_version = ir_version
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as handle:
        handle.write(model.SerializeToString())  # small (a low-rank head): one protobuf, no external data
    log.info("wrote stand-in Perch ONNX %s (%d labels, rank-%d input, IR %d, opset %d, %.1f MB)",
             path, n_labels, input_rank, ir_version, opset, path.stat().st_size / 1e6)
    return path


# --------------------------------------------------------------------------------------------
# MoE bundle
# --------------------------------------------------------------------------------------------


#: Std of the students' audio-dependent logits on the calibration windows. Default-initialised
#: heads give logits of std ~0.1 that hardly move between windows; trained students do not.
_STUDENT_LOGIT_STD = 2.0


def _calibrate_student(model, mel, gen) -> None:
    """Make a default-initialised student behave like a trained one on log-mel input.

    BatchNorm affine parameters are perturbed, then the running statistics are measured on
    calibration log-mels (as training would have left them: the log-mel's large negative offset
    is normalised away, so the outputs move with the audio), and the logit head is rescaled so
    that logits spread like a trained head's. ``num_batches_tracked`` gets a positive count.

    Args:
        model: StudentCNN or StudentCRNN.
        mel: float32 ``[n, 1, 128, 501]`` calibration log-mels.
        gen: torch Generator for the perturbations.
    """
    import torch
    from torch import nn

    batchnorms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in batchnorms:
        n = bn.num_features
        bn.weight.copy_(1.0 + torch.randn(n, generator=gen) * 0.1)
        bn.bias.copy_(torch.randn(n, generator=gen) * 0.1)
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the calibration batch
    model.train()
    model(mel)
    model.eval()
    for bn in batchnorms:
        bn.momentum = 0.1
        bn.num_batches_tracked.fill_(int(torch.randint(1000, 50000, (1,), generator=gen)))
    head = model.logit_head
    _, logits = model(mel)
    deviation = float((logits - head.bias).std())
    head.weight.mul_(_STUDENT_LOGIT_STD / max(deviation, 1e-6))
    head.bias.copy_(torch.randn(head.out_features, generator=gen) * 0.5)


def write_moe_bundle(
    moe_dir: str | Path,
    *,
    n_site_slots: int,
    n_classes: int = N_CLASSES,
    seed: int = 0,
    d_model: int = 320,
    with_cnn: bool = True,
    with_crnn: bool = True,
) -> list[Path]:
    """Write the chaneyma MoE bundle's files with random weights.

    Four ProtoSSM folds ``{FOLD_PREFIX}_fold{1..4}.pt`` and, when enabled, the two students under
    :data:`CNN_FILENAME` / :data:`CRNN_FILENAME`, each a plain ``state_dict`` saved with
    ``torch.save``. Each file has its own torch seed (derived from ``seed``); the caller's
    global torch RNG state is left untouched. The default initialisation is perturbed so that
    outputs are non-trivial (fusion weights away from 0.5, spread prototypes; students with
    BatchNorm statistics measured on synthetic log-mels and logits that move with the audio).

    Args:
        moe_dir: output folder (created).
        n_site_slots: first dimension of ``site_emb.weight`` (labelled sites + 1).
        n_classes: number of competition classes.
        seed: base seed.
        d_model: ProtoSSM width.
        with_cnn, with_crnn: write the students.

    Returns:
        The written paths: folds 1..4, then CNN, then CRNN (those enabled).
    """
    import torch

    from streamer.models.experts import LogMel, ProtoSSM, StudentCNN, StudentCRNN

    if n_site_slots < 1:
        raise ValueError(f"n_site_slots must be positive, got {n_site_slots}")
    moe_dir = Path(moe_dir)
    moe_dir.mkdir(parents=True, exist_ok=True)

    jobs: list[tuple[str, Path]] = [("fold", moe_dir / f"{FOLD_PREFIX}_fold{k}.pt") for k in range(1, N_FOLDS + 1)]
    if with_cnn:
        jobs.append(("cnn", moe_dir / CNN_FILENAME))
    if with_crnn:
        jobs.append(("crnn", moe_dir / CRNN_FILENAME))

    calib_mel = None
    if with_cnn or with_crnn:
        with torch.no_grad():
            calib = _calibration_windows(np.random.default_rng(seed))
            calib_mel = LogMel()(torch.from_numpy(calib))

    written: list[Path] = []
    for index, (kind, path) in enumerate(jobs):
        file_seed = int(seed) * 1009 + index + 1
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(file_seed)
            gen = torch.Generator().manual_seed(file_seed)
            with torch.no_grad():
                if kind == "fold":
                    model = ProtoSSM(d_model=d_model, n_sites=n_site_slots, n_classes=n_classes)
                    model.fusion_alpha.copy_(torch.randn(n_classes, generator=gen))
                    model.class_bias.copy_(torch.randn(n_classes, generator=gen) * 0.5)
                    model.prototypes.copy_(torch.randn(model.prototypes.shape, generator=gen))
                    model.pos_enc.copy_(torch.randn(model.pos_enc.shape, generator=gen) * 0.1)
                    model.proto_temp.fill_(float(5.0 + torch.randn(1, generator=gen) * 0.5))
                else:
                    model = StudentCNN(n_classes) if kind == "cnn" else StudentCRNN(n_classes)
                    _calibrate_student(model, calib_mel, gen)
        with atomic_open(path, "wb") as handle:
            torch.save(model.state_dict(), handle)
        written.append(path)
    log.info("wrote stand-in MoE bundle in %s: %d files, %d site slots", moe_dir, len(written), n_site_slots)
    return written


# --------------------------------------------------------------------------------------------
# Competition data
# --------------------------------------------------------------------------------------------

_SYLLABLES = (
    "ba", "ca", "da", "fa", "ga", "la", "ma", "na", "pa", "ra", "sa", "ta", "va", "za", "be", "ce", "de", "fe",
    "ge", "le", "me", "ne", "pe", "re", "se", "te", "ve", "bi", "ci", "di", "gi", "li", "mi", "ni", "pi", "ri",
    "si", "ti", "vi", "bo", "co", "do", "go", "lo", "mo", "no", "po", "ro", "so", "to", "vo", "bu", "cu", "du",
    "gu", "lu", "mu", "nu", "pu", "ru", "su", "tu", "thra", "chlo", "phy", "xen", "myr", "scel", "tro", "cha",
)
_GENUS_ENDINGS = ("us", "a", "is", "ops", "ix", "ura", "ella", "ornis", "ia", "odes")
_SPECIES_ENDINGS = ("i", "ae", "us", "a", "is", "ensis", "atus", "ata", "ii", "icola")
_ADJECTIVES = (
    "Rufous", "Olive", "Pale", "Spotted", "Striped", "Dusky", "Golden", "Scaly", "Black-capped", "White-throated",
    "Buff-bellied", "Grey", "Lesser", "Greater", "Little", "Crested", "Chestnut", "Plain", "Banded", "Yellow-eared",
)
_NOUNS = {
    "Aves": ("Antwren", "Tanager", "Flycatcher", "Wren", "Woodcreeper", "Tinamou", "Parrot", "Hummingbird", "Thrush",
             "Manakin", "Antbird", "Puffbird", "Owl", "Nightjar"),
    "Amphibia": ("Treefrog", "Toad", "Rain Frog", "Leaf Frog", "Chorus Frog"),
    "Insecta": ("Katydid", "Cicada", "Cricket"),
    "Mammalia": ("Howler Monkey", "Bat", "Titi", "Agouti"),
    "Reptilia": ("Gecko", "Caiman", "Tegu"),
}


def _word(rng: np.random.Generator, n_min: int, n_max: int, endings: Sequence[str]) -> str:
    n = int(rng.integers(n_min, n_max + 1))
    stem = "".join(_SYLLABLES[int(i)] for i in rng.integers(0, len(_SYLLABLES), size=n))
    return stem + endings[int(rng.integers(0, len(endings)))]


def _scientific_names(rng: np.random.Generator, n: int, exclude: set[str] = frozenset()) -> list[str]:
    """``n`` distinct synthetic "Genus species" names; several species share each genus."""
    names: list[str] = []
    seen = set(exclude)
    genera = [_word(rng, 1, 3, _GENUS_ENDINGS).capitalize() for _ in range(max(8, n // 6))]
    while len(names) < n:
        genus = genera[int(rng.integers(0, len(genera)))]
        name = f"{genus} {_word(rng, 1, 3, _SPECIES_ENDINGS)}"
        if name not in seen:
            seen.add(name)
            names.append(name)
    return names


def _make_taxonomy(rng: np.random.Generator) -> tuple[list[dict[str, str]], set[str]]:
    """The 234-row taxonomy and the 31 scientific names that Perch's list will lack.

    Returns:
        (rows ordered by class_name then scientific_name, unmatched scientific names).
    """
    n_named = N_CLASSES - N_SONOTYPES
    sci_names = _scientific_names(rng, n_named)
    taxon_ids = rng.choice(np.arange(10_000, 1_500_000), size=n_named + 8, replace=False)
    taxon_ids = [int(t) for t in taxon_ids if int(t) != SONOTYPE_TAXON_ID][:n_named]

    bird_codes: list[str] = []
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    while len(bird_codes) < CLASS_COUNTS["Aves"]:
        code = "".join(letters[rng.integers(0, 26, size=6)])
        if code not in bird_codes:
            bird_codes.append(code)

    rows: list[dict[str, str]] = []
    unmatched_candidates: list[str] = []
    i = 0
    for class_name, count in CLASS_COUNTS.items():
        n_regular = count - (N_SONOTYPES if class_name == "Insecta" else 0)
        for j in range(n_regular):
            sci, taxon = sci_names[i], taxon_ids[i]
            i += 1
            adjective = _ADJECTIVES[int(rng.integers(0, len(_ADJECTIVES)))]
            noun = _NOUNS[class_name][int(rng.integers(0, len(_NOUNS[class_name])))]
            primary = bird_codes[j] if class_name == "Aves" else str(taxon)
            rows.append({
                "primary_label": primary,
                "inat_taxon_id": str(taxon),
                "scientific_name": sci,
                "common_name": f"{adjective} {noun}",
                "class_name": class_name,
            })
            if class_name != "Aves":
                unmatched_candidates.append(sci)
    sonotypes = []
    for k in range(1, N_SONOTYPES + 1):
        name = f"Insect son{k:02d}"
        sonotypes.append(name)
        rows.append({
            "primary_label": f"{SONOTYPE_TAXON_ID}son{k:02d}",
            "inat_taxon_id": str(SONOTYPE_TAXON_ID),
            "scientific_name": name,
            "common_name": name,
            "class_name": "Insecta",
        })
    n_other_unmatched = N_CLASSES - N_MATCHED_CLASSES - N_SONOTYPES
    others = rng.choice(np.array(unmatched_candidates), size=n_other_unmatched, replace=False)
    unmatched = set(sonotypes) | {str(s) for s in others}
    rows.sort(key=lambda r: (r["class_name"], r["scientific_name"]))
    return rows, unmatched


def _make_perch_labels(
    rng: np.random.Generator, taxonomy: list[dict[str, str]], unmatched: set[str], n_labels: int
) -> list[str]:
    """Perch's label list: the matched taxonomy names at random positions among fillers."""
    matched = [r["scientific_name"] for r in taxonomy if r["scientific_name"] not in unmatched]
    all_taxonomy = {r["scientific_name"] for r in taxonomy}
    fillers = _scientific_names(rng, n_labels - len(matched), exclude=all_taxonomy)
    labels: list[str | None] = [None] * n_labels
    positions = rng.choice(n_labels, size=len(matched), replace=False)
    for pos, name in zip(positions, matched):
        labels[int(pos)] = name
    it = iter(fillers)
    return [name if name is not None else next(it) for name in labels]


def _synth_soundscape(rng: np.random.Generator, duration_s: float = SOUNDSCAPE_DURATION_S) -> np.ndarray:
    """Low-level noise plus seeded chirps and repeated tonal calls; peak below 0.9.

    Returns: float32 ``[duration_s * 32000]``.
    """
    sr = PERCH_SAMPLE_RATE_HZ
    n = int(round(duration_s * sr))
    audio = rng.standard_normal(n) * rng.uniform(0.002, 0.01)
    # A slow hum so that files differ in their low band too.
    t = np.arange(n) / sr
    audio += rng.uniform(0.0, 0.01) * np.sin(2 * np.pi * rng.uniform(50, 200) * t)
    n_events = int(rng.integers(6, 16))
    for _ in range(n_events):
        dur_s = rng.uniform(0.15, 1.5)
        n_ev = int(dur_s * sr)
        start = int(rng.integers(0, n - n_ev))
        f0 = rng.uniform(800.0, 9000.0)
        f1 = f0 * rng.uniform(0.6, 1.6)
        freq = np.linspace(f0, f1, n_ev)
        phase = 2 * np.pi * np.cumsum(freq) / sr
        env = np.hanning(n_ev)
        amp = rng.uniform(0.03, 0.25)
        n_repeats = int(rng.integers(1, 4))
        for r in range(n_repeats):
            s = start + r * int(n_ev * 1.5)
            if s + n_ev > n:
                break
            audio[s : s + n_ev] += amp * env * (np.sin(phase) + 0.3 * np.sin(2 * phase))
    peak = float(np.max(np.abs(audio)))
    if peak > 0.8:  # Vorbis can overshoot a little: keep a margin below 1
        audio *= 0.8 / peak
    return audio.astype(np.float32)


def _fmt_hms(seconds: int) -> str:
    return f"{seconds // 3600:02d}:{(seconds % 3600) // 60:02d}:{seconds % 60:02d}"


def _random_stamp(rng: np.random.Generator, hour: int) -> str:
    """``YYYYMMDD_HHMMSS`` in 2025 with the given hour."""
    day = np.datetime64("2025-01-01") + int(rng.integers(0, 365))
    date = str(day).replace("-", "")
    return f"{date}_{hour:02d}{int(rng.integers(0, 60)):02d}{int(rng.integers(0, 60)):02d}"


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    with atomic_open(path, "w") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _clear(folder: Path, pattern: str) -> None:
    """Remove files a previous kit left in one of the kit's own folders."""
    stale = sorted(folder.glob(pattern))
    for path in stale:
        path.unlink()
    if stale:
        log.info("removed %d old %s files from %s", len(stale), pattern, folder)


def _shipped_audio_dir() -> Path:
    return Path(__file__).resolve().parent / "data" / "audio"


def make_standins(
    out_dir: str | Path,
    *,
    seed: int = 0,
    n_train_files: int = 8,
    n_labelled_files: int = 6,
    n_synthetic_test_files: int = 2,
) -> StandinKit:
    """Write a complete stand-in kit (artifacts + competition folder) under ``out_dir``.

    See the module docstring for the layout. An existing kit in ``out_dir`` is overwritten
    (old OGG and ``.pt`` files in the kit's folders are removed first).

    Args:
        out_dir: kit root (created).
        seed: everything is a deterministic function of it.
        n_train_files: synthetic one-minute files in ``train_soundscapes/``.
        n_labelled_files: how many of them (the first ones) get rows in the labels file.
        n_synthetic_test_files: synthetic files added to the four real test recordings; their
            sites occur in the labels.

    Returns:
        The kit's paths.
    """
    if n_train_files < 1:
        raise ValueError(f"n_train_files must be at least 1, got {n_train_files}")
    if not 1 <= n_labelled_files <= n_train_files:
        raise ValueError(f"n_labelled_files must be in [1, n_train_files], got {n_labelled_files}")
    if n_synthetic_test_files < 0:
        raise ValueError(f"n_synthetic_test_files must be non-negative, got {n_synthetic_test_files}")
    from streamer.audio import write_audio

    t_start = time.perf_counter()
    root = Path(out_dir)
    kit = StandinKit(
        root=root,
        perch_onnx=root / "perch" / "perch_v2.onnx",
        perch_labels=root / "perch" / "labels.csv",
        moe_dir=root / "moe",
        data_dir=root / "competition",
    )
    train_dir = kit.data_dir / "train_soundscapes"
    test_dir = kit.data_dir / "test_soundscapes"
    for folder in (kit.perch_onnx.parent, kit.moe_dir, train_dir, test_dir):
        folder.mkdir(parents=True, exist_ok=True)
    _clear(train_dir, "*.ogg")
    _clear(test_dir, "*.ogg")
    _clear(kit.moe_dir, "*.pt")

    # Independent streams per part, so that e.g. n_train_files does not change the taxonomy.
    ss_perch, ss_tax, ss_labels, ss_train, ss_test, ss_moe = np.random.SeedSequence(seed).spawn(6)

    # Perch graph and label list.
    build_perch_onnx(kit.perch_onnx, seed=int(ss_perch.generate_state(1)[0]))
    tax_rng = np.random.default_rng(ss_tax)
    taxonomy, unmatched = _make_taxonomy(tax_rng)
    perch_labels = _make_perch_labels(tax_rng, taxonomy, unmatched, PERCH_N_LABELS)
    _write_csv(kit.perch_labels, [PERCH_LABELS_HEADER], [[name] for name in perch_labels])

    # Taxonomy and sample submission (columns sorted as strings: a different order).
    tax_columns = ["primary_label", "inat_taxon_id", "scientific_name", "common_name", "class_name"]
    _write_csv(kit.data_dir / "taxonomy.csv", tax_columns, [[r[c] for c in tax_columns] for r in taxonomy])
    submission_labels = sorted(r["primary_label"] for r in taxonomy)
    row_ids = [f"BC2026_Test_0001_S05_20250227_010002_{s}" for s in (5, 10, 15)]
    _write_csv(
        kit.data_dir / "sample_submission.csv",
        ["row_id", *submission_labels],
        [[row_id, *([1.0 / N_CLASSES] * N_CLASSES)] for row_id in row_ids],
    )

    # Training soundscapes: sites cycle through a shuffled site list, hours are spread out.
    train_rng = np.random.default_rng(ss_train)
    site_order = [TRAIN_SITES[int(i)] for i in train_rng.permutation(len(TRAIN_SITES))]
    hours = [int(h) for h in train_rng.permutation(24)]
    train_names: list[str] = []
    for i in range(n_train_files):
        site = site_order[i % len(site_order)]
        hour = hours[i % 24] if i < 24 else int(train_rng.integers(0, 24))
        name = f"BC2026_Train_{i + 1:04d}_{site}_{_random_stamp(train_rng, hour)}.ogg"
        write_audio(train_dir / name, _synth_soundscape(train_rng), PERCH_SAMPLE_RATE_HZ)
        train_names.append(name)

    # Labels of the first n_labelled files: per-file species sets drawn from a pool of classes.
    labels_rng = np.random.default_rng(ss_labels)
    primaries = [r["primary_label"] for r in taxonomy]
    sonotype_labels = [p for p in primaries if p.startswith(f"{SONOTYPE_TAXON_ID}son")]
    unmatched_other = [r["primary_label"] for r in taxonomy
                       if r["scientific_name"] in unmatched and r["primary_label"] not in sonotype_labels]
    matched_labels = [r["primary_label"] for r in taxonomy if r["scientific_name"] not in unmatched]
    pool = (
        [str(x) for x in labels_rng.choice(sonotype_labels, size=4, replace=False)]
        + [str(x) for x in labels_rng.choice(unmatched_other, size=2, replace=False)]
        + [str(x) for x in labels_rng.choice(matched_labels, size=N_LABEL_POOL_CLASSES - 6, replace=False)]
    )
    label_rows: list[list[str]] = []
    n_windows = SOUNDSCAPE_DURATION_S // LABEL_WINDOW_S
    for name in train_names[:n_labelled_files]:
        file_species = labels_rng.choice(pool, size=int(labels_rng.integers(4, 9)), replace=False)
        for w in range(n_windows):
            if labels_rng.random() < 0.15:  # an unlabelled window now and then
                continue
            k = int(labels_rng.integers(1, 4))
            chosen = sorted(str(x) for x in labels_rng.choice(file_species, size=k, replace=False))
            start, end = _fmt_hms(w * LABEL_WINDOW_S), _fmt_hms((w + 1) * LABEL_WINDOW_S)
            label_rows.append([name, start, end, ";".join(chosen)])
    # The real file lists every row twice.
    _write_csv(kit.data_dir / "train_soundscapes_labels.csv", ["filename", "start", "end", "primary_label"],
               label_rows + label_rows)
    labelled_sites = sorted({parse_site(file_stem(n)) for n in train_names[:n_labelled_files]})

    # Test soundscapes: the shipped real recordings plus synthetic files at labelled sites.
    shipped = sorted(_shipped_audio_dir().glob("BC2026_Test_000[1-4]_S90_*.ogg"))
    if len(shipped) != 4:
        raise FileNotFoundError(
            f"expected the four shipped test recordings in {_shipped_audio_dir()}, found {len(shipped)}"
        )
    for src in shipped:
        shutil.copyfile(src, test_dir / src.name)
    test_rng = np.random.default_rng(ss_test)
    for j in range(n_synthetic_test_files):
        site = labelled_sites[int(test_rng.integers(0, len(labelled_sites)))]
        stamp = _random_stamp(test_rng, int(test_rng.integers(0, 24)))
        name = f"BC2026_Test_{len(shipped) + j + 1:04d}_{site}_{stamp}.ogg"
        write_audio(test_dir / name, _synth_soundscape(test_rng), PERCH_SAMPLE_RATE_HZ)

    # MoE bundle with one site slot per labelled site plus the unknown-site slot 0.
    write_moe_bundle(kit.moe_dir, n_site_slots=len(labelled_sites) + 1, seed=int(ss_moe.generate_state(1)[0]))
    write_multi_model_example(kit.multi_recipe.parent, taxonomy, seed=int(ss_moe.generate_state(2)[1]))

    log.info(
        "stand-in kit in %s: %d train files (%d labelled, sites %s), %d test files, %d label rows; %.1f s",
        root, n_train_files, n_labelled_files, ",".join(labelled_sites), len(shipped) + n_synthetic_test_files,
        len(label_rows) * 2, time.perf_counter() - t_start,
    )
    return kit


# --------------------------------------------------------------------------------------------
# A second recipe: a multi-model ensemble of ONNX members, as published solutions build them
# --------------------------------------------------------------------------------------------

#: The example recipe written beside the kit's models (``kit/multi/multi-model.toml``).
MULTI_RECIPE = """\
# An ensemble shaped like the published multi-model BirdCLEF solutions: several ONNX networks
# with label spaces of their own, blended by rank per class with weights per taxon, then
# temperatures per taxon and a 0.2/0.6/0.2 smoothing kernel; no ProtoSSM, no prior.
# Its members are stand-ins with random weights (streamer make-standins); the shape is the point.
#
# The rank blend needs each member's score quantiles on reference audio:
#   streamer cache --recipe multi-model.toml --data-dir ../competition --perch ../perch --moe-dir ../moe --out multi.npz
#   streamer recipe calibrate --cache multi.npz --out ranks.npz

[recipe]
name = "multi-model"
format = 1
description = "Perch + three ONNX members with their own labels, rank blend with per-taxon weights and temperatures"

[framing]
sample_rate_hz = 32000
resampler = "soxr-hq"
window_s = 5.0
hop_s = 5.0
windows_per_file = 12
mono = "mean"
file_names = "birdclef"

[frontends.perch]
kind = "perch"
file = "{perch}"
labels = "{perch_labels}"

[frontends.logmel]
kind = "logmel"
sample_rate_hz = 32000
n_fft = 1024
win_length = 1024
hop_length = 320
f_min = 20.0
f_max = 14000.0
n_mels = 128
power = 2.0
log_offset = 1e-6
window = "hann-periodic"
center = true
pad_mode = "reflect"
mel_scale = "htk"
norm = "none"

[members.perch]
kind = "perch-logits"
input = "perch.label"
weight = 0.35
group_weights = { Insecta = 0.1 }

# A network on the log-mel trained on another year's classes: matched by scientific name; a
# class it does not know is scored by the classes of its genus that it knows.
[members.sed]
kind = "onnx"
input = "logmel"
file = "sed.onnx"
output_tensor = "logits"
labels = "sed_labels.csv"
match = "scientific_name"
unmapped = "genus"
unmapped_fill = -6.0
weight = 0.30
group_weights = { Amphibia = 0.5, Insecta = 0.4 }

# A network on the raw waveform, its classes by code in an order of its own.
[members.wave]
kind = "onnx"
input = "waveform"
file = "wave.onnx"
output_tensor = "scores"
labels = "wave_labels.csv"
match = "primary_label"
weight = 0.15

# A linear probe on Perch's embedding, in the submission's columns.
[members.probe]
kind = "onnx"
input = "perch.embedding"
file = "probe.onnx"
output_tensor = "logits"
weight = 0.20

[blend]
space = "rank"
reference = "ranks.npz"

[[steps]]
step = "logit"

[[steps]]
step = "temperature"
default = 1.0
groups = { Amphibia = 1.3, Insecta = 0.8, Mammalia = 1.1 }

[[steps]]
step = "sigmoid"

[[steps]]
step = "smooth"
kernel = [0.2, 0.6, 0.2]

[[steps]]
step = "clip"
min = 0.0
max = 1.0

[budget]
drop_order = ["wave", "sed"]
"""


def _save_onnx(graph, path: Path) -> None:
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def write_multi_model_example(folder: Path, taxonomy: Sequence[dict], seed: int) -> Path:
    """The second recipe's folder: three ONNX members (random weights, outputs that depend on
    their input) with label files of their own, and the recipe. Returns the recipe's path."""
    from onnx import TensorProto, helper, numpy_helper

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    codes = [r["primary_label"] for r in taxonomy]
    names = [r["scientific_name"] for r in taxonomy]

    # sed: 200 of our species by scientific name, plus 20 species of the same genera we lack.
    known = [names[i] for i in rng.choice(len(names), 200, replace=False)]
    missing = [n for n in names if n not in set(known)]
    others = [f"{n.split(' ')[0]} alterus{i}" for i, n in enumerate(missing[:20])]
    sed_labels = known + others
    _write_csv(folder / "sed_labels.csv", ["scientific_name"], [[n] for n in sed_labels])
    w = (rng.standard_normal((128, len(sed_labels))) * 0.3).astype(np.float32)
    b = rng.standard_normal(len(sed_labels)).astype(np.float32)
    _save_onnx(helper.make_graph(
        [helper.make_node("ReduceMean", ["mel"], ["m"], axes=[3], keepdims=0),
         helper.make_node("Flatten", ["m"], ["f"], axis=1),
         helper.make_node("MatMul", ["f", "W"], ["fw"]),
         helper.make_node("Add", ["fw", "B"], ["logits"])],
        "sed", [helper.make_tensor_value_info("mel", TensorProto.FLOAT, ["N", 1, 128, 501])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", len(sed_labels)])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")]), folder / "sed.onnx")

    # wave: every class by code, in a shuffled order; energy of 500 frames of the waveform.
    order = [codes[i] for i in rng.permutation(len(codes))]
    _write_csv(folder / "wave_labels.csv", ["primary_label"], [[c] for c in order])
    w = (rng.standard_normal((500, len(order))) * 2.0).astype(np.float32)
    b = rng.standard_normal(len(order)).astype(np.float32)
    shape = numpy_helper.from_array(np.array([-1, 500, 320], dtype=np.int64), "shape")
    _save_onnx(helper.make_graph(
        [helper.make_node("Abs", ["waveform"], ["a"]),
         helper.make_node("Reshape", ["a", "shape"], ["r"]),
         helper.make_node("ReduceMean", ["r"], ["e"], axes=[2], keepdims=0),
         helper.make_node("MatMul", ["e", "W"], ["ew"]),
         helper.make_node("Add", ["ew", "B"], ["scores"])],
        "wave", [helper.make_tensor_value_info("waveform", TensorProto.FLOAT, ["N", 160000])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", len(order)])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B"), shape]), folder / "wave.onnx")

    # probe: the submission's columns in their order (sample_submission sorts the codes).
    w = (rng.standard_normal((1536, len(codes))) * 0.05).astype(np.float32)
    b = rng.standard_normal(len(codes)).astype(np.float32)
    _save_onnx(helper.make_graph(
        [helper.make_node("MatMul", ["embedding", "W"], ["xw"]), helper.make_node("Add", ["xw", "B"], ["logits"])],
        "probe", [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 1536])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", len(codes)])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")]), folder / "probe.onnx")

    path = folder / "multi-model.toml"
    path.write_text(MULTI_RECIPE, encoding="utf-8")
    return path
