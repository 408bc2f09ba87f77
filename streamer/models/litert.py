"""Running a ``.tflite`` member in LiteRT (``ai-edge-litert``), with XNNPACK and any tensor as
an output.

**Why.** BirdNET-Analyzer runs BirdNET 2.4 in the TFLite interpreter with XNNPACK off
(``BUILTIN_WITHOUT_DEFAULT_DELEGATES``), so that it can read the 1024-d embedding, an
intermediate tensor (``model/GLOBAL_AVG_POOL/Mean``, the input of the final classifier). With
XNNPACK on, the model runs about twice as fast on one thread (~30 against ~55-60 ms a window),
but the delegate owns the intermediate tensors: reading one fails with "Tensor data is null".
We want both: XNNPACK's speed, and the logits *and* the embedding of every window.

**How.** The subgraph's list of output tensors is a small vector of int32 in the model's
flatbuffer. :func:`with_outputs` appends a new vector to a copy of the file and points the
subgraph at it (one 4-byte offset changes; nothing else moves). LiteRT then treats the
embedding as a graph output: XNNPACK writes it out of the partition that computes it, and the
interpreter returns it like any output. The arithmetic is untouched: the logits of the patched
model equal those of the unpatched model bit for bit, with XNNPACK on or off.

**How exact.** XNNPACK's kernels sum in another order than the builtin ones. On real audio
(BirdNET 2.4, 48 windows spread over a 20-min Jura recording, 1 and 2 threads), XNNPACK on
against the peer's XNNPACK-off interpreter, window by window: max |logit diff| 6.1e-5 (logits
−30..+2.2; at most 6.3e-6 of max(1, |logit|)), max |sigmoid diff| 1.4e-6, max |embedding diff|
9.3e-6 (values 0..3.4) against tensor 545 read from an XNNPACK-off interpreter with
``experimental_preserve_all_tensors``. The builtin interpreter differs from itself by as much:
3.8e-5 in a logit between a window scored alone and inside a batch, 3.1e-5 between 1 and 2
threads. With ``xnnpack=False`` and 1 thread this module equals the peer's interpreter
exactly (0 difference).

The alternative — the embedding as the only output and the logits as ``embedding @ W + b`` in
numpy with ``W``, ``b`` read from the model's constants — was measured too and not taken: it is
only marginally closer to the peer (on 16 windows, 4.4e-5 against 6.1e-5 in a logit, the same
1.3e-6 in a sigmoid: the difference is XNNPACK's, upstream of the classifier), no faster (the
classifier is ~1 ms of ~30 ms per window), and numpy's multithreaded BLAS, spinning between
calls, competed with the interpreter's threads and nearly doubled the time per window at batch
1 (see ``benchmarks/litert_birdnet.py`` and its results). The two-output model also keeps the
logits bit-identical to the file as shipped, and leaves nothing to compute outside LiteRT.

ai_edge_litert is imported only inside this module's functions, so ``import streamer`` does
not need it.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Sequence

import numpy as np

from streamer.errors import ArtifactError, DependencyError

__all__ = ["LITERT_INSTALL_HINT", "LITERT_MISSING", "LiteRTModel", "TFLiteGraph", "import_litert", "read_graph", "with_outputs"]

#: How to get LiteRT: the ``birdnet`` extra brings ``ai-edge-litert``.
LITERT_INSTALL_HINT = 'install the `birdnet` extra: pip install "birdclef-streamer[birdnet]"'
#: The message when ``ai_edge_litert`` is not importable.
LITERT_MISSING = f"LiteRT (the ai-edge-litert package) is not installed; {LITERT_INSTALL_HINT}"

#: The file identifier of a TFLite flatbuffer (bytes 4..8).
TFLITE_IDENTIFIER = b"TFL3"

# Field numbers in tensorflow/lite/schema/schema.fbs (a table's fields count from 0 in order).
_MODEL_SUBGRAPHS = 2
_SUBGRAPH_TENSORS, _SUBGRAPH_INPUTS, _SUBGRAPH_OUTPUTS = 0, 1, 2
_TENSOR_NAME = 3
# A flatbuffer's offsets are unsigned 32-bit but must fit a signed one (its verifier says so).
_MAX_OFFSET = 2**31 - 1


def import_litert(source: str = ""):
    """The ``ai_edge_litert.interpreter`` module, or :class:`DependencyError` (one line)."""
    try:
        from ai_edge_litert import interpreter
    except ImportError as exc:
        raise DependencyError(f"{source}: {LITERT_MISSING}" if source else LITERT_MISSING) from exc
    return interpreter


# ------------------------------------------------------------------------------ flatbuffer


class _Malformed(Exception):
    pass


class _Reader:
    """Just enough of the flatbuffer wire format to walk the TFLite schema's tables."""

    def __init__(self, buf: bytes) -> None:
        self.buf = buf

    def _unpack(self, fmt: str, pos: int):
        if pos < 0 or pos + struct.calcsize(fmt) > len(self.buf):
            raise _Malformed(f"offset {pos} is outside the file")
        return struct.unpack_from(fmt, self.buf, pos)[0]

    def deref(self, pos: int) -> int:
        """The position an offset field at ``pos`` points to (offsets only point forward)."""
        return pos + self._unpack("<I", pos)

    def field(self, table: int, number: int) -> int | None:
        """Where field ``number`` of the table at ``table`` is stored, or ``None`` if absent."""
        vtable = table - self._unpack("<i", table)
        vtable_size = self._unpack("<H", vtable)
        slot = 4 + 2 * number
        if slot + 2 > vtable_size:
            return None
        offset = self._unpack("<H", vtable + slot)
        return table + offset if offset else None

    def vector(self, table: int, number: int) -> tuple[int, int]:
        """(position of the first element, length) of a vector field; (0, 0) if absent."""
        pos = self.field(table, number)
        if pos is None:
            return 0, 0
        start = self.deref(pos)
        length = self._unpack("<I", start)
        return start + 4, length

    def ints(self, table: int, number: int) -> list[int]:
        start, length = self.vector(table, number)
        if start + 4 * length > len(self.buf):
            raise _Malformed("a vector runs past the end of the file")
        return list(struct.unpack_from(f"<{length}i", self.buf, start)) if length else []

    def tables(self, table: int, number: int) -> list[int]:
        start, length = self.vector(table, number)
        return [self.deref(start + 4 * i) for i in range(length)]

    def string(self, table: int, number: int) -> str:
        pos = self.field(table, number)
        if pos is None:
            return ""
        start = self.deref(pos)
        length = self._unpack("<I", start)
        if start + 4 + length > len(self.buf):
            raise _Malformed("a string runs past the end of the file")
        return self.buf[start + 4 : start + 4 + length].decode("utf-8")


class TFLiteGraph:
    """The main subgraph of a ``.tflite`` file as :func:`read_graph` reads it."""

    def __init__(self, tensor_names: list[str], inputs: list[int], outputs: list[int], outputs_field: int | None) -> None:
        self.tensor_names = tensor_names
        self.inputs = inputs
        self.outputs = outputs
        self._outputs_field = outputs_field
        self._by_name: dict[str, list[int]] = {}
        for index, name in enumerate(tensor_names):
            self._by_name.setdefault(name, []).append(index)

    def indices(self, names: Sequence[str], source: str) -> list[int]:
        """Tensor indices of ``names``; :class:`ArtifactError` (one line) for a name the model
        lacks or holds more than once."""
        found = []
        for name in names:
            hits = self._by_name.get(name, [])
            if not hits:
                declared = [self.tensor_names[i] for i in self.outputs]
                raise ArtifactError(
                    f"{source}: no tensor named {name!r} (the model's {len(self.tensor_names)} tensors include "
                    f"its declared outputs {declared})"
                )
            if len(hits) > 1:
                raise ArtifactError(f"{source}: {len(hits)} tensors are named {name!r} (indices {hits}); the name is ambiguous")
            found.append(hits[0])
        return found


def read_graph(content: bytes, source: str = "<.tflite bytes>") -> TFLiteGraph:
    """Tensor names, inputs and outputs of subgraph 0; :class:`ArtifactError` if ``content`` is
    not a TFLite flatbuffer."""
    if len(content) < 8 or content[4:8] != TFLITE_IDENTIFIER:
        raise ArtifactError(f"{source}: not a TFLite model (no {TFLITE_IDENTIFIER.decode()} identifier at byte 4)")
    reader = _Reader(content)
    try:
        model = reader.deref(0)
        subgraphs = reader.tables(model, _MODEL_SUBGRAPHS)
        if not subgraphs:
            raise _Malformed("it has no subgraph")
        graph = subgraphs[0]
        names = [reader.string(t, _TENSOR_NAME) for t in reader.tables(graph, _SUBGRAPH_TENSORS)]
        inputs = reader.ints(graph, _SUBGRAPH_INPUTS)
        outputs = reader.ints(graph, _SUBGRAPH_OUTPUTS)
        outputs_field = reader.field(graph, _SUBGRAPH_OUTPUTS)
    except (_Malformed, struct.error, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{source}: not a valid TFLite model ({exc})") from None
    if any(not 0 <= i < len(names) for i in inputs + outputs):
        raise ArtifactError(f"{source}: not a valid TFLite model (an input or output index is out of range)")
    return TFLiteGraph(names, inputs, outputs, outputs_field)


def with_outputs(content: bytes, graph: TFLiteGraph, outputs: Sequence[int], source: str = "<.tflite bytes>") -> bytes:
    """A copy of ``content`` whose subgraph 0 declares ``outputs`` (tensor indices) as its
    outputs, in that order.

    The new vector goes after the end of the file, and the subgraph's one offset to its outputs
    vector is pointed at it; the old vector stays, unreferenced. Nothing else moves, so every
    other offset (and any buffer stored by absolute position past the flatbuffer) stays valid.
    """
    field = graph._outputs_field
    if field is None:  # a flatbuffer builder writes even an empty vector; a missing one needs a new vtable
        raise ArtifactError(f"{source}: the main subgraph has no outputs field to redirect")
    patched = bytearray(content)
    patched += bytes(-len(patched) % 8)  # the vector's length prefix must be 4-aligned
    vector = len(patched)
    if vector - field > _MAX_OFFSET:
        raise ArtifactError(f"{source}: too large to add outputs to (an offset would pass 2 GiB)")
    patched += struct.pack(f"<I{len(outputs)}i", len(outputs), *outputs)
    struct.pack_into("<I", patched, field, vector - field)
    return bytes(patched)


# ------------------------------------------------------------------------------ the runtime


class LiteRTModel:
    """A single-input ``.tflite`` model in LiteRT, returning named tensors per batch.

    Args:
        model: the ``.tflite`` file, or its bytes.
        threads: the interpreter's threads (also XNNPACK's); the engine gives each worker its
            own count.
        xnnpack: run with LiteRT's default XNNPACK delegate (``True``), or with the builtin
            kernels only, as BirdNET-Analyzer does (``False``, exactly the peer's numbers).
        outputs: tensor names to return instead of the declared outputs, in this order (name a
            declared output here to keep it, e.g. ``["Identity", "model/GLOBAL_AVG_POOL/Mean"]``
            for BirdNET's logits and embedding). ``None``: the declared outputs. Any tensor the
            model computes can be named; the model file is patched in memory to declare them
            (:func:`with_outputs`). Ops that fed only a dropped output still run: LiteRT runs
            every op of the graph.

    :meth:`run` resizes the input to the batch's size and keeps that allocation while the
    size repeats (a new size costs one re-allocation). A model whose batch dimension is fixed
    is fed in chunks of that size, the last one padded with zeros.

    **Batch size.** With XNNPACK, the results did not depend on N: BirdNET 2.4's logits and
    embeddings of a window scored alone and inside batches of 4 and 8 were bit-identical, and
    so were 1 and 2 threads (x86-64 with AVX-512). The builtin kernels (``xnnpack=False``)
    depend on both: up to 3.8e-5 in a logit. Bitwise invariance is measured, not promised;
    ``tests/test_litert.py`` allows 1e-5.

    One instance is not thread-safe: give each thread or process its own.

    Raises:
        ArtifactError: the file is missing, is not a TFLite model, LiteRT cannot load it, or
            a name in ``outputs`` names no tensor (one line, naming the file).
        DependencyError: ``ai_edge_litert`` is not installed (:data:`LITERT_MISSING`).
        ValueError: ``threads`` < 1, or ``outputs`` empty, a bare string, or naming a tensor twice.
    """

    def __init__(self, model: str | Path | bytes, *, threads: int, xnnpack: bool = True,
                 outputs: Sequence[str] | None = None) -> None:
        if isinstance(model, (bytes, bytearray, memoryview)):
            self.path: Path | None = None
            self.source = "<.tflite bytes>"
            content = bytes(model)
        else:
            self.path = Path(model)
            self.source = str(self.path)
            if not self.path.is_file():
                raise ArtifactError(f"{self.source}: no such .tflite file")
            try:
                content = self.path.read_bytes()
            except OSError as exc:
                raise ArtifactError(f"{self.source}: cannot read it ({exc.strerror or exc})") from None
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"{self.source}: threads must be an int >= 1, got {threads!r}")
        self.threads = threads
        self.xnnpack = bool(xnnpack)

        graph = read_graph(content, self.source)
        if outputs is None:
            wanted = list(graph.outputs)
        else:
            if isinstance(outputs, str):
                raise ValueError(f"{self.source}: outputs must be a sequence of tensor names, not one string")
            if len(set(outputs)) != len(outputs):
                raise ValueError(f"{self.source}: outputs names a tensor twice: {list(outputs)}")
            if not outputs:
                raise ValueError(f"{self.source}: outputs is empty")
            wanted = graph.indices(outputs, self.source)
        if len(graph.inputs) != 1:
            raise ArtifactError(f"{self.source}: the model has {len(graph.inputs)} inputs; LiteRTModel runs single-input models")
        self._indices = wanted
        self.output_names: tuple[str, ...] = tuple(graph.tensor_names[i] for i in wanted)
        if len(set(self.output_names)) != len(self.output_names):
            raise ArtifactError(f"{self.source}: two of the outputs share a name: {list(self.output_names)}")

        litert = import_litert(self.source)
        resolver = litert.OpResolverType
        kwargs = dict(
            num_threads=threads,
            experimental_op_resolver_type=resolver.BUILTIN if self.xnnpack else resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        )
        try:
            if wanted != graph.outputs:
                self._interpreter = litert.Interpreter(model_content=with_outputs(content, graph, wanted, self.source), **kwargs)
            elif self.path is not None:  # mapped from the file: no private copy of the weights
                self._interpreter = litert.Interpreter(model_path=str(self.path), **kwargs)
            else:
                self._interpreter = litert.Interpreter(model_content=content, **kwargs)
            self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ArtifactError(f"{self.source}: LiteRT cannot load it: {first}") from None
        del content

        detail = self._interpreter.get_input_details()[0]
        self.input_name: str = detail["name"]
        self._input_index: int = detail["index"]
        self.input_dtype = np.dtype(detail["dtype"])
        signature = detail.get("shape_signature")
        if signature is None or len(signature) == 0:
            signature = detail["shape"]
        #: The input's shape, ``None`` where a dimension is dynamic (the batch, usually).
        self.input_shape: tuple[int | None, ...] = tuple(int(d) if d > 0 else None for d in signature)
        if not self.input_shape:
            raise ArtifactError(f"{self.source}: input {self.input_name!r} is a scalar; expected [batch, ...]")
        self._fixed_batch = self.input_shape[0]
        self._shape = tuple(int(d) for d in detail["shape"])  # the shape allocated now

    def __repr__(self) -> str:
        return (f"LiteRTModel({self.source!r}, threads={self.threads}, xnnpack={self.xnnpack}, "
                f"outputs={list(self.output_names)})")

    @property
    def delegated_partitions(self) -> int:
        """How many parts of the graph XNNPACK took (0 with ``xnnpack=False``). BirdNET 2.4
        has 19: its shape arithmetic and spectrogram ops stay in the builtin kernels. Reads a
        private LiteRT method; -1 if that is not there."""
        try:
            ops = self._interpreter._get_ops_details()
        except AttributeError:
            return -1
        return sum(op.get("op_name") == "DELEGATE" for op in ops)

    def _expected(self) -> str:
        dims = ", ".join("N" if i == 0 else ("*" if d is None else str(d)) for i, d in enumerate(self.input_shape))
        return f"{self.input_dtype} [{dims}]"

    def _check(self, batch) -> np.ndarray:
        if not isinstance(batch, np.ndarray):
            raise ValueError(f"{self.source}: input {self.input_name!r} takes a numpy array {self._expected()}, "
                             f"got {type(batch).__name__}")
        if batch.dtype != self.input_dtype or batch.ndim != len(self.input_shape) or any(
            want is not None and got != want for want, got in zip(self.input_shape[1:], batch.shape[1:])
        ):
            raise ValueError(f"{self.source}: input {self.input_name!r} takes {self._expected()}, "
                             f"got {batch.dtype} {list(batch.shape)}")
        return np.ascontiguousarray(batch)

    def _invoke(self, chunk: np.ndarray) -> list[np.ndarray]:
        interpreter = self._interpreter
        if chunk.shape != self._shape:
            interpreter.resize_tensor_input(self._input_index, list(chunk.shape))
            interpreter.allocate_tensors()
            self._shape = chunk.shape
        interpreter.set_tensor(self._input_index, chunk)
        interpreter.invoke()
        return [interpreter.get_tensor(i) for i in self._indices]  # copies

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """The output tensors for a batch.

        Args:
            batch: ``[N, ...]`` in the input's dtype and non-batch shape (BirdNET 2.4:
                float32 ``[N, 144000]``, 3 s at 48 kHz).

        Returns:
            ``{tensor name: array [N, ...]}`` for :attr:`output_names`, in that order.

        Raises:
            ValueError: wrong type, dtype or shape (one line, naming the file).
        """
        batch = self._check(batch)
        n = batch.shape[0]
        if n == 0:
            shapes = [self._interpreter.get_tensor(i).shape for i in self._indices]
            return {name: np.empty((0,) + shape[1:], dtype=self._interpreter.get_tensor(i).dtype)
                    for name, i, shape in zip(self.output_names, self._indices, shapes)}
        step = self._fixed_batch
        if step is None or step == n:
            arrays = self._invoke(batch)
        else:
            parts = []
            for start in range(0, n, step):
                chunk = batch[start : start + step]
                real = chunk.shape[0]
                if real < step:
                    chunk = np.concatenate([chunk, np.zeros((step - real,) + chunk.shape[1:], chunk.dtype)])
                parts.append([a[:real] for a in self._invoke(chunk)])
            arrays = [np.concatenate(column) for column in zip(*parts)]
        return dict(zip(self.output_names, arrays))
