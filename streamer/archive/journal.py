"""The archive's resume journal: which inputs are finished, which failed and why.

An append-only JSON-lines file in the output folder. Each line records one input's outcome,
keyed by its resolved path, size and modification time, so a changed recording is scored again.
Lines are flushed and fsynced one by one; a line cut short by a crash is ignored (with a
warning), so the journal never claims more than was finished. The latest line of a path wins.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from streamer import failpoints
from streamer.errors import OutputWriteError

log = logging.getLogger(__name__)

JOURNAL_NAME = ".streamer-journal.jsonl"
_CORE = ("key", "status", "output", "reason", "time", "audio_s")
DONE = "done"
FAILED = "failed"


@dataclass(frozen=True)
class FileKey:
    """What identifies one version of an input file."""

    path: str
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> "FileKey":
        st = Path(path).stat()
        return cls(str(Path(path).resolve()), int(st.st_size), int(st.st_mtime_ns))


@dataclass(frozen=True)
class Entry:
    key: FileKey
    status: str
    output: str
    reason: str = ""
    audio_s: float | None = None
    extra: dict | None = None  # what else the line holds (the summary's counts, the recording's start)


class Journal:
    """Read the journal of ``out_dir`` and append outcomes to it."""

    def __init__(self, out_dir: Path) -> None:
        self.path = Path(out_dir) / JOURNAL_NAME
        self.entries: dict[str, Entry] = {}
        if self.path.is_file():
            self._load()

    def _load(self) -> None:
        with open(self.path) as handle:
            for line_no, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    doc = json.loads(line)
                    entry = Entry(FileKey(**doc["key"]), doc["status"], doc["output"], doc.get("reason", ""), doc.get("audio_s"),
                                  {k: v for k, v in doc.items() if k not in _CORE})
                except (ValueError, KeyError, TypeError):
                    log.warning("%s, line %d: unreadable (cut short by a crash?); ignored", self.path, line_no)
                    continue
                self.entries[entry.key.path] = entry

    def is_done(self, path: Path, output: Path) -> bool:
        """Finished before, unchanged since, and its output is still there."""
        return self.is_done_key(path, FileKey.of(path)) and Path(output).is_file()

    def is_done_key(self, path: Path, key: FileKey) -> bool:
        """Whether this version (``key``) of ``path`` is journaled as done."""
        entry = self.entries.get(str(Path(path).resolve()))
        return entry is not None and entry.status == DONE and entry.key == key

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as handle:
            handle.seek(-1, os.SEEK_END)
            return handle.read(1) == b"\n"

    def remove(self) -> None:
        """Forget every outcome (``--overwrite``): the journal file is deleted."""
        self.path.unlink(missing_ok=True)
        self.entries.clear()

    def failed(self) -> list[Entry]:
        """Inputs whose latest outcome is a failure."""
        return [e for e in self.entries.values() if e.status == FAILED]

    def record(self, path: Path, status: str, output: str, reason: str = "", *, key: FileKey | None = None,
               audio_s: float | None = None, extra: dict | None = None) -> None:
        """Append one outcome durably. ``key`` is the input as it was when its scoring began
        (default: as it is now), so a recording that changed meanwhile is scored again."""
        entry = Entry(key if key is not None else FileKey.of(path), status, output, reason, audio_s)
        doc = {"key": entry.key.__dict__, "status": status, "output": output, "reason": reason,
               "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        if audio_s is not None:
            doc["audio_s"] = audio_s
        doc.update(extra or {})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            failpoints.hit("archive.journal_append", output)
            with open(self.path, "a", encoding="utf-8") as handle:
                if handle.tell() > 0 and not self._ends_with_newline():
                    handle.write("\n")  # close a line a crash cut short, so this one stays whole
                handle.write(json.dumps(doc) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:
            raise OutputWriteError(f"could not append to the journal {self.path}: {exc.strerror or exc}; "
                                   f"rerun to resume once it can be written") from exc
        self.entries[entry.key.path] = entry
