"""Exception types shared across the package.

Two families, kept apart on purpose (expected errors are named apart from fatal ones):

* :class:`ArtifactError` and :class:`ConfigError` are fatal. They are raised before any audio
  is read and name the file or setting at fault.
* :class:`OutputWriteError` is fatal too, but after work began: an output could not be written.
* :class:`AudioDecodeError` is expected. A file that cannot be decoded gets fallback rows, one
  warning and a count in the final report; it never stops a run.
"""


class StreamerError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(StreamerError):
    """A setting or command-line value is invalid."""


class ArtifactError(StreamerError):
    """A model artifact or metadata file is missing or malformed (names the file)."""


class DependencyError(StreamerError):
    """A required third-party package is not importable."""


class AudioDecodeError(StreamerError):
    """An audio file could not be decoded; the caller substitutes fallback rows."""


class OutputWriteError(StreamerError):
    """An output file could not be written (a full disk, a lost folder). Nothing partial is left
    under the final name, and a file already there is left untouched; the command exits 1."""
