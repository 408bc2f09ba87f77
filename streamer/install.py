"""What to tell a user to install: one place for every install hint.

The distribution is published as :data:`DIST_NAME`, not ``streamer``: that name belongs to an
unrelated package on the public index, so a hint naming it with an extra would install a
stranger's code. The import package and the command stay ``streamer``.

Most users run streamer from a checkout installed with ``pip install -e``; for them the hint
must be an editable install of that checkout (a plain ``pip install 'NAME[extra]'`` would pull
a second, released copy over it), so the hint depends on where the package was imported from.
"""

from __future__ import annotations

import shlex
from pathlib import Path

#: The distribution name (setup.cfg's ``[metadata] name``).
DIST_NAME = "birdclef-streamer"
#: PyTorch's CPU wheel index: the public index gives Linux x86-64 torch's CUDA build.
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
TORCH_PIN = "torch==2.13.0"


def checkout_root(package_dir: Path | None = None) -> Path | None:
    """The checkout the package runs from (a ``setup.cfg`` beside the package folder), or
    ``None`` when it is installed from a wheel."""
    package_dir = Path(package_dir) if package_dir is not None else Path(__file__).resolve().parent
    root = package_dir.parent
    return root if (root / "setup.cfg").is_file() else None


def _checkout_spec(root: Path, suffix: str = "") -> str:
    """``root`` as the user would type it: ``.`` when it is the working directory."""
    try:
        here = Path.cwd().resolve() == root.resolve()
    except OSError:
        here = False
    return shlex.quote(("." if here else str(root)) + suffix)


def install_hint(extra: str, *, package_dir: Path | None = None) -> str:
    """The command that installs ``extra``: an editable install of the checkout streamer
    runs from, else the released distribution with that extra."""
    root = checkout_root(package_dir)
    if root is not None:
        return f"pip install -e {_checkout_spec(root, f'[{extra}]')}"
    return f"pip install '{DIST_NAME}[{extra}]'"


def torch_hint(*, package_dir: Path | None = None) -> str:
    """The command that installs the CPU build of the pinned torch."""
    root = checkout_root(package_dir)
    if root is not None:
        return f"sh {_checkout_spec(root, '/bin/install-torch')}"
    return f"pip install {TORCH_PIN} --index-url {TORCH_CPU_INDEX}"
