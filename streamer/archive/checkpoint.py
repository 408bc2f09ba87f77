"""Finished 60-s chunks of inputs in progress, kept across attempts and runs.

A 10-hour recording stopped at 9 h (Ctrl-C, a kill, a dead worker, a full disk) must not be
scored again from its start. So every input longer than one chunk is scored in *runs*: a run
is the consecutive chunks one task scored from a first chunk on, kept in the hidden
``.streamer-ranges/`` folder of the output folder as three files next to each other:

- ``<stem>.<first>.scores.f32`` and ``<stem>.<first>.embeddings.f32``: the windows' raw float32
  rows (C probabilities, and the embedding), appended chunk by chunk;
- ``<stem>.<first>.chunks.jsonl``: a header line (the input's path, size and modification time,
  the run's first chunk, the rows' widths), then one line per finished chunk (its windows, its
  real samples, a CRC-32 of its rows, the notes its scoring made), and an ``eof`` line when the
  run reached the end of the input.

A chunk's rows are written before its line, so a chunk counts only once both are on disk; a
run read back is cut at the first line that is missing, torn or whose rows do not match its
CRC (a power cut may have kept the line and not the rows: nothing is fsynced per chunk). When
every chunk of an input is in its runs (:func:`coverage`), the runs are replayed in order
through the input's writers (:func:`streamer.archive.scorer.join_input`), so the files are
those of one uninterrupted pass; the runs are removed once the input is journaled.

Runs are valid only for the input as it was (same path, size and modification time) under the
folder's settings (the run fingerprint refuses other settings, and ``--overwrite`` removes the
runs with the outputs); :func:`prune` removes the others at the start of every run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from streamer import failpoints
from streamer.archive.journal import FileKey
from streamer.files import atomic_write_text

log = logging.getLogger(__name__)

#: The folder of the runs, inside the output folder. Its leading dot keeps it out of dataset
#: readers and of the folder's outputs.
PARTS_FOLDER = ".streamer-ranges"
FORMAT = 1
RECORDS_SUFFIX = ".chunks.jsonl"
SCORES_SUFFIX = ".scores.f32"
EMBEDDINGS_SUFFIX = ".embeddings.f32"


def parts_dir(out_dir: Path) -> Path:
    return Path(out_dir) / PARTS_FOLDER


def input_stem(rel: str) -> str:
    """The runs' file-name stem of the input ``rel`` (any characters, any length)."""
    return hashlib.sha256(rel.encode("utf-8", "surrogateescape")).hexdigest()[:20]


def part_of(folder: Path, rel: str, first: int) -> Path:
    """The path stem of the run of input ``rel`` that starts at chunk ``first``."""
    return Path(folder) / f"{input_stem(rel)}.{first:06d}"


def _paths(part: Path) -> tuple[Path, Path, Path]:
    return (part.with_name(part.name + RECORDS_SUFFIX), part.with_name(part.name + SCORES_SUFFIX),
            part.with_name(part.name + EMBEDDINGS_SUFFIX))


def remove_part(part: Path) -> None:
    for path in _paths(part):
        path.unlink(missing_ok=True)


def header_of(rel: str, key, first: int, widths: tuple[int, int], rate_hz: int) -> dict:
    """What a run must have been made for to be used: this version of this input, from this
    chunk, with rows of these widths (scores, embeddings; 0: not kept), its samples counted at
    this rate."""
    return {"format": FORMAT, "input": rel, "key": dict(key.__dict__), "first": first,
            "widths": [int(w) for w in widths], "rate_hz": int(rate_hz)}


@dataclass(frozen=True)
class ChunkRecord:
    """One finished chunk of a run: chunk ``index`` of the input, its ``windows`` rows from row
    ``row`` of the run's files, ``n_real`` samples of real audio (at the model's rate)."""

    index: int
    row: int
    windows: int
    n_real: int
    crc: int
    notes: tuple[str, ...] = ()


@dataclass
class StoredRun:
    """A run read back: its finished chunks in order, and whether it reached the input's end."""

    part: Path
    rel: str
    first: int
    widths: tuple[int, int]
    rate_hz: int
    records: list[ChunkRecord] = field(default_factory=list)
    eof: bool = False
    records_bytes: int = 0  # the valid prefix of the records file

    @property
    def end(self) -> int:
        """One past its last finished chunk."""
        return self.first + len(self.records)

    @property
    def n_rows(self) -> int:
        return sum(r.windows for r in self.records)

    def rows(self, which: int) -> np.ndarray | None:
        """The run's rows of scores (0) or embeddings (1), mapped from disk; None when not kept."""
        width = self.widths[which]
        if not width:
            return None
        n = self.n_rows
        if n == 0:
            return np.zeros((0, width), np.float32)
        return np.memmap(_paths(self.part)[1 + which], dtype=np.float32, mode="r", shape=(n, width))


def _crc(scores: bytes, embeddings: bytes) -> int:
    return zlib.crc32(embeddings, zlib.crc32(scores))


def load_run(part: Path, expected: dict | None = None) -> StoredRun | None:
    """The run at ``part``, cut at its first chunk that is not whole on disk; None when there
    is none, its header is unreadable, or it differs from ``expected``."""
    records_path, scores_path, embeddings_path = _paths(part)
    try:
        with open(records_path, "rb") as handle:
            raw = handle.read()
    except FileNotFoundError:
        return None
    lines = raw.split(b"\n")
    if len(lines) == 1:  # the header line itself was cut short
        return None
    try:
        header = json.loads(lines[0])
        if not isinstance(header, dict) or header.get("format") != FORMAT or (expected is not None and header != expected):
            return None
        widths = tuple(int(w) for w in header["widths"])
        run = StoredRun(part, str(header["input"]), int(header["first"]), widths, int(header["rate_hz"]),
                        records_bytes=len(lines[0]) + 1)
    except (ValueError, KeyError, TypeError):  # not a header this version wrote
        return None
    handles = [open(p, "rb") if w else None for p, w in zip((scores_path, embeddings_path), widths)]
    try:
        row = 0
        for line in lines[1:-1]:  # the last item follows the last newline: a torn line or b""
            try:
                doc = json.loads(line)
            except ValueError:
                break
            if not isinstance(doc, dict):
                break
            if doc.get("eof") is True:
                run.eof = True
                run.records_bytes += len(line) + 1
                break
            index, windows = doc.get("chunk"), doc.get("windows")
            if index != run.first + len(run.records) or not isinstance(windows, int) or windows < 0:
                break
            blobs = [h.read(windows * w * 4) if h is not None else b"" for h, w in zip(handles, widths)]
            if any(len(b) != windows * w * 4 for b, w in zip(blobs, widths)) or _crc(*blobs) != doc.get("crc"):
                break
            try:
                record = ChunkRecord(index, row, windows, int(doc["n_real"]), int(doc["crc"]), tuple(map(str, doc.get("notes", ()))))
            except (KeyError, TypeError, ValueError):
                break
            run.records.append(record)
            run.records_bytes += len(line) + 1
            row += windows
    finally:
        for h in handles:
            if h is not None:
                h.close()
    return run


class RunWriter:
    """Appends finished chunks to the run at ``part``: continues the run found there when it
    was made for the same ``header`` (cut to its whole chunks), else starts it afresh."""

    def __init__(self, part: Path, header: dict, rel: str = "") -> None:
        self.part = part
        self.rel = rel
        self.widths = tuple(header["widths"])
        records_path, *row_paths = _paths(part)
        run = load_run(part, header)
        if run is None:
            remove_part(part)
            part.parent.mkdir(parents=True, exist_ok=True)
            for path, width in zip(row_paths, self.widths):
                if width:
                    open(path, "wb").close()
            atomic_write_text(records_path, json.dumps(header) + "\n")
            run = StoredRun(part, rel, header["first"], self.widths, header["rate_hz"], records_bytes=records_path.stat().st_size)
        elif run.records:
            log.info("%s: %d finished chunk(s) kept from chunk %d on; scoring goes on from chunk %d", rel or part.name,
                     len(run.records), run.first, run.end)
        self.run = run
        # Cut what follows the whole chunks (a torn line, rows without their line), then append.
        os.truncate(records_path, run.records_bytes)
        self._records = open(records_path, "ab")
        self._rows = []
        try:
            for path, width in zip(row_paths, self.widths):
                if width:
                    os.truncate(path, run.n_rows * width * 4)
                    self._rows.append(open(path, "ab"))
                else:
                    self._rows.append(None)
        except BaseException:
            self.close()
            raise

    @property
    def n_chunks(self) -> int:
        return len(self.run.records)

    @property
    def eof(self) -> bool:
        return self.run.eof

    @property
    def audio_samples(self) -> int:
        return sum(r.n_real for r in self.run.records)

    def append(self, index: int, probs: np.ndarray | None, embedding: np.ndarray | None, n_real: int, notes=()) -> None:
        """Keep chunk ``index``: its rows, then its line (what makes it count)."""
        failpoints.hit("archive.chunk_keep", self.rel)
        if index != self.run.end:
            raise RuntimeError(f"{self.rel}: chunk {index} came where chunk {self.run.end} was due")
        blobs = []
        for handle, rows, width in zip(self._rows, (probs, embedding), self.widths):
            blob = np.ascontiguousarray(rows, dtype=np.float32).tobytes() if width else b""
            if width:
                if rows.shape[1:] != (width,):
                    raise ValueError(f"{self.rel}: rows of width {rows.shape[1:]} where {width} was due")
                handle.write(blob)
                handle.flush()
            blobs.append(blob)
        windows = (embedding if self.widths[1] else probs).shape[0]
        crc = _crc(*blobs)
        doc = {"chunk": index, "windows": windows, "n_real": int(n_real), "crc": crc}
        if notes:
            doc["notes"] = list(notes)
        self._records.write((json.dumps(doc) + "\n").encode())
        self._records.flush()
        self.run.records.append(ChunkRecord(index, self.run.n_rows, windows, int(n_real), crc, tuple(notes)))

    def reached_end(self) -> None:
        """The input ends after the chunks kept."""
        self._records.write(b'{"eof": true}\n')
        self._records.flush()
        self.run.eof = True

    def close(self) -> None:
        """Close the files (what they hold stays: that is the point)."""
        for handle in [self._records, *self._rows]:
            if handle is not None:
                handle.close()


def _parts(folder: Path, stem: str = "*") -> list[Path]:
    """The runs in ``folder`` (of the input whose file-name stem is ``stem``), by their records
    files."""
    return [path.with_name(path.name[: -len(RECORDS_SUFFIX)]) for path in sorted(Path(folder).glob(f"{stem}.*{RECORDS_SUFFIX}"))]


def runs_of(folder: Path, rel: str, key, widths: tuple[int, int], rate_hz: int) -> list[StoredRun]:
    """The valid runs of this version of input ``rel``, by first chunk."""
    runs = []
    for part in _parts(folder, input_stem(rel)):
        try:
            first = int(part.name.split(".")[1])
        except (IndexError, ValueError):
            continue
        run = load_run(part, header_of(rel, key, first, widths, rate_hz))
        if run is not None:
            runs.append(run)
    return sorted(runs, key=lambda r: r.first)


@dataclass
class Coverage:
    """What an input's runs hold: ``pieces`` (run, its chunks to use) in order from chunk 0,
    and the ``gaps`` still to score (first chunk, end chunk or None: to the input's end)."""

    pieces: list[tuple[StoredRun, list[ChunkRecord]]]
    gaps: list[tuple[int, int | None]]

    @property
    def complete(self) -> bool:
        return not self.gaps

    @property
    def kept_samples(self) -> int:
        return sum(r.n_real for _, records in self.pieces for r in records)

    @property
    def kept_chunks(self) -> int:
        return sum(len(records) for _, records in self.pieces)


def coverage(runs: list[StoredRun]) -> Coverage:
    """The chunks ``runs`` hold from chunk 0 on, and the gaps between them (a chunk held twice
    is taken from the earlier run)."""
    pieces, gaps = [], []
    pos = 0
    for run in sorted(runs, key=lambda r: r.first):
        if run.first > pos:
            gaps.append((pos, run.first))
            pos = run.first
        records = run.records[pos - run.first:]
        if records:
            pieces.append((run, records))
            pos = run.end
        if run.eof and run.end >= pos:
            return Coverage(pieces, gaps)
    gaps.append((pos, None))
    return Coverage(pieces, gaps)


def remove_runs(folder: Path, rel: str) -> int:
    """Remove every run of input ``rel``."""
    n = 0
    for path in Path(folder).glob(f"{input_stem(rel)}.*"):
        path.unlink(missing_ok=True)
        n += 1
    return n


def prune(folder: Path, is_done) -> int:
    """Remove the runs no later run can use: unreadable ones, and those of inputs that changed,
    went away or are finished (``is_done(path, key)``); keep the others (a run over fewer
    inputs leaves the rest's runs alone). Returns the runs removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    parts = set()
    for path in list(folder.iterdir()):
        if path.name.startswith("."):  # a temporary file of a killed run (one run at a time holds the folder)
            path.unlink(missing_ok=True)
        else:
            parts.add(folder / ".".join(path.name.split(".")[:2]))
    for part in sorted(parts):
        records_path = _paths(part)[0]
        keep = False
        try:
            header = json.loads(records_path.read_bytes().split(b"\n", 1)[0])
            key = FileKey(**header["key"])
            keep = load_run(part) is not None and FileKey.of(Path(key.path)) == key and not is_done(Path(key.path), key)
        except (OSError, ValueError, KeyError, TypeError):
            keep = False  # no records file, an unreadable header, or the input went away
        if not keep:
            remove_part(part)
            removed += 1
    if removed:
        log.info("removed %d kept run(s) of inputs that changed, went away or are finished", removed)
    return removed


def kept_by_input(folder: Path) -> dict[str, float]:
    """Seconds of audio kept per input (what ``streamer archive --status`` shows)."""
    kept: dict[str, float] = {}
    for part in _parts(folder):  # none when the folder is missing
        run = load_run(part)
        if run is not None:
            kept[run.rel] = kept.get(run.rel, 0.0) + sum(r.n_real for r in run.records) / run.rate_hz
    return kept


def tidy(folder: Path) -> None:
    """Remove the runs' folder when it holds nothing."""
    folder = Path(folder)
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
