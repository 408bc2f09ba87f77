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


def export_students(
    cnn_path: Path | None, crnn_path: Path | None, *, n_classes: int, out_dir: Path
) -> tuple[Path | None, Path | None] | None:
    """Export each present student to ``out_dir`` and check it against torch.

    Returns the two ONNX paths (``None`` for an absent student), or ``None`` when the export
    cannot be used (the caller then keeps the students in torch).
    """
    import warnings

    torch = import_torch()
    from streamer.models.experts import LogMel
    from streamer.models.perch import ThreadSettings, import_onnxruntime, session_options

    if cnn_path is None and crnn_path is None:
        return None
    rng = np.random.default_rng(0)
    t = np.arange(2 * 160000).reshape(2, 160000) / 32000.0
    waves = (0.1 * np.sin(2 * np.pi * 1500 * t) + 0.02 * rng.standard_normal(t.shape)).astype(np.float32)
    with torch.inference_mode():
        mel = LogMel()(torch.from_numpy(waves))
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path | None] = []
    try:
        ort = import_onnxruntime()
        for kind, ckpt in (("cnn", cnn_path), ("crnn", crnn_path)):
            if ckpt is None:
                paths.append(None)
                continue
            net = load_student(ckpt, kind, n_classes=n_classes)
            path = out_dir / f"student_{kind}.onnx"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the exporter's deprecation and tracing notes
                _export(net, path, mel.clone())
            session = ort.InferenceSession(str(path), session_options(ThreadSettings(1)), providers=["CPUExecutionProvider"])
            got = session.run([STUDENT_ONNX_OUTPUT], {STUDENT_ONNX_INPUT: mel.numpy()})[0]
            with torch.inference_mode():
                want = net(mel)[1].numpy()
            diff = float(np.max(np.abs(got - want)))
            if not diff <= MAX_EXPORT_DIFF:
                log.warning("student %s: onnxruntime differs from torch by %.2e; keeping torch", kind.upper(), diff)
                return None
            log.debug("student %s exported to onnxruntime (max diff %.1e)", kind.upper(), diff)
            paths.append(path)
    except Exception as exc:  # any export problem: the documented fallback is torch
        log.warning("could not run the students in onnxruntime (%s: %s); keeping torch", type(exc).__name__, exc)
        return None
    return paths[0], paths[1]


#: Bumped when the export itself changes, so that older cached exports are not used.
EXPORT_FORMAT = 1
CACHE_FOLDER = "students-onnx"
_CHECKED = "CHECKED"


def export_key(cnn_path: Path | None, crnn_path: Path | None, n_classes: int) -> str:
    """What an export depends on: the checkpoints' contents, the class count, torch's and
    onnxruntime's versions, and :data:`EXPORT_FORMAT`."""
    import hashlib

    import onnxruntime
    import torch

    from streamer.files import sha256_file

    digest = hashlib.sha256()
    for path in (cnn_path, crnn_path):
        digest.update((sha256_file(path) if path is not None else "-").encode())
    digest.update(f"|{n_classes}|{torch.__version__}|{onnxruntime.__version__}|{EXPORT_FORMAT}".encode())
    return digest.hexdigest()[:32]


def cached_students(cnn_path: Path | None, crnn_path: Path | None, *, n_classes: int, tmp: Path,
                    cache_dir: Path) -> tuple[Path | None, Path | None] | None:
    """The students' ONNX exports: from ``cache_dir`` when these weights were exported and
    checked before (the export and its check cost about a second of every run's start-up),
    else exported now into ``tmp`` and kept in the cache for the next run. ``None`` when the
    students stay in torch (the export or its check failed)."""
    try:
        failpoints.hit("students.export")
    except Exception as exc:  # noqa: BLE001 - as any export problem: the documented fallback is torch
        log.warning("could not run the students in onnxruntime (%s: %s); keeping torch", type(exc).__name__, exc)
        return None
    folder = Path(cache_dir) / CACHE_FOLDER / export_key(cnn_path, crnn_path, n_classes)
    names = tuple(None if p is None else f"student_{kind}.onnx" for kind, p in (("cnn", cnn_path), ("crnn", crnn_path)))
    if (folder / _CHECKED).is_file() and all((folder / n).is_file() for n in names if n):
        log.info("students' onnxruntime exports reused from %s", folder)
        return tuple(None if n is None else folder / n for n in names)
    paths = export_students(cnn_path, crnn_path, n_classes=n_classes, out_dir=tmp)
    if paths is None:
        return None
    try:
        from streamer.files import atomic_write_text, make_temp_dir

        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = make_temp_dir(folder.parent, ".staging-")
        for path in paths:
            if path is not None:
                shutil.copy2(path, staging / path.name)
        atomic_write_text(staging / _CHECKED, "exported and checked against torch\n")
        try:
            staging.rename(folder)
        except OSError:  # another run stored the same export meanwhile: keep that one
            shutil.rmtree(staging, ignore_errors=True)
    except OSError as exc:
        log.info("the students' exports are not kept for later runs (%s)", exc)
        return paths
    return tuple(None if n is None else folder / n for n in names) if (folder / _CHECKED).is_file() else paths
