"""The Perch 2.0 ONNX graph.

Outputs are resolved by name (``embedding``, ``label``) with a fallback to positions 0 and 3,
and only those two are requested from the backend, so the large unused outputs
(``spatial_embedding``, ``spectrogram``) are never copied out. Exports that declare a rank-4
input get the waveform reshaped to the declared layout.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from streamer.errors import ArtifactError
from streamer.models.graphs import (
    BackendChoice,
    ThreadSettings,
    import_onnxruntime,
    load_graph,
    session_options,
    windows_per_call,
)

__all__ = ["PerchModel", "ThreadSettings", "import_onnxruntime", "session_options"]

log = logging.getLogger(__name__)

EMBEDDING_OUTPUT = "embedding"
LABEL_OUTPUT = "label"
EMBEDDING_POSITION = 0
LABEL_POSITION = 3
INPUT_NAME = "inputs"


def _static_dim(dim) -> int | None:
    return dim if isinstance(dim, int) and dim > 0 else None


class PerchModel:
    """The Perch ONNX graph in onnxruntime or OpenVINO (:mod:`streamer.models.graphs`).

    Args:
        onnx_path: the ``.onnx`` file.
        threads: thread settings; see :class:`ThreadSettings`.
        backend: the backend and precision.
    """

    def __init__(self, onnx_path: str | Path, threads: ThreadSettings = ThreadSettings(),
                 backend: BackendChoice = BackendChoice()) -> None:
        self.onnx_path = Path(onnx_path)
        self.graph = load_graph(self.onnx_path, threads, backend)
        self._per_call = windows_per_call(threads)
        inputs = self.graph.inputs
        if not inputs:
            raise ArtifactError(f"{self.onnx_path}: the model declares no input")
        by_name = {i.name: i for i in inputs}
        self._input = by_name.get(INPUT_NAME, inputs[0])
        self._input_tail = self._input_layout(self._input.shape)
        # Some exports fix the batch size (often 1): such a model is fed in chunks of that size.
        self._fixed_batch = _static_dim(self._input.shape[0]) if self._input.shape else None

        outputs = self.graph.outputs
        names = [o.name for o in outputs]
        self.embedding_name = self._pick_output(names, EMBEDDING_OUTPUT, EMBEDDING_POSITION)
        self.label_name = self._pick_output(names, LABEL_OUTPUT, LABEL_POSITION)
        self.graph.keep_outputs([self.embedding_name, self.label_name])
        decl = {o.name: o.shape for o in outputs}
        self.declared_n_labels = _static_dim(decl[self.label_name][-1]) if decl[self.label_name] else None
        self.declared_embed_dim = _static_dim(decl[self.embedding_name][-1]) if decl[self.embedding_name] else None

    def _pick_output(self, names: list[str], wanted: str, position: int) -> str:
        if wanted in names:
            return wanted
        if len(names) > position:
            log.info("%s: no output named %r; using output %d (%r)", self.onnx_path, wanted, position, names[position])
            return names[position]
        raise ArtifactError(
            f"{self.onnx_path}: no output named {wanted!r} and only {len(names)} outputs {names} "
            f"(expected Perch's embedding, spatial_embedding, spectrogram, label)"
        )

    def _input_layout(self, shape) -> tuple[int, ...] | None:
        """Non-batch dims to reshape the waveform to, or ``None`` for a plain ``[batch, n]`` input."""
        if shape is None or len(shape) == 2:
            return None
        if len(shape) < 2:
            raise ArtifactError(f"{self.onnx_path}: input {self._input.name!r} has rank {len(shape)}; expected [batch, 160000]")
        tail = [_static_dim(d) for d in shape[1:]]
        if sum(d is None for d in tail) > 1:
            raise ArtifactError(f"{self.onnx_path}: cannot tell how to lay the waveform out in input shape {shape}")
        return tuple(-1 if d is None else d for d in tail)

    @property
    def input_name(self) -> str:
        return self._input.name

    def run(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Embed and classify windows.

        Args:
            windows: float32 ``[N, 160000]``.

        Returns:
            embedding float32 ``[N, 1536]`` and logits float32 ``[N, n_labels]``.
        """
        batch = np.ascontiguousarray(windows, dtype=np.float32)
        n = batch.shape[0]
        step = self._fixed_batch or self._per_call or max(n, 1)
        embeddings, logits = [], []
        for start in range(0, n, step):
            chunk = batch[start : start + step]
            n_real = chunk.shape[0]
            if self._fixed_batch and n_real < step:  # pad the last chunk to the fixed size
                chunk = np.concatenate([chunk, np.zeros((step - n_real,) + chunk.shape[1:], np.float32)])
            if self._input_tail is not None:
                chunk = chunk.reshape((chunk.shape[0],) + self._input_tail)
            emb, lab = self.graph.run([self.embedding_name, self.label_name], {self._input.name: chunk})
            embeddings.append(np.asarray(emb, dtype=np.float32).reshape(chunk.shape[0], -1)[:n_real])
            logits.append(np.asarray(lab, dtype=np.float32).reshape(chunk.shape[0], -1)[:n_real])
        return np.concatenate(embeddings), np.concatenate(logits)
