"""The small typed messages that travel on the pipes between the parent and its children.

The messages every child shares (Ready, Stop, ChildError) are in
:mod:`streamer.pipeline.children`; these are the pipeline's own. Window samples never travel on
the pipes: they sit in a shared slot buffer and only the slot number is sent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from streamer.stages import FileJob, ModelOutputs


# parent → child
@dataclass(frozen=True)
class DecodeTask:
    task_id: int
    job: FileJob
    slot: int


@dataclass(frozen=True)
class ModelTask:
    """Run the models on windows ``start .. start + n_windows`` of the file in ``slot`` (a whole
    file, or a part of one at the end of a run, see the runner's notes)."""

    task_id: int
    slot: int
    n_windows: int
    dropped: frozenset
    stem: str
    start: int = 0


# child → parent
@dataclass(frozen=True)
class Decoded:
    task_id: int
    notes: tuple[str, ...]
    seconds: float
    maxrss_kb: int
    cpu_seconds: float = 0.0


@dataclass(frozen=True)
class DecodeFailed:
    task_id: int
    error: str
    seconds: float


@dataclass(frozen=True)
class ModelDone:
    """A file's result: its probabilities ``[12, C]`` when the consumer also reduces, else the
    raw model outputs for the parent to reduce."""

    task_id: int
    outputs: ModelOutputs | None
    probs: np.ndarray | None
    perch_s: float
    member_s: tuple
    protossm_s: float
    postprocess_s: float
    busy_s: float
    maxrss_kb: int
