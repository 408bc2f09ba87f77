"""Dumps what BirdNET-Analyzer 2.4.0's command line cannot write without extra packages, using
the peer's own functions (run it with the peer's venv python; see setup_peer.sh):

    PEER_PY peer_extras.py embeddings OUT_DIR AUDIO [AUDIO ...] [--max-windows N]
    PEER_PY peer_extras.py range OUT_FILE LAT LON WEEK
    PEER_PY peer_extras.py versions OUT_FILE

``embeddings``: the peer's ``embeddings`` command needs perch-hoplite (its ``embeddings`` extra)
and writes into a perch-hoplite database. This calls the function that command calls,
``birdnet_analyzer.analyze.utils.iterate_audio_chunks(path, embeddings=True)``, with the
configuration that ``birdnet_analyzer.embeddings.utils.extract_embeddings`` sets (overlap 0,
audio speed 1, bandpass 0-15000 Hz, so no filter) except the batch size, which is 1 here as in
``analyze`` (the embeddings command's default is 8). It writes, per audio file,
``<stem>.embeddings.npy`` (float32, windows x 1024, the first N windows) and
``<stem>.embeddings.csv`` (``start,end`` as the peer yields them: seconds rounded to 2 decimals,
written with Python's str()).

``range``: the range ("meta-data") model's scores behind the peer's ``species`` command:
``birdnet_analyzer.model.explore(lat, lon, week)`` (scores below the 0.03 threshold set to 0,
sorted by score, descending, stable), written as ``label<TAB>score`` (score with repr() of
the float32 as float) for the species the ``species`` command lists (score >= 0.03).

``versions``: versions of the peer and of the packages that shape its numbers, and which
TFLite interpreter module the peer uses.
"""

from __future__ import annotations

import os
import sys


def _peer_config(threads: int = 1):
    import birdnet_analyzer.config as cfg
    from birdnet_analyzer.utils import check_birdnet_files, read_lines

    # Never let the peer download anything: its model must already be in place (setup_peer.sh).
    if not check_birdnet_files():
        sys.exit("the peer's model files are missing: run benchmarks/birdnet_peer/setup_peer.sh")
    cfg.MODEL_PATH = cfg.BIRDNET_MODEL_PATH
    cfg.LABELS_FILE = cfg.BIRDNET_LABELS_FILE
    cfg.SAMPLE_RATE = cfg.BIRDNET_SAMPLE_RATE
    cfg.SIG_LENGTH = cfg.BIRDNET_SIG_LENGTH
    cfg.LABELS = read_lines(cfg.LABELS_FILE)
    cfg.SIG_OVERLAP = 0.0
    cfg.AUDIO_SPEED = 1.0
    cfg.BANDPASS_FMIN = 0
    cfg.BANDPASS_FMAX = 15000
    cfg.CPU_THREADS = 1
    cfg.TFLITE_THREADS = threads
    cfg.BATCH_SIZE = 1
    return cfg


def embeddings(out_dir: str, paths: list[str], max_windows: int) -> None:
    import numpy as np

    _peer_config()
    from birdnet_analyzer import model
    from birdnet_analyzer.analyze.utils import iterate_audio_chunks

    os.makedirs(out_dir, exist_ok=True)
    for path in paths:
        rows, times = [], []
        for s_start, s_end, emb in iterate_audio_chunks(path, embeddings=True):
            rows.append(np.asarray(emb, dtype=np.float32))
            times.append((s_start, s_end))
            if len(rows) == max_windows:
                break
        stem = os.path.basename(path).rsplit(".", 1)[0]
        arr = np.stack(rows)
        assert arr.shape[1] == 1024, arr.shape
        np.save(os.path.join(out_dir, stem + ".embeddings.npy"), arr)
        with open(os.path.join(out_dir, stem + ".embeddings.csv"), "w", encoding="utf-8") as f:
            f.write("start,end\n")
            f.writelines(f"{s},{e}\n" for s, e in times)
        print(f"{stem}: {arr.shape[0]} windows x {arr.shape[1]}")

    # Which tensor the peer reads (load_model(False) takes the output index minus 1).
    details = {d["index"]: d for d in model.INTERPRETER.get_tensor_details()}
    d = details[model.OUTPUT_LAYER_INDEX]
    print(f"embedding tensor: index {d['index']} name {d['name']!r} shape {list(d['shape'])}")


def range_scores(out_file: str, lat: float, lon: float, week: int) -> None:
    cfg = _peer_config()
    from birdnet_analyzer import model

    cfg.LOCATION_FILTER_THRESHOLD = 0.03
    pred = model.explore(lat, lon, week)
    with open(out_file, "w", encoding="utf-8") as f:
        f.writelines(f"{label}\t{float(score)!r}\n" for score, label in pred if score >= 0.03)


def versions(out_file: str) -> None:
    import importlib.metadata as md
    import platform

    import soundfile

    from birdnet_analyzer import model

    lines = [f"python {platform.python_version()}"]
    for name in ("birdnet-analyzer", "tensorflow", "keras", "librosa", "resampy", "numba", "numpy", "scipy", "soundfile"):
        lines.append(f"{name} {md.version(name)}")
    lines.append(f"libsndfile {soundfile.__libsndfile_version__}")
    lines.append(f"tflite interpreter module {model.tflite.__name__}")
    with open(out_file, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["embeddings"] and len(args) >= 3:
        n = 20
        if "--max-windows" in args:
            i = args.index("--max-windows")
            n = int(args[i + 1])
            del args[i : i + 2]
        embeddings(args[1], args[2:], n)
    elif args[:1] == ["range"] and len(args) == 5:
        range_scores(args[1], float(args[2]), float(args[3]), int(args[4]))
    elif args[:1] == ["versions"] and len(args) == 2:
        versions(args[1])
    else:
        sys.exit(__doc__)
