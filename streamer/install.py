"""How to install an optional extra of streamer: the one place every hint comes from.

From a checkout (the package sits beside its ``pyproject.toml``), the hint is an editable
install of that checkout with the extra; otherwise the distribution with the extra. Renaming the
distribution is a change to :data:`DISTRIBUTION` alone.
"""

from __future__ import annotations

from pathlib import Path

#: The distribution's name on the package index (the import package and the command are
#: ``streamer`` whatever it is).
DISTRIBUTION = "streamer"


def checkout_root() -> Path | None:
    """The checkout streamer runs from (the folder holding its ``pyproject.toml``), or None for
    an installed wheel."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").is_file() else None


def install_extra_command(extra: str) -> str:
    """The pip command that installs ``extra`` (e.g. ``openvino``) for this streamer."""
    root = checkout_root()
    if root is None:
        return f"pip install '{DISTRIBUTION}[{extra}]'"
    here = Path.cwd().resolve()
    return f'pip install -e ".[{extra}]"' if root == here else f'pip install -e "{root}[{extra}]"'
