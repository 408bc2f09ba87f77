"""How often one unit of work (an ``infer`` file, an archive input or range) is tried.

``infer`` and ``archive`` share the rule, so a file that kills its worker or makes the models
raise is given up on after the same number of tries in every engine.
"""

from __future__ import annotations

#: Attempts (deaths of the child working on it, or failed calls in a sequential engine) before a
#: unit of work is given up: ``infer`` writes prior-only rows, ``archive`` reports it failed.
MAX_FILE_ATTEMPTS = 3
