"""Exception types shared across the package.

Two families, kept apart on purpose (DESIGN: "expected vs fatal by name"):

* :class:`ArtifactError` and :class:`ConfigError` are fatal. They are raised before any audio
  is read and name the file or setting at fault.
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
