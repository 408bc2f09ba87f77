"""A Perch 2.0 stand-in with realistic compute, for benchmarks.

Same interface as Perch 2.0 (input ``inputs`` ``[batch, 160000]``; outputs ``embedding
[batch,1536]``, ``spatial_embedding [batch,16,4,1536]``, ``spectrogram [batch,500,128]``,
``label [batch,14795]``) and similar cost: a log-mel front end to 500×128, an EfficientNet-B3
backbone (about 1.3 GMAC per window at this input, whose last feature map is exactly Perch's
16×4×1536 spatial embedding) and a 14,795-class linear head. Random weights: the numbers mean
nothing, the cost is the point.

It is generated on first use (``efficientnet-pytorch`` builds a B3 with random weights and no
download; torch's ONNX exporter writes it) and cached; it is never committed. It needs the
``bench`` extra (:func:`streamer.install.install_hint`).
"""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path

import numpy as np

from streamer.files import make_temp_dir
from streamer.errors import DependencyError

log = logging.getLogger(__name__)

#: Bump when the graph changes, so an old cached file is not reused.
B3_VERSION = 1
N_LABELS = 14795
FRAME_SAMPLES = 640  # 20 ms frames
HOP_SAMPLES = 320  # 10 ms hop: 500 frames per 5-s window
N_FRAMES = 500
N_MELS = 128
SAMPLE_RATE_HZ = 32000


def _mel_matrix(n_bins: int) -> np.ndarray:
    """HTK triangular filters from 60 Hz to 16 kHz, ``[n_bins, 128]``."""
    freqs = np.linspace(0, SAMPLE_RATE_HZ / 2, n_bins)
    mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)  # noqa: E731
    edges = 700.0 * (10 ** (np.linspace(mel(60.0), mel(16000.0), N_MELS + 2) / 2595.0) - 1.0)
    fb = np.zeros((n_bins, N_MELS), np.float32)
    for m in range(N_MELS):
        lo, mid, hi = edges[m : m + 3]
        fb[:, m] = np.maximum(0.0, np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)))
    return fb


def require_builder():
    """efficientnet-pytorch's ``EfficientNet``, which builds the stand-in; without it a
    DependencyError naming the ``bench`` extra."""
    try:
        from efficientnet_pytorch import EfficientNet
    except ImportError as exc:
        from streamer.install import install_hint
        raise DependencyError(
            f"the benchmark's Perch stand-in needs efficientnet-pytorch, from the bench extra: {install_hint('bench')}"
        ) from exc
    return EfficientNet


def b3_folder(cache_dir: Path) -> Path:
    return Path(cache_dir) / f"perch-b3-v{B3_VERSION}"


def b3_cached(cache_dir: Path) -> bool:
    target = b3_folder(cache_dir)
    return (target / "perch_v2.onnx").is_file() and (target / "labels.csv").is_file()


def build_model():
    """The torch module (random weights) behind the ONNX file."""
    import torch
    from torch import nn

    EfficientNet = require_builder()

    class PerchB3(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            n_bins = FRAME_SAMPLES // 2 + 1
            t = np.arange(FRAME_SAMPLES)
            window = 0.5 - 0.5 * np.cos(2 * math.pi * t / FRAME_SAMPLES)
            k = np.arange(n_bins)[:, None]
            basis = np.concatenate(
                [np.cos(2 * math.pi * k * t / FRAME_SAMPLES), -np.sin(2 * math.pi * k * t / FRAME_SAMPLES)]
            ) * window  # [2*n_bins, frame]: a DFT as a strided convolution
            self.register_buffer("dft", torch.from_numpy(basis.astype(np.float32))[:, None, :])
            self.register_buffer("mel", torch.from_numpy(_mel_matrix(n_bins)))
            self.n_bins = n_bins
            self.backbone = EfficientNet.from_name("efficientnet-b3", in_channels=1)
            self.backbone.set_swish(memory_efficient=False)  # exportable activation
            self.head = nn.Linear(1536, N_LABELS)

        def forward(self, inputs):
            x = nn.functional.pad(inputs[:, None, :], (0, FRAME_SAMPLES - HOP_SAMPLES))
            spec = nn.functional.conv1d(x, self.dft, stride=HOP_SAMPLES)  # [B, 2*bins, 500]
            power = spec[:, : self.n_bins] ** 2 + spec[:, self.n_bins :] ** 2
            logmel = torch.log(torch.matmul(power.transpose(1, 2), self.mel) + 1e-3)  # [B, 500, 128]
            features = self.backbone.extract_features(logmel[:, None])  # [B, 1536, 16, 4]
            embedding = features.mean(dim=(2, 3))
            spatial = features.permute(0, 2, 3, 1)  # [B, 16, 4, 1536]
            return embedding, spatial, logmel, self.head(embedding)

    torch.manual_seed(0)
    return PerchB3().eval()


def export_onnx(path: Path) -> Path:
    """Export the stand-in to ``path`` (ONNX, dynamic batch)."""
    import torch

    model = build_model()
    dummy = torch.zeros(1, 160000)
    names = ["embedding", "spatial_embedding", "spectrogram", "label"]
    axes = {"inputs": {0: "batch"}, **{n: {0: "batch"} for n in names}}
    with torch.no_grad():
        torch.onnx.export(
            model, (dummy,), str(path), input_names=["inputs"], output_names=names,
            dynamic_axes=axes, opset_version=17, dynamo=False,
        )
    return path


def ensure_b3_perch(cache_dir: Path, labels_csv: Path) -> Path:
    """The cached folder holding ``perch_v2.onnx`` (the B3 stand-in) and ``labels.csv``,
    built on first use. Returns the folder."""
    target = b3_folder(cache_dir)
    if b3_cached(cache_dir):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(target.parent, ".perch-b3-")
    try:
        log.info("building the EfficientNet-B3 Perch stand-in in %s (once, about a minute)", target)
        export_onnx(tmp / "perch_v2.onnx")
        shutil.copy(labels_csv, tmp / "labels.csv")
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return target
