"""`streamer kaggle-kit`: the kit installs without an index into a fresh environment that has only
what Kaggle's image has, and its notebook, run as it is, writes a valid submission from inputs
laid out as Kaggle lays them out."""

import os
import shutil
import subprocess
import sys

import nbformat
import pandas as pd
import pytest

from streamer import cli
from streamer.kaggle import NOTEBOOK_NAME, WHEEL_PREFIX, notebook_script

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

#: A stand-in for Kaggle's image: what KAGGLE_HAS documents, from the package registry.
IMAGE = ["torch==2.13.0", "numpy", "pandas", "soundfile", "tqdm", "psutil", "pyarrow", "protobuf", "packaging", "sympy",
         "typing-extensions"]


def test_the_kit_installs_offline_and_its_notebook_writes_a_submission(kit, tmp_path):
    out = tmp_path / "kit"
    assert cli.main(["kaggle-kit", "--out", str(out)]) == 0
    wheels = sorted(p.name for p in (out / "wheels").glob("*.whl"))
    assert any(w.startswith(WHEEL_PREFIX + "-") for w in wheels) and any(w.startswith("onnxruntime-") for w in wheels)
    assert not any(w.startswith(("torch-", "numpy-", "pandas-")) for w in wheels)  # Kaggle has those
    nbformat.validate(nbformat.read(str(out / NOTEBOOK_NAME), as_version=4))

    # Kaggle's /kaggle/input, with the stand-in artifacts under the real datasets' names.
    inputs = tmp_path / "input"
    shutil.copytree(out, inputs / "streamer-kit")
    shutil.copytree(kit.data_dir, inputs / "birdclef-2026")
    shutil.copytree(kit.perch_onnx.parent, inputs / "perch-v2-onnx")
    shutil.copytree(kit.moe_dir, inputs / "chaneyma-moe")
    working = tmp_path / "working"
    working.mkdir()

    venv = tmp_path / "image"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    subprocess.run([python, "-m", "pip", "install", "--quiet", *IMAGE], check=True)
    script = tmp_path / "notebook.py"
    script.write_text(notebook_script(out / NOTEBOOK_NAME))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STREAMER_", "PYTHONPATH", "VIRTUAL_ENV"))}
    env.update(STREAMER_KAGGLE_INPUT=str(inputs), STREAMER_KAGGLE_WORKING=str(working), STREAMER_BUDGET_MINUTES="10",
               PIP_NO_INDEX="1", STREAMER_CACHE=str(tmp_path / "cache"))
    run = subprocess.run([python, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "exit code 0" in run.stdout and "wrote " in run.stdout
    submission = pd.read_csv(working / "submission.csv")
    sample = pd.read_csv(kit.data_dir / "sample_submission.csv")
    n_files = len(list((kit.data_dir / "test_soundscapes").iterdir()))
    assert list(submission.columns) == list(sample.columns) and len(submission) == 12 * n_files
    assert submission.iloc[:, 1:].notna().all().all()


def test_the_notebook_names_what_is_missing(tmp_path):
    from streamer.kaggle import write_notebook

    path = write_notebook(tmp_path / NOTEBOOK_NAME)
    (tmp_path / "input").mkdir()
    env = {**os.environ, "STREAMER_KAGGLE_INPUT": str(tmp_path / "input"), "STREAMER_KAGGLE_WORKING": str(tmp_path)}
    run = subprocess.run([sys.executable, "-c", notebook_script(path)], env=env, capture_output=True, text=True)
    assert run.returncode != 0 and "no streamer kit" in run.stderr and "attach it to the notebook" in run.stderr
