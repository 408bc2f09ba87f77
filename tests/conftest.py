"""Shared fixtures: one stand-in kit per test session (built once, a few seconds)."""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

REAL_AUDIO = Path(__file__).resolve().parents[1] / "streamer" / "data" / "audio"

# Tests never see the user's cache (a tuned profile there would change the layouts under test);
# set before anything runs, so child processes inherit it too.
os.environ["STREAMER_CACHE"] = tempfile.mkdtemp(prefix="streamer-test-cache-")


@pytest.fixture(scope="session")
def kit(tmp_path_factory):
    from streamer.standins import make_standins

    return make_standins(tmp_path_factory.mktemp("kit"), seed=0)


@pytest.fixture
def kit_copy(kit, tmp_path):
    """A private copy of the kit's MoE folder and competition folder (for tests that edit them);
    the Perch files are shared read-only."""
    from streamer.standins import StandinKit

    moe = tmp_path / "moe"
    data = tmp_path / "competition"
    shutil.copytree(kit.moe_dir, moe)
    shutil.copytree(kit.data_dir, data)
    return StandinKit(root=tmp_path, perch_onnx=kit.perch_onnx, perch_labels=kit.perch_labels, moe_dir=moe, data_dir=data)


def infer_args(kit, out, *extra):
    return [
        "infer",
        "--data-dir", str(kit.data_dir),
        "--perch", str(kit.perch_onnx),
        "--moe-dir", str(kit.moe_dir),
        "--out", str(out),
        *extra,
    ]
