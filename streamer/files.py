"""Writing files atomically, with the permissions a plain ``open(path, "w")`` would give, and
hashing them (:func:`sha256_file`: the validation cache, the students' export cache and the
archive's fingerprint key on the same digest of a file, so it is computed in one place).

Every file streamer writes goes to a temporary sibling first and is renamed into place only when
complete, so a crash never leaves a half-written file under the final name. ``tempfile.mkstemp``
creates its file with mode 0600 whatever the umask; the temporary file is therefore given
``0666 & ~umask`` (0644 under the usual umask 022) before anything is written, as ``open``
would have done.

Temporary names are ``.<name>.<pid>.<random>.tmp``: the pid lets a later run tell a temporary
file left by a dead process (removed by :func:`remove_stale_temporaries`) from one that another
live run is still writing.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import IO, Iterator

from streamer.errors import ArtifactError, ConfigError

log = logging.getLogger(__name__)

TEMP_SUFFIX = ".tmp"
#: Bytes read at a time when hashing a file.
HASH_CHUNK = 1 << 20


def current_umask() -> int:
    """The process's umask, read without changing it where Linux tells it (``/proc``), else by
    setting it and restoring it at once."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError) as exc:  # not Linux, or an old kernel
        log.debug("no umask in /proc (%s); reading it by setting it back at once", exc)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file under the current umask."""
    return 0o666 & ~current_umask()


def temporary_sibling(path: str | Path) -> tuple[int, Path]:
    """Create ``path``'s temporary sibling (normal permissions); returns (fd, temporary path).
    The destination's folder is created if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        os.fchmod(fd, default_file_mode())
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    return fd, Path(tmp)


def install(tmp: str | Path, path: str | Path) -> Path:
    """fsync the finished temporary file, rename it over ``path``, fsync the folder."""
    with open(tmp, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_dir(Path(path).parent)
    return Path(path)


def make_temp_dir(parent: str | Path, prefix: str) -> Path:
    """A new folder inside ``parent`` (to be filled, then renamed into place), with the
    permissions ``mkdir`` would give under the umask (``mkdtemp`` gives 0700)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    folder.chmod(0o777 & ~current_umask())
    return folder


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # some file systems do not open folders; the rename itself is done
    try:
        os.fsync(fd)
    except OSError as exc:
        log.debug("%s: fsync of the folder failed (%s); the rename is done", folder, exc)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs) -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; on a normal exit it is renamed into
    place, on an exception it is removed (``path`` is then left as it was).

    ``mode`` is ``"w"`` (text, UTF-8 unless ``encoding`` is given) or ``"wb"``."""
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    if mode == "w":
        kwargs.setdefault("encoding", "utf-8")
        kwargs.setdefault("newline", "")
    fd, tmp = temporary_sibling(path)
    try:
        with os.fdopen(fd, mode, **kwargs) as handle:
            yield handle
        install(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_open(path, "w") as handle:
        handle.write(text)
    return Path(path)


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """A matplotlib figure as a PNG at ``path``, atomically; the figure is closed whatever
    happens. A figure made with a layout engine (``layout="constrained"``) keeps it."""
    import matplotlib.pyplot as plt

    try:
        if fig.get_layout_engine() is None:
            fig.tight_layout()
        with atomic_open(path, "wb") as handle:
            fig.savefig(handle, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    return Path(path)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def remove_stale_temporaries(path: str | Path) -> int:
    """Remove the temporary siblings of ``path`` left by processes that no longer run (a run
    killed before it could clean up); those of live processes are left alone."""
    path = Path(path)
    pattern = re.compile(r"^\." + re.escape(path.name) + r"\.(\d+)\.[^.]+" + re.escape(TEMP_SUFFIX) + "$")
    n = 0
    if not path.parent.is_dir():
        return 0
    for tmp in path.parent.glob(f".{glob_escape(path.name)}.*{TEMP_SUFFIX}"):
        match = pattern.match(tmp.name)
        if match and not pid_alive(int(match.group(1))):
            tmp.unlink(missing_ok=True)
            n += 1
    if n:
        log.info("removed %d temporary file(s) of %s left by an interrupted run", n, path)
    return n


def glob_escape(name: str) -> str:
    """``name`` with the glob metacharacters escaped."""
    return re.sub(r"([*?\[])", r"[\1]", name)


def check_writable_file(path: str | Path, what: str) -> Path:
    """Refuse, before any work, a destination that could not be written at the end: a folder,
    a path below a file, or a folder without write permission. Missing parent folders are
    created (as the writers would).

    Raises:
        ConfigError: naming ``what`` (e.g. ``--out``) and the path.
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{what} {path}: is a folder; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ConfigError(f"{what} {path}: {path.parent} is not a folder") from None
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot create its folder ({exc.strerror})") from None
    try:
        fd, tmp = temporary_sibling(path)
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot write there ({exc.strerror})") from None
    os.close(fd)
    tmp.unlink()
    return path


def sha256_file(path: str | Path) -> str:
    """SHA-256 of a file, read in 1 MiB chunks (the Perch ONNX file is ~400 MB)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(HASH_CHUNK), b""):
                digest.update(chunk)
    except OSError as exc:
        raise ArtifactError(f"{path}: cannot read to hash it ({exc})") from exc
    return digest.hexdigest()


#: Endings of a single file's name: an output folder named like this was most likely meant as
#: one file (``--out scores.csv``), while the archive writes a folder of them.
FILE_LIKE_SUFFIXES = frozenset({".csv", ".tsv", ".txt", ".parquet", ".pq", ".json", ".png", ".xlsx"})


def check_output_folder(path: str | Path, what: str, *, is_ours=None) -> Path:
    """Refuse, before any work, an output folder that could not be made or written: an existing
    file, a path below a file, a folder without write permission, or a name that looks like a
    file's (``scores.csv``) unless ``is_ours(path)`` says it is already an output folder of ours.
    Nothing is created.

    Raises:
        ConfigError: one line naming ``what`` (e.g. ``--out``) and the path.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{what} {path}: is a file; give a folder (one output file per input goes there)")
    existing = path
    while not existing.exists():  # the deepest part of the path that exists
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing != path and not existing.is_dir():
        raise ConfigError(f"{what} {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {path}: {existing} is not writable")
    if path.suffix.lower() in FILE_LIKE_SUFFIXES and not (path.is_dir() and is_ours is not None and is_ours(path)):
        raise ConfigError(f"{what} {path}: names a folder of outputs (one file per input, plus the summary), not one "
                          f"{path.suffix} file; give a folder name such as {path.with_suffix('')}/")
    return path
