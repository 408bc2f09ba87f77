"""Loading the MoE checkpoints strictly, and running the students and the ProtoSSM folds."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from streamer.errors import ArtifactError, DependencyError

log = logging.getLogger(__name__)

STUDENT_ONNX_INPUT = "mel"
STUDENT_ONNX_OUTPUT = "logits"


def import_torch():
    try:
        import torch
    except ImportError as exc:
        from streamer.install import torch_hint
        raise DependencyError(f"torch is required for the MoE networks: {torch_hint()} (the CPU build)") from exc
    return torch


def read_state_dict(path: Path) -> dict:
    """A plain state dict from a ``.pt`` file (a ``{"state_dict": …}`` wrapper is unwrapped)."""
    torch = import_torch()
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ArtifactError(f"{path}: cannot read as a torch checkpoint ({type(exc).__name__}: {exc})") from exc
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict) and len(obj) <= 3:
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(hasattr(v, "shape") for v in obj.values()):
        raise ArtifactError(f"{path}: expected a state dict (parameter name → tensor), got {type(obj).__name__}")
    return obj


def _load_strict(module, state: dict, path: Path, what: str):
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ArtifactError(f"{path}: not a {what} checkpoint of the expected layout: {exc}") from exc
    return module.eval()


def _shape(state: dict, key: str, path: Path, what: str) -> tuple[int, ...]:
    if key not in state:
        raise ArtifactError(f"{path}: not a {what} checkpoint (no '{key}' tensor)")
    return tuple(state[key].shape)


def load_protossm(path: Path, *, n_classes: int, d_model: int | None = None):
    """Build a ProtoSSM from a fold checkpoint, reading its sizes from the tensors.

    The number of site slots comes from ``site_emb.weight`` (the real bundle's may differ from
    the manifest's example). ``d_model``, when given, must match the checkpoint.
    """
    from streamer.models.experts import ProtoSSM

    state = read_state_dict(path)
    what = "ProtoSSM"
    n_sites, meta_dim = _shape(state, "site_emb.weight", path, what)
    width, d_input = _shape(state, "input_proj.0.weight", path, what)
    d_state = _shape(state, "ssm_fwd.0.A_log", path, what)[1]
    ckpt_classes = _shape(state, "prototypes", path, what)[0]
    n_windows = _shape(state, "pos_enc", path, what)[1]
    n_layers = len({k.split(".")[1] for k in state if k.startswith("ssm_fwd.")})
    if d_model is not None and d_model != width:
        raise ArtifactError(f"{path}: checkpoint has d_model={width} but --proto-d-model is {d_model}")
    if ckpt_classes != n_classes:
        raise ArtifactError(f"{path}: checkpoint predicts {ckpt_classes} classes, expected {n_classes} (the submission's columns)")
    model = ProtoSSM(
        d_input=d_input,
        d_model=width,
        d_state=d_state,
        n_layers=n_layers,
        n_classes=n_classes,
        n_windows=n_windows,
        n_sites=n_sites,
        meta_dim=meta_dim,
    )
    return _load_strict(model, state, path, what)


def load_student(path: Path, kind: str, *, n_classes: int):
    """Build StudentCNN (``kind='cnn'``) or StudentCRNN (``kind='crnn'``) from a checkpoint."""
    from streamer.models.experts import StudentCNN, StudentCRNN

    state = read_state_dict(path)
    what = f"student {kind.upper()}"
    ckpt_classes = _shape(state, "logit_head.weight", path, what)[0]
    emb_dim = _shape(state, "emb_head.weight", path, what)[0]
    if ckpt_classes != n_classes:
        raise ArtifactError(f"{path}: checkpoint predicts {ckpt_classes} classes, expected {n_classes} (the member's "
                            "label space: the submission's columns, or its label file's rows)")
    if kind == "cnn":
        model = StudentCNN(n_classes=n_classes, emb_dim=emb_dim, hidden=_shape(state, "fc.1.weight", path, what)[0])
    elif kind == "crnn":
        model = StudentCRNN(n_classes=n_classes, emb_dim=emb_dim, gru_hidden=_shape(state, "gru.weight_hh_l0", path, what)[1])
    else:
        raise ValueError(f"unknown student kind {kind!r}")
    return _load_strict(model, state, path, what)


class ProtoSSMFolds:
    """The ProtoSSM folds of the bundle, run one file at a time."""

    def __init__(self, fold_paths: tuple[Path, ...], *, n_classes: int, d_model: int | None = None) -> None:
        self.folds = [load_protossm(p, n_classes=n_classes, d_model=d_model) for p in fold_paths]
        slots = {int(f.site_emb.num_embeddings) for f in self.folds}
        if len(slots) != 1:
            raise ArtifactError(f"the ProtoSSM folds disagree on the number of site slots: {sorted(slots)}")
        self.n_site_slots = slots.pop()

    def run(self, embedding: np.ndarray, teacher_logits: np.ndarray, site_id: int, hour: int) -> np.ndarray:
        """One file: embedding ``[T,1536]`` and teacher logits ``[T,C]`` → fold logits ``[K,T,C]``."""
        return self.run_batch(embedding[None], teacher_logits[None], [site_id], [hour])[:, 0]

    def run_batch(self, embeddings: np.ndarray, teacher_logits: np.ndarray, site_ids, hours) -> np.ndarray:
        """``B`` files of ``T`` windows each: embeddings ``[B,T,1536]``, teacher logits
        ``[B,T,C]``, ``B`` site ids and hours → fold logits ``[K,B,T,C]``."""
        torch = import_torch()
        with torch.inference_mode():
            emb = torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32))
            teacher = torch.from_numpy(np.ascontiguousarray(teacher_logits, dtype=np.float32))
            site = torch.tensor(list(site_ids), dtype=torch.long)
            hr = torch.tensor(list(hours), dtype=torch.long)
            return np.stack([fold(emb, teacher, site, hr).numpy() for fold in self.folds])

    def similarity(self, embedding: np.ndarray, site_id: int, hour: int) -> np.ndarray:
        """One file's prototype branch of every fold, ``[K,T,C]``: the part of :meth:`run` that
        does not depend on the teacher logits (see :meth:`fuse`)."""
        torch = import_torch()
        with torch.inference_mode():
            emb = torch.from_numpy(np.ascontiguousarray(embedding, dtype=np.float32))[None]
            site = torch.tensor([site_id], dtype=torch.long)
            hr = torch.tensor([hour], dtype=torch.long)
            return np.stack([fold.similarity(emb, site, hr)[0].numpy() for fold in self.folds])

    def fuse(self, similarity: np.ndarray, teacher_logits: np.ndarray) -> np.ndarray:
        """Fold logits ``[K,...,C]`` from :meth:`similarity` ``[K,...,C]`` and teacher logits
        ``[...,C]``; ``run(e, t, s, h) == fuse(similarity(e, s, h), t)`` exactly."""
        torch = import_torch()
        with torch.inference_mode():
            teacher = torch.from_numpy(np.ascontiguousarray(teacher_logits, dtype=np.float32))
            return np.stack(
                [fold.fuse(torch.from_numpy(np.ascontiguousarray(sim)), teacher).numpy() for fold, sim in zip(self.folds, similarity)]
            )


def set_torch_threads(n_threads: int | None) -> None:
    """Set torch's intra-op threads (``None`` leaves torch's default)."""
    if n_threads is None:
        return
    torch = import_torch()
    torch.set_num_threads(int(n_threads))
