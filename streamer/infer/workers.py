"""The bodies of the pipeline's child processes (run by :func:`streamer.pipeline.children.child_main`).

Module-level classes: they pickle under ``spawn`` and hold only paths and settings; the models
and the shared buffer are opened in :meth:`setup`, inside the child.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from streamer import failpoints
from streamer.audio import WINDOW_SAMPLES
from streamer.infer.messages import DecodeFailed, Decoded, DecodeTask, ModelDone, ModelTask
from streamer.pipeline.children import Body, maxrss_kb

#: Scheduling niceness of decoder processes. Decoding is a few percent of the work and runs
#: ahead of the models, so it can wait; at equal priority it preempts a consumer's intra-op
#: threads, and one delayed thread stalls the whole parallel operator (``streamer bench``: about
#: 10 % more windows/s at nice 10 than at 0 on 2 vCPUs).
DECODER_NICE = 10


@dataclass(frozen=True)
class SlotBuffer:
    """Where the window slots live: a file in shared memory, ``n_slots × slot_samples`` float32."""

    path: str
    n_slots: int
    slot_samples: int

    def open(self, mode: str) -> np.ndarray:
        return np.memmap(self.path, dtype=np.float32, mode=mode, shape=(self.n_slots, self.slot_samples))


class ConsumerBody(Body):
    """A model process: Perch and the students on windows read from the slot buffer, then, when
    ``reducer_spec`` is given, the file's reduction (prior, ProtoSSM folds, post-processing)."""

    setup_point = "consumer.setup"

    def __init__(self, spec, reducer_spec, slots: SlotBuffer) -> None:
        self.spec = spec
        self.reducer_spec = reducer_spec
        self.slots = slots

    def setup(self, role: str, wid: int, generation: int) -> None:
        from streamer.stages import ModelStage, Reducer

        self.stage = ModelStage(self.spec)
        self.stage.check()
        self.reducer = Reducer(self.reducer_spec) if self.reducer_spec is not None else None
        self.buffer = self.slots.open("r+")  # writable only so torch accepts it without a copy; never written here

    def handle(self, task: ModelTask, send) -> None:
        failpoints.hit("consumer.task_received", task.stem)
        t_start = time.perf_counter()
        if self.reducer is not None and task.start != 0:
            raise ValueError("a consumer that reduces needs whole files, not parts")
        span = slice(task.start * WINDOW_SAMPLES, (task.start + task.n_windows) * WINDOW_SAMPLES)
        windows = self.buffer[task.slot, span].reshape(task.n_windows, WINDOW_SAMPLES)
        outputs = self.stage.run(np.asarray(windows), dropped=task.dropped, key=task.stem)
        perch_s = self.stage.last_seconds[0]
        member_s = tuple(self.stage.last_member_seconds.items())
        probs, protossm_s, post_s = None, 0.0, 0.0
        if self.reducer is not None:
            before = dict(self.reducer.seconds)
            probs = self.reducer.reduce(task.stem, outputs)
            protossm_s = self.reducer.seconds["protossm"] - before["protossm"]
            post_s = self.reducer.seconds["postprocess"] - before["postprocess"]
            outputs = None
        busy_s = time.perf_counter() - t_start
        send(ModelDone(task.task_id, outputs, probs, perch_s, member_s, protossm_s, post_s, busy_s, maxrss_kb()))


class DecoderBody(Body):
    """A decoder process: files → windows written into the slot buffer."""

    setup_point = "decoder.setup"

    def __init__(self, slots: SlotBuffer) -> None:
        self.slots = slots

    def setup(self, role: str, wid: int, generation: int) -> None:
        self.buffer = self.slots.open("r+")

    def handle(self, task: DecodeTask, send) -> None:
        from streamer.stages import decode_job

        t_start, cpu_start = time.perf_counter(), time.process_time()
        decoded = decode_job(task.job, out=self.buffer[task.slot])  # straight into the shared slot
        if decoded.windows is None:
            send(DecodeFailed(task.task_id, decoded.error or "unreadable", time.perf_counter() - t_start))
            return
        failpoints.hit("decoder.slot_write", task.job.stem)
        send(Decoded(task.task_id, decoded.notes, time.perf_counter() - t_start, maxrss_kb(), time.process_time() - cpu_start))
