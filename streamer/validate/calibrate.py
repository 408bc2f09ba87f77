"""``streamer recipe calibrate``: the reference a rank blend ranks against.

A rank blend (``[blend] space = "rank"``) turns each member's score of a class into its
percentile among that member's scores of the class on reference audio, then averages the
percentiles. Published BirdCLEF solutions rank over the whole test set at the end of a run; a
streaming engine writes rows before the test set is complete (and the archive never has a
whole), so streamer ranks against a fixed reference instead: the member's own scores on the
cached training soundscapes. With a test set distributed like the reference the two agree.

The reference stores ``Q`` quantiles per member and class (by default 1001, a percentile
resolution of 0.1 %), computed over every cached window.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from streamer.errors import ConfigError

DEFAULT_QUANTILES = 1001


def calibrate(cache, out: str | Path, *, n_quantiles: int = DEFAULT_QUANTILES, source: str = "") -> dict:
    """Write the rank reference of every member of ``cache`` (a
    :class:`~streamer.validate.cache.ModelCache`) to ``out``; returns its header.

    With fewer cached windows than ``n_quantiles``, one quantile per window is kept.

    Raises:
        ConfigError: fewer than 2 quantiles asked.
    """
    from streamer.recipes.bind import write_reference

    if n_quantiles < 2:
        raise ConfigError(f"--quantiles must be >= 2, got {n_quantiles}")
    n_windows = len(cache.stems) * next(iter(cache.logits.values())).shape[1]
    # More quantiles than windows only interpolates between the windows' own scores.
    n_quantiles = max(2, min(n_quantiles, n_windows))
    grid = np.linspace(0.0, 1.0, n_quantiles)
    quantiles = {}
    for name, logits in sorted(cache.logits.items()):
        flat = np.asarray(logits, dtype=np.float64).reshape(-1, logits.shape[-1])
        quantiles[name] = np.quantile(flat, grid, axis=0).T  # [C, Q]
    info = {"n_windows": n_windows, "n_quantiles": n_quantiles, "source": source,
            "cache_dependencies": {k: v.get("sha256") for k, v in cache.dependencies.items()}}
    write_reference(Path(out), quantiles, tuple(cache.classes), info)
    return dict(info, members=sorted(quantiles))
