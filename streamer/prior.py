"""The site/hour prior: label frequencies by site and by hour, shrunk to the global rate.

Pure numpy. Fitted from a label matrix; :func:`fit_prior` takes any subset of labelled files,
which the local-validation sweep uses to fit the tables out of fold.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from streamer.metadata import parse_hour, parse_site

#: Probability clip of every table and of the combined prior.
PRIOR_EPS = 1e-4
#: Pseudo-count of the shrinkage ``w = n / (n + 8)``.
PRIOR_SHRINK_WINDOWS = 8.0


@dataclass(frozen=True)
class PriorTables:
    """Fitted tables. Vectors are float64 ``[n_classes]`` in class-column order.

    Attributes:
        global_rate: label frequency over all labelled windows.
        site_rates: per site: (rate vector, window count).
        hour_rates: per UTC hour: (rate vector, window count).
        shrink_windows: the pseudo-count of the shrinkage ``w = n / (n + shrink_windows)``.
        eps: the probability clip of the combined prior.
    """

    global_rate: np.ndarray
    site_rates: dict[str, tuple[np.ndarray, int]] = field(default_factory=dict)
    hour_rates: dict[int, tuple[np.ndarray, int]] = field(default_factory=dict)
    shrink_windows: float = PRIOR_SHRINK_WINDOWS
    eps: float = PRIOR_EPS

    @property
    def n_classes(self) -> int:
        return int(self.global_rate.shape[0])

    def probability(self, site: str, hour: int) -> np.ndarray:
        """Prior probability ``[n_classes]`` (float64) for a file's site and hour."""
        p = self.global_rate.copy()
        if site in self.site_rates:
            rate, n = self.site_rates[site]
            w = n / (n + self.shrink_windows)
            p = (1.0 - w) * p + w * rate
        if hour in self.hour_rates:
            rate, n = self.hour_rates[hour]
            w = n / (n + self.shrink_windows)
            p = (1.0 - w) * p + w * rate
        return np.clip(p, self.eps, 1.0 - self.eps)

    def logit(self, site: str, hour: int) -> np.ndarray:
        """``log p − log(1 − p)`` of :meth:`probability` (float64 ``[n_classes]``)."""
        p = self.probability(site, hour)
        return np.log(p) - np.log1p(-p)

    def for_stem(self, stem: str) -> np.ndarray:
        """Prior logit of a file, from its name (unknown site / hour 0 when unparsable)."""
        return self.logit(parse_site(stem), parse_hour(stem))


def _clipped_mean(windows: np.ndarray, eps: float) -> np.ndarray:
    return np.clip(windows.mean(axis=0, dtype=np.float64), eps, 1.0 - eps)


def fit_prior(labels: np.ndarray, stems: tuple[str, ...] | list[str], *, shrink_windows: float = PRIOR_SHRINK_WINDOWS,
              eps: float = PRIOR_EPS) -> PriorTables:
    """Fit the tables from a label matrix.

    Args:
        labels: bool or {0,1} ``[n_files, n_windows, n_classes]``.
        stems: file stems aligned with ``labels`` (their names give site and hour).
        shrink_windows, eps: the shrinkage pseudo-count and the probability clip (a recipe's
            ``[prior]``).

    With no labelled file at all the global rate is the clip floor, so the prior is flat and
    changes no ranking.
    """
    labels = np.asarray(labels)
    n_files, n_windows, n_classes = labels.shape
    if len(stems) != n_files:
        raise ValueError(f"{len(stems)} stems for {n_files} labelled files")
    if n_files == 0:
        return PriorTables(global_rate=np.full(n_classes, eps), shrink_windows=shrink_windows, eps=eps)
    flat = labels.reshape(n_files * n_windows, n_classes).astype(np.float64)
    sites = np.repeat([parse_site(s) for s in stems], n_windows)
    hours = np.repeat([parse_hour(s) for s in stems], n_windows)
    site_rates = {}
    for site in sorted(set(sites.tolist())):
        mask = sites == site
        site_rates[site] = (_clipped_mean(flat[mask], eps), int(mask.sum()))
    hour_rates = {}
    for hour in sorted(set(hours.tolist())):
        mask = hours == hour
        hour_rates[int(hour)] = (_clipped_mean(flat[mask], eps), int(mask.sum()))
    return PriorTables(global_rate=_clipped_mean(flat, eps), site_rates=site_rates, hour_rates=hour_rates,
                       shrink_windows=shrink_windows, eps=eps)
