"""Exporting the students to ONNX, so that onnxruntime runs them.

onnxruntime runs the two students about four times faster than torch on one CPU thread, with
logits equal to ~3e-7 (``streamer bench``, sequential contenders). The export runs once per run
in the parent, into a temporary folder, and is checked against torch on real log-mels
before it is used; if the export or the check fails, the students stay in torch (logged).
"""

from __future__ import annotations

import logging
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
        failpoints.hit("students.export")
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
