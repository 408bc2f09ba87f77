"""Planning processes and threads from the CPUs this process may use.

CPUs are counted with ``os.sched_getaffinity(0)`` (what a container or ``taskset`` grants),
never ``os.cpu_count()`` (the whole host).

The automatic layout gives one consumer per *physical core*, with as many threads as the core
has logical CPUs, when the topology shows hyper-threading. Where it shows none (typical of cloud
VMs, whose vCPUs may be hyper-threads of the host's cores although the guest cannot tell), each
logical CPU gets its own single-threaded consumer: no intra-op thread then waits for another
that the host or a decoder has preempted. That layout was measured fastest on 2-vCPU Intel Xeon
and AMD EPYC VMs (``streamer bench``); ``streamer tune`` measures the machine at hand and
overrides it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

from streamer.errors import ConfigError

#: Most consumers the automatic layout starts: each holds its own copy of Perch (~0.4 GB of
#: weights plus onnxruntime's buffers), and beyond this more threads per process pay better.
MAX_AUTO_WORKERS = 8
#: Resident memory assumed per consumer when capping the automatic worker count (bytes).
#: Measured with the 135 MB B3 Perch stand-in and the students in onnxruntime: 380 MB at peak
#: over 48 files (``--report-json``); the real 409 MB Perch adds its larger weights, about
#: 0.65 GB in all; this keeps a margin above that.
CONSUMER_MEMORY_BYTES = int(0.8 * 2**30)
#: One decoder per this many CPUs: Vorbis decoding runs at ~1,500x real time per core, so it
#: is a few percent of the models' cost.
CPUS_PER_DECODER = 8


def available_cpus() -> tuple[int, ...]:
    """The CPU ids this process may run on."""
    try:
        return tuple(sorted(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return tuple(range(os.cpu_count() or 1))


def _siblings(cpu: int) -> tuple[int, ...] | None:
    """The logical CPUs sharing ``cpu``'s physical core (from sysfs), or None when unknown."""
    try:
        with open(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list") as handle:
            text = handle.read().strip()
    except OSError:
        return None
    ids: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        ids.extend(range(int(lo), int(hi or lo) + 1))
    return tuple(ids)


def core_groups(cpus: tuple[int, ...]) -> tuple[tuple[int, ...], ...] | None:
    """``cpus`` grouped by physical core (siblings need not have adjacent ids: many machines
    number them 0 and n/2), in order of each core's first CPU; None when unknown."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for cpu in cpus:
        siblings = _siblings(cpu)
        if siblings is None:
            return None
        groups.setdefault(siblings, []).append(cpu)
    return tuple(sorted(tuple(sorted(g)) for g in groups.values()))


def smt_width(cpus: tuple[int, ...]) -> int:
    """Logical CPUs per physical core among ``cpus`` (from sysfs), or 0 when unknown."""
    groups = core_groups(cpus)
    return min(len(g) for g in groups) if groups else 0


def threads_per_core(cpus: tuple[int, ...]) -> int:
    """Threads to give each consumer: the SMT width when visible, else 1."""
    return max(1, min(smt_width(cpus), len(cpus)))


def _available_memory() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # psutil missing or unsupported platform: no memory cap
        return None


@dataclass(frozen=True)
class Layout:
    """Processes and threads of one run.

    Attributes:
        n_workers: consumer (model) processes.
        threads: intra-op threads per consumer; ``None`` leaves the libraries' defaults.
        n_decoders: decoder processes.
        worker_cpus: CPU set of each consumer (empty: not pinned).
        cpus: the CPUs available.
    """

    n_workers: int
    threads: int | None
    n_decoders: int
    worker_cpus: tuple[tuple[int, ...], ...]
    cpus: tuple[int, ...]

    def describe(self) -> str:
        threads = "library default" if self.threads is None else str(self.threads)
        pinned = "pinned" if any(self.worker_cpus) else "not pinned"
        return (
            f"{self.n_workers} consumer(s) x {threads} thread(s), {pinned}; {self.n_decoders} decoder(s); "
            f"{len(self.cpus)} CPU(s) available"
        )


def plan_layout(
    *,
    workers: int | None = None,
    threads: int | str = "auto",
    decoders: int | None = None,
    pin: bool = True,
    n_files: int | None = None,
    cpus: tuple[int, ...] | None = None,
    memory_bytes: int | None = None,
) -> Layout:
    """Plan the pipeline's layout; explicit values win over the automatic choice.

    Args:
        workers: consumers, or ``None`` for one per physical core (see the module notes;
            capped by memory, files and :data:`MAX_AUTO_WORKERS`).
        threads: threads per consumer: a number, ``"auto"`` (the CPUs divided among the
            consumers, at least one) or ``"default"`` (library defaults, no pinning).
        decoders: decoder processes, or ``None`` for one per :data:`CPUS_PER_DECODER` CPUs.
        pin: pin consumers to disjoint CPU sets (when threads are set).
        n_files: files to score (no more consumers than files).
        cpus: CPUs to plan for (default: this process's affinity).
        memory_bytes: memory available (default: measured).
    """
    cpus = tuple(cpus) if cpus is not None else available_cpus()
    n_cpus = len(cpus)
    if threads not in ("auto", "default") and not (isinstance(threads, int) and threads >= 1):
        raise ConfigError(f"threads must be a positive integer, 'auto' or 'default', got {threads!r}")
    if workers is None:
        per_worker = threads if isinstance(threads, int) else threads_per_core(cpus)
        n_workers = max(1, min(MAX_AUTO_WORKERS, n_cpus // per_worker))
        memory = memory_bytes if memory_bytes is not None else _available_memory()
        if memory is not None:
            n_workers = max(1, min(n_workers, memory // CONSUMER_MEMORY_BYTES))
        if n_files is not None:
            n_workers = max(1, min(n_workers, n_files))
    else:
        n_workers = int(workers)
    if threads == "default":
        n_threads = None
    elif threads == "auto":
        n_threads = max(1, n_cpus // n_workers)
    else:
        n_threads = int(threads)
    n_decoders = int(decoders) if decoders is not None else max(1, n_cpus // CPUS_PER_DECODER)
    groups = core_groups(cpus) if pin and n_threads is not None and n_cpus > 0 else None
    if groups and n_threads > 1 and n_workers <= len(groups) and all(len(g) == n_threads for g in groups):
        worker_cpus = groups[:n_workers]  # one consumer per physical core, on its siblings
    elif pin and n_threads is not None and n_cpus > 0:
        worker_cpus = tuple(
            tuple(sorted({cpus[(w * n_threads + k) % n_cpus] for k in range(n_threads)})) for w in range(n_workers)
        )
    else:
        worker_cpus = tuple(() for _ in range(n_workers))
    return Layout(n_workers=n_workers, threads=n_threads, n_decoders=n_decoders, worker_cpus=worker_cpus, cpus=cpus)


def sequential_threads(threads: int | str, cpus: tuple[int, ...] | None = None) -> int | None:
    """Intra-op threads of the single-process engine: ``auto`` uses every available CPU."""
    if threads == "default":
        return None
    if threads == "auto":
        return len(cpus if cpus is not None else available_cpus())
    return int(threads)


def with_threads(spec, threads: int | None):
    """The model spec with this layout's thread count (any spec whose ``threads`` is a
    :class:`~streamer.models.graphs.ThreadSettings`)."""
    return replace(spec, threads=replace(spec.threads, intra_op_threads=threads))
