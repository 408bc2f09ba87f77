"""A LiteRT classifier as the run's backbone: what Perch is to the model-card recipe.

The backbone gives every window an embedding (stored by ``--embeddings``, fed to members and
heads on ``<front-end>.embedding``) and its own logits (``<front-end>.label``). BirdNET 2.4
is one: its declared output is the logits, and its embedding is an inner layer that XNNPACK
would not let us read; :class:`streamer.models.litert.LiteRTModel` declares both as outputs
in a patched copy of the model, so XNNPACK's speed and the embedding come together.
"""

from __future__ import annotations

import numpy as np

from streamer.models.graphs import ThreadSettings


#: Windows per interpreter call. XNNPACK's activations grow with the batch: BirdNET 2.4 with one
#: thread measured 35 ms per window and 188 MB of process at 1 window per call, 34 ms and 260 MB
#: at 4, 32 ms and 631 MB at 20 (an archive chunk) on a Xeon; 4 keeps a worker small. The
#: results do not depend on it (the same window alone or in a batch: the same bits with XNNPACK).
WINDOWS_PER_CALL = 4


class LiteRTBackbone:
    """``run(windows) -> (embedding [N, D], logits [N, L])``, float32, as ``PerchModel.run``.

    Args:
        front: the bound front-end (:class:`streamer.recipes.bind.LiteRTFront`).
        threads: the worker's threads (``None``: one, the engine's usual plan for LiteRT).
    """

    def __init__(self, front, threads: ThreadSettings = ThreadSettings()) -> None:
        from streamer.models.litert import LiteRTModel, read_graph

        self.front = front
        graph = read_graph(front.path.read_bytes(), str(front.path))
        declared = [graph.tensor_names[i] for i in graph.outputs]
        if len(declared) != 1:
            from streamer.errors import ArtifactError

            raise ArtifactError(f"{front.path}: the model declares {len(declared)} outputs; a LiteRT front-end's "
                                "one declared output is its logits")
        self.logits_name = declared[0]
        self.model = LiteRTModel(front.path, threads=max(1, threads.intra_op_threads or 1),
                                 outputs=[self.logits_name, front.embedding])

    def run(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        windows = np.ascontiguousarray(windows, dtype=np.float32)
        parts = [self.model.run(windows[i: i + WINDOWS_PER_CALL]) for i in range(0, windows.shape[0], WINDOWS_PER_CALL)]
        n = windows.shape[0]
        if not parts:
            parts = [self.model.run(windows)]
        logits = np.concatenate([p[self.logits_name] for p in parts]).astype(np.float32, copy=False).reshape(n, -1)
        embedding = np.concatenate([p[self.front.embedding] for p in parts]).astype(np.float32, copy=False).reshape(n, -1)
        return embedding, logits
