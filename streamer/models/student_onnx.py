"""Exporting the students to ONNX, so that onnxruntime runs them.

onnxruntime runs the two students about four times faster than torch on one CPU thread, with
logits equal to ~3e-7 (``streamer bench``, sequential contenders). The export runs once per run
in the parent, into a temporary folder, and is checked against torch on real log-mels
before it is used; if the export or the check fails, the students stay in torch (logged).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np

from streamer import failpoints
from streamer.models.moe import STUDENT_ONNX_INPUT, STUDENT_ONNX_OUTPUT, import_torch, load_student

log = logging.getLogger(__name__)

#: Largest |onnxruntime − torch| accepted on the check batch (logits of order 1–10).
MAX_EXPORT_DIFF = 1e-4


def _export(net, path: Path, example) -> None:
    torch = import_torch()

    class LogitsOnly(torch.nn.Module):
        def __init__(self, inner) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, mel):
            return self.inner(mel)[1]

    kwargs = dict(
        input_names=[STUDENT_ONNX_INPUT],
        output_names=[STUDENT_ONNX_OUTPUT],
        dynamic_axes={STUDENT_ONNX_INPUT: {0: "batch"}, STUDENT_ONNX_OUTPUT: {0: "batch"}},
        opset_version=17,
    )
    with torch.no_grad():
        try:
            torch.onnx.export(LogitsOnly(net).eval(), (example,), str(path), dynamo=False, **kwargs)
        except TypeError:  # torch releases before the ``dynamo`` argument
            torch.onnx.export(LogitsOnly(net).eval(), (example,), str(path), **kwargs)


def export_student(kind: str, checkpoint: Path, *, n_classes: int, out_path: Path) -> Path | None:
    """Export one state-dict member (``kind``: ``cnn`` or ``crnn``) to ``out_path`` and check
    it against torch on real log-mels.

    Returns the ONNX path, or ``None`` when the export cannot be used (the caller then keeps
    the member in torch).
    """
    import warnings

    torch = import_torch()
    from streamer.models.experts import LogMel
    from streamer.models.perch import ThreadSettings, import_onnxruntime, session_options

    rng = np.random.default_rng(0)
    t = np.arange(2 * 160000).reshape(2, 160000) / 32000.0
    waves = (0.1 * np.sin(2 * np.pi * 1500 * t) + 0.02 * rng.standard_normal(t.shape)).astype(np.float32)
    with torch.inference_mode():
        mel = LogMel()(torch.from_numpy(waves))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        ort = import_onnxruntime()
        net = load_student(checkpoint, kind, n_classes=n_classes)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's deprecation and tracing notes
            _export(net, out_path, mel.clone())
        session = ort.InferenceSession(str(out_path), session_options(ThreadSettings(1)), providers=["CPUExecutionProvider"])
        got = session.run([STUDENT_ONNX_OUTPUT], {STUDENT_ONNX_INPUT: mel.numpy()})[0]
        with torch.inference_mode():
            want = net(mel)[1].numpy()
        diff = float(np.max(np.abs(got - want)))
        if not diff <= MAX_EXPORT_DIFF:
            log.warning("%s (%s): onnxruntime differs from torch by %.2e; keeping torch", checkpoint.name, kind, diff)
            return None
        log.debug("%s exported to onnxruntime (max diff %.1e)", checkpoint.name, diff)
    except Exception as exc:  # any export problem: the documented fallback is torch
        log.warning("could not run %s in onnxruntime (%s: %s); keeping torch", checkpoint.name, type(exc).__name__, exc)
        return None
    return out_path


#: Bumped when the export itself changes, so that older cached exports are not used.
EXPORT_FORMAT = 2
CACHE_FOLDER = "students-onnx"
_CHECKED = "CHECKED"
_EXPORTED = "model.onnx"


def export_key(kind: str, checkpoint: Path, n_classes: int) -> str:
    """What an export depends on: the architecture, the checkpoint's contents, the class
    count, torch's and onnxruntime's versions, and :data:`EXPORT_FORMAT`."""
    import hashlib

    import onnxruntime
    import torch

    from streamer.files import sha256_file

    digest = hashlib.sha256()
    digest.update(f"{kind}|{sha256_file(checkpoint)}|{n_classes}|{torch.__version__}|{onnxruntime.__version__}|{EXPORT_FORMAT}".encode())
    return digest.hexdigest()[:32]


def cached_export(kind: str, checkpoint: Path, *, n_classes: int, tmp: Path, cache_dir: Path) -> Path | None:
    """A state-dict member's ONNX export: from ``cache_dir`` when this checkpoint was exported
    and checked before (the export and its check cost about a second of every run's
    start-up), else exported now into ``tmp`` and kept in the cache for the next run. ``None``
    when the member stays in torch (the export or its check failed)."""
    try:
        failpoints.hit("students.export")
    except Exception as exc:  # noqa: BLE001 - as any export problem: the documented fallback is torch
        log.warning("could not run the students in onnxruntime (%s: %s); keeping torch", type(exc).__name__, exc)
        return None
    folder = Path(cache_dir) / CACHE_FOLDER / export_key(kind, checkpoint, n_classes)
    if (folder / _CHECKED).is_file() and (folder / _EXPORTED).is_file():
        log.info("%s: the onnxruntime export is reused from %s", checkpoint.name, folder)
        return folder / _EXPORTED
    path = export_student(kind, checkpoint, n_classes=n_classes, out_path=Path(tmp) / folder.name / _EXPORTED)
    if path is None:
        return None
    try:
        from streamer.files import atomic_write_text, make_temp_dir

        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = make_temp_dir(folder.parent, ".staging-")
        shutil.copy2(path, staging / _EXPORTED)
        atomic_write_text(staging / _CHECKED, "exported and checked against torch\n")
        try:
            staging.rename(folder)
        except OSError:  # another run stored the same export meanwhile: keep that one
            shutil.rmtree(staging, ignore_errors=True)
    except OSError as exc:
        log.info("the students' exports are not kept for later runs (%s)", exc)
        return path
    return folder / _EXPORTED if (folder / _CHECKED).is_file() else path


def cached_exports(members, *, n_classes: int, tmp: Path, cache_dir: Path) -> tuple[tuple[str, Path], ...]:
    """``((member name, ONNX path), …)`` of the state-dict members whose export can be used;
    the others stay in torch."""
    from streamer.models.members import STUDENT_KINDS

    out = []
    for member in members:
        if member.kind in STUDENT_KINDS:
            path = cached_export(STUDENT_KINDS[member.kind], member.paths[0], n_classes=member.n_outputs or n_classes,
                                 tmp=tmp, cache_dir=cache_dir)
            if path is not None:
                out.append((member.name, path))
    return tuple(out)
