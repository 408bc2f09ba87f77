"""``--class NAME``: the classes a user names, found among those a table, a label file or a head has.

``clips``, ``classify`` and ``rescore`` take the same flag and answer a name they do not know
the same way, before anything is read at length or written: one line naming it with the closest
names (a typo), or, with nothing close, how many classes there are (a name of another model or
label file). A name matches any of a class's names as its source has them (the code or label,
the common name, the scientific name), in any case, so that ``eurrob1``, ``European Robin`` and
``erithacus rubecula`` name one class: users copy names from whichever table they have open.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

from streamer.errors import ConfigError

#: At most this many unknown names are shown, each with at most this many close ones.
SHOWN = 10


def named_classes(names: Sequence[str], classes: Sequence[tuple[str, ...]], where: str) -> list[int]:
    """Positions in ``classes`` (each a class's names) of the classes ``names`` name, in
    ``classes``' order, each once.

    Raises:
        ConfigError: a name that names no class (every such name, in one line).
    """
    index: dict[str, set[int]] = {}
    shown: dict[str, str] = {}  # a name in any case -> as the source writes it
    for i, own in enumerate(classes):
        for name in own:
            if name:
                index.setdefault(name.casefold(), set()).add(i)
                shown.setdefault(name.casefold(), name)
    wanted = [name.strip() for name in names]
    unknown = [name for name in dict.fromkeys(wanted) if name.casefold() not in index]
    if unknown:
        hints = []
        for name in unknown[:SHOWN]:
            close = difflib.get_close_matches(name.casefold(), list(shown), n=SHOWN, cutoff=0.6)
            hints.append(f"--class {name!r}: no such class in {where} "
                         + (f"(closest: {', '.join(repr(shown[c]) for c in close)})" if close
                            else f"(nothing close among its {len(classes)} classes)"))
        more = f"; and {len(unknown) - SHOWN} more" if len(unknown) > SHOWN else ""
        raise ConfigError("; ".join(hints) + more)
    return sorted(set().union(*(index[name.casefold()] for name in wanted)))
