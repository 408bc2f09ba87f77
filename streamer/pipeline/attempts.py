"""How often one unit of work (an ``infer`` file, an archive input or range) is tried.

``infer`` and ``archive`` share the rule, so a file that kills its worker, or makes the models
raise, is given up on after the same number of tries in every engine: :class:`Attempts` counts
the deaths of the process working on a unit (the multiprocess engines), :func:`try_up_to` the
failed calls of a unit in one process (the sequential engines).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Callable, Hashable, TypeVar

T = TypeVar("T")

#: Attempts (deaths of the child working on it, or failed calls in a sequential engine) before a
#: unit of work is given up: ``infer`` writes prior-only rows, ``archive`` reports it failed.
MAX_FILE_ATTEMPTS = 3


class Attempts(collections.Counter):
    """Failed attempts per unit of work, by its key (a file's index, an input's or range's
    label). Only the attempt that was running counts: work that was merely queued behind it
    on a dead worker is not at fault."""

    def fail(self, key: Hashable) -> tuple[int, bool]:
        """Count one failed attempt of ``key``: ``(attempts so far, True when that was its
        last)``."""
        self[key] += 1
        n = self[key]
        return n, n >= MAX_FILE_ATTEMPTS


@dataclass(frozen=True)
class GaveUp:
    """:func:`try_up_to`'s answer when every attempt raised: how many, and the last error in
    words (``"Type: message"``)."""

    attempts: int
    cause: str


def try_up_to(call: Callable[[], T], on_retry: Callable[[str], None]) -> T | GaveUp:
    """``call()``'s result, calling it again after an exception, at most
    :data:`MAX_FILE_ATTEMPTS` times in all; ``on_retry`` hears each error that is followed by
    another try (in words). One unit's failure is that unit's, not the run's, so any
    :class:`Exception` counts; the caller decides what giving up means."""
    cause = ""
    for attempt in range(1, MAX_FILE_ATTEMPTS + 1):
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - see the docstring
            cause = f"{type(exc).__name__}: {exc}"
            if attempt < MAX_FILE_ATTEMPTS:
                on_retry(cause)
    return GaveUp(MAX_FILE_ATTEMPTS, cause)
