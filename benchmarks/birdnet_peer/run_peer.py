"""Times BirdNET-Analyzer 2.4.0 ("the peer") on a folder of recordings, for the speed benchmark.

    python benchmarks/birdnet_peer/run_peer.py --venv DIR --threads N INPUT_FOLDER OUT_FOLDER

Runs the peer's analyze command line in a subprocess with its default settings (min_conf 0.25,
sensitivity 1.0, overlap 0, no location filter, batch size 1) and result types table + csv:

    DIR/bin/python -m birdnet_analyzer.analyze INPUT_FOLDER -o OUT_FOLDER --threads N --rtype table csv

and prints one JSON line:

    {"wall_s", "cpu_s", "audio_s", "rtf", "peak_rss_mb", "threads", "files", "peer_version"}

* wall_s: wall-clock seconds of the subprocess (start-up, model load and numba's compilation of
  resampy included: the peer pays them on every run);
* cpu_s: user + system CPU seconds of all its descendants (resource.getrusage(RUSAGE_CHILDREN),
  after minus before);
* peak_rss_mb: ru_maxrss of the children, i.e. the peak resident set of the largest single
  process (the peer's main process or one of its pool workers), in MiB;
* audio_s: seconds of audio in the files the peer analyses (its extensions, recursively, no
  dot files), from soundfile's header info; rtf = audio_s / wall_s (higher is faster);
* peer_version: from the installed distribution's metadata (the package's own __version__
  says "2.3.0" in the 2.4.0 wheel).

How the peer uses N threads on a folder: N worker processes (multiprocessing.Pool), one file per
worker, each running TFLite with one thread; so a folder whose time is dominated by one long
file keeps about one core busy whatever N is. The peer's output goes to OUT_FOLDER/peer.log.
Any download attempt is made to fail (proxies pointing at a closed local port).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import subprocess
import sys
import time

# birdnet_analyzer.config.ALLOWED_FILETYPES in 2.4.0
PEER_EXTENSIONS = {"wav", "flac", "mp3", "ogg", "m4a", "wma", "aiff", "aif"}


def peer_files(folder: str) -> list[str]:
    """The files the peer's collect_audio_files() picks up."""
    out = []
    for root, _, names in os.walk(folder):
        for name in names:
            if not name.startswith(".") and name.rsplit(".", 1)[-1].lower() in PEER_EXTENSIONS:
                out.append(os.path.join(root, name))
    return sorted(out)


def audio_seconds(paths: list[str]) -> float:
    import soundfile as sf

    total = 0.0
    for p in paths:
        info = sf.info(p)
        total += info.frames / info.samplerate
    return total


def peer_version(venv: str) -> str:
    metas = glob.glob(os.path.join(venv, "lib", "python*", "site-packages", "birdnet_analyzer-*.dist-info", "METADATA"))
    if not metas:
        sys.exit(f"birdnet-analyzer is not installed in {venv}: run benchmarks/birdnet_peer/setup_peer.sh")
    with open(metas[0], encoding="utf-8") as f:
        for line in f:
            if line.startswith("Version:"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--venv", required=True, help="the peer's venv (setup_peer.sh)")
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("input_folder")
    ap.add_argument("out_folder")
    args = ap.parse_args()

    files = peer_files(args.input_folder)
    if not files:
        sys.exit(f"no audio file the peer would read in {args.input_folder}")
    audio_s = audio_seconds(files)
    version = peer_version(args.venv)
    os.makedirs(args.out_folder, exist_ok=True)

    cmd = [
        os.path.join(args.venv, "bin", "python"), "-m", "birdnet_analyzer.analyze",
        args.input_folder, "-o", args.out_folder, "--threads", str(args.threads), "--rtype", "table", "csv",
    ]
    env = dict(os.environ)
    env.update({k: "http://127.0.0.1:9" for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")})
    env.update({"NO_PROXY": "", "no_proxy": ""})

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with open(os.path.join(args.out_folder, "peer.log"), "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, check=False)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"the peer failed (exit {proc.returncode}); see {os.path.join(args.out_folder, 'peer.log')}")

    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(json.dumps({
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "audio_s": round(audio_s, 3),
        "rtf": round(audio_s / wall, 2),
        "peak_rss_mb": round(after.ru_maxrss / 1024.0, 1),  # Linux: KiB
        "threads": args.threads,
        "files": len(files),
        "peer_version": version,
    }))


if __name__ == "__main__":
    main()
