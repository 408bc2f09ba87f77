"""Tuned layout profiles: written by ``streamer tune``, read by ``streamer infer``.

A profile records the machine it was measured on. ``infer`` uses it only on a machine with the
same fingerprint (CPU model, usable CPUs, memory); elsewhere it is ignored with a note, since a
layout tuned for 2 vCPUs says nothing about 64 cores.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from streamer.errors import ConfigError
from streamer.files import atomic_write_text

log = logging.getLogger(__name__)

PROFILE_FORMAT = 1
PROFILE_NAME = "profile.json"


def machine_fingerprint() -> dict:
    """What identifies a machine for tuning purposes."""
    from streamer.pipeline.layout import available_cpus

    cpu_model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import psutil

        memory_gb = round(psutil.virtual_memory().total / 2**30)
    except Exception:  # psutil unavailable: memory is then not part of the identity
        memory_gb = None
    return {"cpu_model": cpu_model, "n_cpus": len(available_cpus()), "memory_gb": memory_gb}


@dataclass(frozen=True)
class TunedLayout:
    workers: int
    threads: int
    decoders: int
    allow_spinning: bool = False
    backend: str = "onnxruntime"
    precision: str = "fp32"

    def describe(self) -> str:
        spin = ", spinning on" if self.allow_spinning else ""
        return (f"{self.workers} consumer(s) x {self.threads} thread(s), {self.decoders} decoder(s){spin}, "
                f"{self.backend} {self.precision}")


def default_profile_path() -> Path:
    from streamer.config import default_cache_dir

    return default_cache_dir() / PROFILE_NAME


def profile_backend(execution) -> tuple[str | None, str | None]:
    """The (backend, precision) a tuned profile measured, for ``--backend auto`` and an unset
    ``--precision``; ``(None, None)`` without a profile for this machine."""
    if not execution.use_profile:
        return None, None
    path = execution.profile if execution.profile is not None else default_profile_path()
    layout = load_profile(path, required=execution.profile is not None, quiet=True)
    return (layout.backend, layout.precision) if layout is not None else (None, None)


def save_profile(path: Path, layout: TunedLayout, measurements: list[dict], note: str = "") -> Path:
    """Write a profile atomically."""
    doc = {
        "streamer_profile": PROFILE_FORMAT,
        "machine": machine_fingerprint(),
        "layout": asdict(layout),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "note": note,
        "measurements": measurements,
    }
    return atomic_write_text(path, json.dumps(doc, indent=2) + "\n")


def load_profile(path: Path, *, required: bool, quiet: bool = False) -> TunedLayout | None:
    """The profile's layout if it was measured on this machine, else ``None`` (with a note).

    Args:
        path: the profile file.
        required: the user named it (a missing or unreadable file is then an error).
    """
    path = Path(path)
    if not path.is_file():
        if required:
            raise ConfigError(f"{path}: profile not found")
        return None
    try:
        doc = json.loads(path.read_text())
        if doc.get("streamer_profile") != PROFILE_FORMAT:
            raise ValueError(f"unknown profile format {doc.get('streamer_profile')!r}")
        layout = TunedLayout(**doc["layout"])
        machine = doc["machine"]
    except (ValueError, KeyError, TypeError) as exc:
        if required:
            raise ConfigError(f"{path}: not a streamer profile ({exc})") from exc
        log.warning("%s: ignoring an unreadable profile (%s)", path, exc)
        return None
    here = machine_fingerprint()
    if machine != here:
        if not quiet:
            log.info("profile %s was measured on another machine (%s); this one is %s: ignored", path, machine, here)
        return None
    if not quiet:
        log.info("using the tuned layout from %s: %s", path, layout.describe())
    return layout
