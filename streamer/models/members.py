"""The member protocol: a recipe's front-ends and members, built in the process that runs them.

Every member says what it needs (its ``input``: the waveform, a log-mel, or a Perch output)
and returns its logits in the submission's columns for a batch of windows. The front-ends are
computed once per batch and shared: Perch runs once whatever number of members read its
outputs, the log-mel once whatever number of members read it.

What streamer can build (the registry, :data:`BUILDERS`):

* ``perch-logits``: Perch's ``label`` output mapped by name (nothing to load);
* ``onnx``: any ONNX graph on a front-end, in onnxruntime or OpenVINO;
* ``student-cnn`` / ``student-crnn``: a state dict of the architectures streamer knows, run
  from its ONNX export (see :mod:`streamer.models.student_onnx`) or, when the export is not
  used, in torch (``weights_only=True`` loading: a state dict cannot run code).

Heads (ProtoSSM) run in the reducer, not here.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from streamer.recipes.schema import OWN_LOGITS_KINDS
from streamer.errors import ArtifactError
from streamer.recipes.bind import BoundMember, apply_map

STUDENT_KINDS = {"student-cnn": "cnn", "student-crnn": "crnn"}


def reads_logmel(member) -> bool:
    """Whether a member's input is a log-mel front-end (not the waveform, not a Perch output)."""
    return member.kind not in OWN_LOGITS_KINDS and member.input != "waveform" and "." not in member.input


class _GraphMember:
    """An ONNX graph (an exported student, or an ``onnx`` member) fed one front-end output."""

    def __init__(self, member: BoundMember, path: Path, input_name: str, output_name: str, threads, backend,
                 input_shape: tuple | None = None) -> None:
        from streamer.models.graphs import load_graph

        self.member = member
        self.graph = load_graph(path, threads, backend)
        self.input_name, self.output_name = input_name, output_name
        self.graph.keep_outputs([output_name])
        self.input_shape = input_shape

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.input_shape is not None:
            x = x.reshape((x.shape[0],) + self.input_shape)
        out = self.graph.run([self.output_name], {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})[0]
        return np.asarray(out, dtype=np.float32).reshape(x.shape[0], -1)


class _TorchStudent:
    def __init__(self, member: BoundMember, n_outputs: int) -> None:
        from streamer.models.moe import load_student

        self.net = load_student(member.paths[0], STUDENT_KINDS[member.kind], n_classes=n_outputs)

    def __call__(self, mel):
        return self.net(mel)[1].numpy()


class _FoldMean:
    """An ``onnx`` member of several files (folds): the mean of their outputs."""

    def __init__(self, folds: list) -> None:
        self.folds = folds

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.mean([fold(x) for fold in self.folds], axis=0).astype(np.float32, copy=False)


def _declared_tail(graph, name: str) -> tuple | None:
    """The non-batch dims of a graph input, for a front-end whose layout differs only by
    reshaping (a waveform fed as ``[N, 1, 160000]``)."""
    port = next((p for p in graph.inputs if p.name == name), None)
    if port is None or port.shape is None or any(d is None for d in port.shape[1:]):
        return None
    return tuple(port.shape[1:])


class MemberSet:
    """The front-ends and blend members of a recipe in one process.

    Args:
        members: the bound blend members (heads are the reducer's).
        exported: ONNX exports of state-dict members, by name (``None``: run in torch).
        threads, backend: how the graphs run.
        n_classes: the submission's column count (a torch student's output width).
    """

    def __init__(self, members: tuple[BoundMember, ...], *, exported: dict[str, Path] | None, threads, backend,
                 n_classes: int) -> None:
        from streamer.models.graphs import windows_per_call

        exported = exported or {}
        self.members = tuple(m for m in members if m.kind not in OWN_LOGITS_KINDS)
        self.perch_members = tuple(m for m in members if m.kind in OWN_LOGITS_KINDS)
        self.runners: dict[str, object] = {}
        self.uses_torch = False
        for m in self.members:
            try:
                self._build(m, exported, threads, backend, n_classes)
            except ArtifactError as exc:  # the run's error names the member, not only its file
                raise ArtifactError(f"member {m.name!r}: {exc}") from exc
        # Members whose outputs are already the submission's columns in order skip the mapping.
        self.mapped = {m.name for m in self.members
                       if m.proxies or m.class_map is None or not np.array_equal(m.class_map, np.arange(n_classes))}
        self.needs_logmel = any(reads_logmel(m) for m in self.members)
        self.logmel = None
        if self.needs_logmel:
            if self.uses_torch:
                from streamer.models.experts import LogMel

                self.logmel = LogMel().eval()
            else:
                from streamer.models.logmel import LogMelNumpy

                self.logmel = LogMelNumpy()
        # Windows per call: the graphs' memory stays small (see windows_per_call); torch runs
        # a batch at once, as the original script did.
        self.per_call = None if self.uses_torch else windows_per_call(threads)
        self.seconds = {m.name: 0.0 for m in members}
        self.seconds["logmel"] = 0.0

    def _build(self, m: BoundMember, exported: dict, threads, backend, n_classes: int) -> None:
        """The runner of member ``m`` (its graph loaded, or its state dict in torch)."""
        if m.kind in STUDENT_KINDS and m.name not in exported:
            self.runners[m.name] = _TorchStudent(m, m.n_outputs or n_classes)
            self.uses_torch = True
        elif m.kind in STUDENT_KINDS:
            from streamer.models.moe import STUDENT_ONNX_INPUT, STUDENT_ONNX_OUTPUT

            self.runners[m.name] = _GraphMember(m, exported[m.name], STUDENT_ONNX_INPUT, STUDENT_ONNX_OUTPUT, threads, backend)
        else:
            folds = []
            for path in m.paths:
                runner = _GraphMember(m, path, m.input_tensor, m.output_tensor, threads, backend)
                tail = _declared_tail(runner.graph, m.input_tensor)
                runner.input_shape = tail if m.input == "waveform" and tail is not None and len(tail) > 1 else None
                folds.append(runner)
            self.runners[m.name] = folds[0] if len(folds) == 1 else _FoldMean(folds)

    @property
    def any(self) -> bool:
        return bool(self.members)

    @property
    def perch_names(self) -> frozenset[str]:
        """The members read from Perch's output (no model of their own)."""
        return frozenset(m.name for m in self.perch_members)

    def run(self, windows: np.ndarray, embedding: np.ndarray, perch_logits: np.ndarray | None,
            dropped: frozenset[str] = frozenset()) -> dict[str, np.ndarray]:
        """Every member's logits in the submission's columns, float32 ``[N, C]``, by name.

        Args:
            windows: float32 ``[N, 160000]``.
            embedding: Perch's embedding ``[N, 1536]`` (for members on ``perch.embedding``).
            perch_logits: Perch's raw ``label`` output ``[N, n_labels]``.
            dropped: members not to run (the budget's cheaper tiers).
        """
        out: dict[str, np.ndarray] = {}
        for m in self.perch_members:
            if m.name not in dropped:
                out[m.name] = apply_map(perch_logits, m)
        active = [m for m in self.members if m.name not in dropped]
        if not active:
            return out
        windows = np.ascontiguousarray(windows, dtype=np.float32)
        if self.uses_torch:
            return {**out, **self._run_torch(windows, embedding, active)}
        step = self.per_call or max(1, windows.shape[0])
        parts: dict[str, list] = {m.name: [] for m in active}
        with_mel = any(reads_logmel(m) for m in active)  # not when the budget dropped every reader
        for start in range(0, windows.shape[0], step):  # the log-mel and every member per call
            chunk = windows[start : start + step]
            mel = None
            if with_mel:
                t0 = time.perf_counter()
                mel = self.logmel(chunk)
                self.seconds["logmel"] += time.perf_counter() - t0
            for m in active:
                t0 = time.perf_counter()
                x = chunk if m.input == "waveform" else embedding[start : start + step] if "." in m.input else mel
                raw = self.runners[m.name](x)
                parts[m.name].append(apply_map(raw, m) if m.name in self.mapped else np.asarray(raw, dtype=np.float32))
                self.seconds[m.name] += time.perf_counter() - t0
        out.update({name: np.concatenate(p) for name, p in parts.items()})
        return out

    def share_logmel(self, before: dict, active: list) -> dict[str, float]:
        """Each active member's seconds since ``before`` (a copy of :attr:`seconds`), the
        log-mel's time shared equally among the members that read it."""
        spent = {m.name: self.seconds[m.name] - before.get(m.name, 0.0) for m in active}
        readers = [m.name for m in active if reads_logmel(m)]
        mel = self.seconds["logmel"] - before.get("logmel", 0.0)
        for name in readers:
            spent[name] += mel / len(readers)
        return spent

    def _run_torch(self, windows, embedding, active) -> dict[str, np.ndarray]:
        from streamer.models.moe import import_torch

        torch = import_torch()
        out = {}
        with torch.inference_mode():
            t0 = time.perf_counter()
            mel = self.logmel(torch.from_numpy(windows)) if self.needs_logmel else None
            self.seconds["logmel"] += time.perf_counter() - t0
            for m in active:
                t0 = time.perf_counter()
                runner = self.runners[m.name]
                x = mel if isinstance(runner, _TorchStudent) else windows if m.input == "waveform" else \
                    embedding if "." in m.input else mel.numpy()
                raw = runner(x)
                out[m.name] = apply_map(raw, m) if m.name in self.mapped else np.asarray(raw, dtype=np.float32)
                self.seconds[m.name] += time.perf_counter() - t0
        return out
