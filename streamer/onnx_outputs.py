"""The declared outputs of an ONNX file, read without loading its weights.

An ONNX file is a protobuf ``ModelProto``; its ``graph`` (field 7) holds the nodes, the
initializers (the weights: nearly all of the file) and the declared ``output`` value infos
(field 12). This walks the protobuf wire format and skips every length-
delimited field it does not need in O(1): reads of a few kilobytes around each field header,
so checking the 409 MB Perch file costs milliseconds and no memory (no memory map either, whose
touched pages would count in the process's resident memory). ``prepare`` uses it to check, in the parent and before any process starts, that
the file is an ONNX model at all and that its ``label`` output has as many logits as the label
list has rows (onnxruntime itself loads the model only in the processes that run it).

Protobuf encoding: https://protobuf.dev/programming-guides/encoding/ ; the ONNX schema:
onnx/onnx.proto (ModelProto.graph = 7, GraphProto.output = 12, ValueInfoProto.name = 1 and
.type = 2, TypeProto.tensor_type = 1, Tensor.shape = 2, TensorShapeProto.dim = 1,
Dimension.dim_value = 1 and .dim_param = 2).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


class OnnxFormatError(ValueError):
    """The bytes are not a well-formed ONNX model."""


@dataclass(frozen=True)
class DeclaredOutput:
    """One declared graph output: its name and shape (an int per static dimension, a string for
    a symbolic one, None when not given)."""

    name: str
    shape: tuple[int | str | None, ...] | None


class _Bytes:
    """A file's bytes by index and slice, read in small blocks (the last block is kept)."""

    BLOCK = 4096

    def __init__(self, handle) -> None:
        self.handle = handle
        self.start = -1
        self.block = b""

    def __getitem__(self, index):
        if isinstance(index, slice):
            self.handle.seek(index.start)
            return self.handle.read(index.stop - index.start)
        if not self.start <= index < self.start + len(self.block):
            self.start = index
            self.handle.seek(index)
            self.block = self.handle.read(self.BLOCK)
            if not self.block:
                raise OnnxFormatError("truncated file")
        return self.block[index - self.start]


def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= end or shift > 63:
            raise OnnxFormatError("truncated or malformed varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(buf, start: int, end: int):
    """(field number, wire type, value or (start, end) span) of each field in ``buf[start:end]``."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise OnnxFormatError("field number 0")
        if wire == _VARINT:
            value, pos = _varint(buf, pos, end)
            yield number, wire, value
        elif wire == _LEN:
            length, pos = _varint(buf, pos, end)
            if pos + length > end:
                raise OnnxFormatError("a field runs past the end of its message")
            yield number, wire, (pos, pos + length)
            pos += length
        elif wire == _I64:
            pos += 8
        elif wire == _I32:
            pos += 4
        else:
            raise OnnxFormatError(f"unknown wire type {wire}")
    if pos != end:
        raise OnnxFormatError("a field runs past the end of its message")


def _submessages(buf, span, number: int):
    for n, wire, value in _fields(buf, *span):
        if n == number and wire == _LEN:
            yield value


def _shape(buf, type_span) -> tuple | None:
    for tensor in _submessages(buf, type_span, 1):  # TypeProto.tensor_type
        for shape in _submessages(buf, tensor, 2):  # Tensor.shape
            dims: list[int | str | None] = []
            for dim in _submessages(buf, shape, 1):  # TensorShapeProto.dim
                value: int | str | None = None
                for n, wire, v in _fields(buf, *dim):
                    if n == 1 and wire == _VARINT:
                        value = v
                    elif n == 2 and wire == _LEN:
                        value = buf[v[0]:v[1]].decode("utf-8", "replace")
                dims.append(value)
            return tuple(dims)
    return None


def declared_outputs(path: str | Path) -> list[DeclaredOutput]:
    """The graph outputs declared by the ONNX file at ``path``, in order.

    Raises:
        OnnxFormatError: the file is not a well-formed ONNX model (or declares no graph).
        OSError: the file cannot be read.
    """
    return _value_infos(path, 12)  # GraphProto.output


def declared_inputs(path: str | Path) -> list[DeclaredOutput]:
    """The graph inputs declared by the ONNX file at ``path``, in order, without the
    initializers that older exporters also list as inputs (GraphProto.initializer = 5).

    Raises:
        OnnxFormatError, OSError: as :func:`declared_outputs`.
    """
    with open(path, "rb") as handle:
        size = handle.seek(0, 2)
        if size == 0:
            raise OnnxFormatError("empty file")
        buf = _Bytes(handle)
        graph = _graph(buf, size)
        weights = set()
        for start, stop in _submessages(buf, graph, 5):  # TensorProto: name is field 8
            for n, wire, v in _fields(buf, start, stop):
                if n == 8 and wire == _LEN:
                    weights.add(buf[v[0]:v[1]].decode("utf-8", "replace"))
    return [i for i in _value_infos(path, 11) if i.name not in weights]  # GraphProto.input


def _graph(buf, size: int):
    graphs = list(_submessages(buf, (0, size), 7))  # ModelProto.graph
    if not graphs:
        raise OnnxFormatError("no graph")
    return graphs[-1]


def _value_infos(path: str | Path, number: int) -> list[DeclaredOutput]:
    """The ValueInfoProtos of GraphProto field ``number`` (11: inputs, 12: outputs)."""
    with open(path, "rb") as handle:
        size = handle.seek(0, 2)
        if size == 0:
            raise OnnxFormatError("empty file")
        buf = _Bytes(handle)
        infos = []
        for start, stop in _submessages(buf, _graph(buf, size), number):
            value_info = buf[start:stop]  # small: parsed in memory
            name, shape = "", None
            for n, wire, v in _fields(value_info, 0, len(value_info)):
                if n == 1 and wire == _LEN:
                    name = value_info[v[0]:v[1]].decode("utf-8", "replace")
                elif n == 2 and wire == _LEN:
                    shape = _shape(value_info, v)
            infos.append(DeclaredOutput(name, shape))
        return infos
