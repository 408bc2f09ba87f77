"""``streamer kaggle-kit``: a folder to upload as a Kaggle dataset, for an offline notebook.

Kaggle scores notebooks without internet. The kit holds, in ``wheels/``, a wheel of streamer
and every wheel streamer needs that Kaggle's Python image does not ship (:data:`KAGGLE_HAS` lists
what the image is taken to have; ``--add`` and ``--drop`` change the list), downloaded for
Kaggle's Python version and platform, plus ``streamer-infer.ipynb``, a notebook (written with
nbformat) whose cells install streamer from the kit with ``pip --no-index``, find the
competition data, the Perch folder and the MoE bundle under ``/kaggle/input`` (naming what is
missing), install exactly the kit's wheels (``--no-deps``: whatever torch the image has is
used) and check that every module streamer imports is there, and run ``streamer infer`` with the model-card settings and the
budget, its progress, log and summary forwarded into the cell's output as they come (a run of
85 minutes must not look dead). The notebook's cells are plain Python (no ``!`` or ``%`` magics), so they also run as a
script, which is how the tests execute them.

Build it on a machine with internet, from a checkout of streamer (the wheel is built from the
source tree).
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from streamer.errors import ConfigError
from streamer.files import atomic_write_text
from streamer.install import DIST_NAME

log = logging.getLogger(__name__)

#: What Kaggle's Python image is taken to have already (its pip list): not put in the kit. The
#: large ones (torch, numpy, pandas, pyarrow) must match the image's own builds anyway.
KAGGLE_HAS = ("torch", "numpy", "pandas", "soundfile", "tqdm", "psutil", "pyarrow", "protobuf", "packaging",
              "sympy", "mpmath", "typing-extensions", "cffi", "pycparser", "filelock", "fsspec", "jinja2",
              "markupsafe", "networkx", "setuptools", "python-dateutil", "pytz", "tzdata", "six")
#: streamer's own requirements (setup.cfg's install_requires, names only).
STREAMER_NEEDS = ("numpy", "torch", "onnxruntime", "onnx", "soundfile", "soxr", "pandas", "tqdm", "psutil", "pyarrow")
#: Modules the notebook checks after installing the kit (import names of STREAMER_NEEDS).
IMPORT_NAMES = ("numpy", "torch", "onnxruntime", "onnx", "soundfile", "soxr", "pandas", "tqdm", "psutil", "pyarrow")
KAGGLE_PYTHON = "3.11"
#: Wheel platforms Kaggle's image runs (x86-64 Linux, glibc 2.35): every manylinux tag up to it.
KAGGLE_PLATFORMS = tuple(f"manylinux_2_{minor}_x86_64" for minor in range(35, 16, -1)) + ("manylinux2014_x86_64",)
NOTEBOOK_NAME = "streamer-infer.ipynb"
#: How streamer's own wheel is named (its distribution name, normalised as wheels spell it).
WHEEL_PREFIX = re.sub(r"[-.]+", "_", DIST_NAME)


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _wheel_project(path: Path) -> str:
    return _canonical(path.name.split("-")[0])


@dataclass
class KitReport:
    out: Path
    wheels: list[str]
    notebook: Path
    left_to_kaggle: list[str]


def source_tree() -> Path:
    """The checkout streamer runs from (the wheel is built from it)."""
    root = Path(__file__).resolve().parents[1]
    if not (root / "setup.cfg").is_file():
        raise ConfigError(f"{root}: not a checkout of streamer (no setup.cfg); run kaggle-kit from a clone")
    return root


def _pip(args: list[str]) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    log.info("running %s", " ".join(cmd))
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise ConfigError(f"pip failed ({' '.join(args[:2])}):\n{done.stderr.strip()[-2000:]}")


def build_kit(out: Path, *, python_version: str = KAGGLE_PYTHON, platforms: tuple[str, ...] = KAGGLE_PLATFORMS,
              add: tuple[str, ...] = (), drop: tuple[str, ...] = (), input_root: str = "/kaggle/input",
              working: str = "/kaggle/working", budget_minutes: float = 85.0) -> KitReport:
    """Write the kit into ``out`` (see the module notes)."""
    out = Path(out)
    wheels = out / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    has = {_canonical(n) for n in KAGGLE_HAS if _canonical(n) not in {_canonical(d) for d in drop}}
    needed = sorted({_canonical(n) for n in (*STREAMER_NEEDS, *add)} - has)
    with tempfile.TemporaryDirectory(prefix="streamer-kit-") as tmp:
        _pip(["wheel", "--no-deps", "--wheel-dir", tmp, str(source_tree())])
        if needed:
            platform_args = [arg for p in platforms for arg in ("--platform", p)]
            _pip(["download", "--only-binary=:all:", "--python-version", python_version, *platform_args,
                  "--implementation", "cp", "--dest", tmp, *needed])
        kept = []
        for path in sorted(Path(tmp).glob("*.whl")):
            if _wheel_project(path) in has:
                continue  # Kaggle's image has it
            shutil.copy2(path, wheels / path.name)
            kept.append(path.name)
    notebook = write_notebook(out / NOTEBOOK_NAME, input_root=input_root, working=working, budget_minutes=budget_minutes)
    atomic_write_text(out / "README.txt", _kit_readme(kept, sorted(has)))
    return KitReport(out, kept, notebook, sorted(has))


def _kit_readme(kept: list[str], has: list[str]) -> str:
    return (
        "streamer kit for an offline Kaggle notebook\n\n"
        "Upload this folder as a Kaggle dataset, attach it to the notebook together with the competition\n"
        "data, the Perch 2.0 ONNX folder and the MoE bundle, and run streamer-infer.ipynb.\n\n"
        "wheels/:\n" + "".join(f"  {w}\n" for w in kept)
        + "\ntaken from Kaggle's image (not in the kit): " + ", ".join(has) + "\n"
    )


_FIND = '''import codecs
import os
import subprocess
import sys
from pathlib import Path

INPUT = Path(os.environ.get("STREAMER_KAGGLE_INPUT", {input_root!r}))
WORKING = Path(os.environ.get("STREAMER_KAGGLE_WORKING", {working!r}))
BUDGET_MINUTES = float(os.environ.get("STREAMER_BUDGET_MINUTES", {budget!r}))


def find(what, test):
    """The one folder under INPUT that passes test(folder), else a clear error."""
    found = sorted(p for p in INPUT.rglob("*") if p.is_dir() and test(p))
    if not found:
        raise SystemExit(f"no {{what}} under {{INPUT}}: attach it to the notebook (Add Input)")
    if len(found) > 1:
        print(f"several {{what}} folders under {{INPUT}}, using {{found[0]}}: {{[str(p) for p in found]}}")
    return found[0]


KIT = find("streamer kit (wheels/{wheel}-*.whl)", lambda p: any(p.glob("wheels/{wheel}-*.whl")))
COMPETITION = find("competition data (sample_submission.csv, taxonomy.csv)",
                   lambda p: (p / "sample_submission.csv").is_file() and (p / "taxonomy.csv").is_file())
PERCH = find("Perch 2.0 ONNX (perch_v2*.onnx)", lambda p: any(p.glob("perch_v2*.onnx")))
MOE = find("MoE bundle (*_fold1.pt)", lambda p: any(p.glob("*_fold1.pt")))
print(f"kit {{KIT}}\\ncompetition {{COMPETITION}}\\nPerch {{PERCH}}\\nMoE {{MOE}}")


def stream(cmd):
    """Run cmd, forwarding its output (stdout and stderr, progress bar included) to this
    cell's output as it comes: an 85-minute run must not look dead. Returns the exit code."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for chunk in iter(lambda: proc.stdout.read1(65536), b""):
        sys.stdout.write(decoder.decode(chunk))
        sys.stdout.flush()
    return proc.wait()
'''

_INSTALL = '''import importlib.util

# Exactly the kit's wheels, without resolving: the rest is Kaggle's own (whatever its torch version).
wheels = sorted(str(p) for p in (KIT / "wheels").glob("*.whl"))
code = stream([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", *wheels])
if code != 0:
    raise SystemExit(f"pip could not install the kit's wheels (exit code {{code}})")
missing = [m for m in {needs!r} if importlib.util.find_spec(m) is None]
if missing:
    raise SystemExit(f"this image lacks {{missing}}: rebuild the kit with --add for each")
print(subprocess.run([sys.executable, "-m", "streamer", "--version"], check=True, capture_output=True, text=True).stdout)
'''

_RUN = '''OUT = WORKING / "submission.csv"
# Progress, log and the closing summary appear below as the run goes.
code = stream([sys.executable, "-m", "streamer", "infer", "--data-dir", str(COMPETITION), "--perch", str(PERCH),
               "--moe-dir", str(MOE), "--out", str(OUT), "--budget-minutes", str(BUDGET_MINUTES),
               "--report-json", str(WORKING / "streamer-report.json")])
if not OUT.is_file():
    raise SystemExit(f"streamer infer wrote no submission (exit code {{code}})")
print(f"exit code {{code}}; {{OUT}} has {{sum(1 for _ in open(OUT)) - 1}} rows")
'''


def write_notebook(path: Path, *, input_root: str = "/kaggle/input", working: str = "/kaggle/working",
                   budget_minutes: float = 85.0) -> Path:
    """The notebook (see the module notes), written with nbformat."""
    try:
        import nbformat
        from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook
    except ImportError as exc:
        from streamer.install import install_hint
        raise ConfigError(f"kaggle-kit writes the notebook with nbformat: {install_hint('kaggle')} (or pip install nbformat)") from exc
    cells = [
        new_markdown_cell(
            "# BirdCLEF+ 2026 submission with streamer\n\n"
            "Attach four inputs: the competition data, the Perch 2.0 ONNX folder, the MoE bundle and the "
            "streamer kit. The cells below find them under `/kaggle/input`, install streamer from the kit "
            "without internet, and run `streamer infer` with the model-card settings; the budget keeps the "
            "run inside Kaggle's limit and always leaves a complete `submission.csv`."),
        new_code_cell(_FIND.format(input_root=input_root, working=working, budget=str(budget_minutes), wheel=WHEEL_PREFIX)),
        new_code_cell(_INSTALL.format(needs=IMPORT_NAMES)),
        new_code_cell(_RUN.format()),
    ]
    notebook = new_notebook(cells=cells, metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"},
    })
    nbformat.validate(notebook)
    atomic_write_text(path, nbformat.writes(notebook))
    return Path(path)


def notebook_script(path: Path) -> str:
    """The notebook's code cells as one script (how the tests run it outside Jupyter)."""
    import nbformat

    notebook = nbformat.read(str(path), as_version=4)
    return "\n\n".join(cell.source for cell in notebook.cells if cell.cell_type == "code")
