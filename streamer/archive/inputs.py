"""What ``streamer archive INPUT...`` scores: files, folders (searched recursively) and text
files listing paths, each mapped to the relative name its output will carry."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from streamer.audio import AUDIO_EXTENSIONS
from streamer.errors import ConfigError

log = logging.getLogger(__name__)

#: Extensions of list files: one path per line, blank lines and ``#`` comments ignored.
LIST_EXTENSIONS = frozenset({".txt", ".lst", ".list"})


@dataclass(frozen=True)
class ArchiveInput:
    """An input recording and the relative name of its outputs (``<rel>.parquet``)."""

    path: Path
    rel: PurePosixPath


def _is_audio(path: Path) -> bool:
    return path.suffix.lower() in AUDIO_EXTENSIONS


def _clean_rel(text: str) -> PurePosixPath:
    """A relative output name that cannot leave the output folder."""
    parts = [p for p in PurePosixPath(text.replace(os.sep, "/")).parts if p not in ("", ".", "..", "/")]
    if not parts:
        raise ConfigError(f"cannot derive an output name from {text!r}")
    return PurePosixPath(*parts)


def _from_list(list_file: Path) -> list[ArchiveInput]:
    """The recordings a list names. A relative path is taken from the list's own folder, not from
    the working directory: a list travels with its recordings, and means the same wherever the
    command runs."""
    found = []
    folder = list_file.parent
    for line_no, line in enumerate(list_file.read_text().splitlines(), start=1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        relative = not Path(entry).is_absolute()
        path = folder / entry if relative else Path(entry)
        if not path.is_file():
            where = f"listed in {list_file} (line {line_no})"
            if relative:
                where += f", resolved against its folder {folder.resolve()}"
            raise ConfigError(f"{path}: {'is not a file' if path.exists() else 'no such file'}; {where}")
        found.append(ArchiveInput(path, _clean_rel(entry)))
    return found


def expand_inputs(inputs: list[str | Path]) -> list[ArchiveInput]:
    """Expand the command-line inputs into recordings, in a stable order.

    * a folder: every audio file below it, named ``<folder name>/<path below it>``;
    * an audio file: named by its file name;
    * a list file (``.txt``, ``.lst``, ``.list``): the paths it lists (relative ones are resolved
      against the list's folder, not the working directory), named as written.

    Raises:
        ConfigError: a path does not exist, no audio file was found at all, or two inputs would
            write the same output.
    """
    found: list[ArchiveInput] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            audio = sorted(p for p in path.rglob("*") if p.is_file() and _is_audio(p))
            if not audio:
                log.warning("%s: no audio files in this folder (extensions looked for: %s)", path, " ".join(sorted(AUDIO_EXTENSIONS)))
            for f in audio:
                found.append(ArchiveInput(f, PurePosixPath(path.resolve().name) / PurePosixPath(f.relative_to(path).as_posix())))
        elif path.is_file() and path.suffix.lower() in LIST_EXTENSIONS:
            found.extend(_from_list(path))
        elif path.is_file():
            found.append(ArchiveInput(path, _clean_rel(path.name)))
        else:
            raise ConfigError(f"{path}: no such file or folder")
    if not found:
        raise ConfigError(f"no audio files found in {', '.join(map(str, inputs))} (extensions looked for: {' '.join(sorted(AUDIO_EXTENSIONS))})")
    unique: dict[Path, ArchiveInput] = {}
    names: dict[PurePosixPath, Path] = {}
    for entry in found:
        key = entry.path.resolve()
        if key in unique:
            continue  # the same recording named twice: scored once
        if entry.rel in names:
            raise ConfigError(f"{entry.path} and {names[entry.rel]} would both write {entry.rel}.parquet; rename one")
        unique[key] = entry
        names[entry.rel] = entry.path
    return list(unique.values())
