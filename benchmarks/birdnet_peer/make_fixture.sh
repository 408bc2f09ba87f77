#!/usr/bin/env bash
# Regenerates tests/data/birdnet_peer/ (the outputs of BirdNET-Analyzer 2.4.0, "the peer") from
# the peer's own command line, in the venv that setup_peer.sh builds.
#
#   benchmarks/birdnet_peer/make_fixture.sh [PEER_VENV]     (default /work/peer-venv)
#
# The peer writes absolute paths of its inputs into its tables (Raven "Begin Path", csv "File",
# Kaleidoscope "INDIR"/"FOLDER"/"IN FILE"). So that a re-run gives the same bytes wherever the
# repository lives, the inputs are staged under the fixed folder STAGE (default
# /tmp/birdnet_peer_fixture; it is emptied first) and the peer reads them from $STAGE/audio.
# Every run uses one thread (--threads 1 on a folder: files one after another, TFLite with one
# thread). Any download attempt is made to fail (proxies pointing at a closed local port).
set -euo pipefail

VENV=${1:-/work/peer-venv}
PY="$VENV/bin/python"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
DEST="$REPO/tests/data/birdnet_peer"
STAGE=${STAGE:-/tmp/birdnet_peer_fixture}
IN="$STAGE/audio"
OUT="$STAGE/out"

export HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 http_proxy=http://127.0.0.1:9 https_proxy=http://127.0.0.1:9 NO_PROXY= no_proxy=
export PYTHONHASHSEED=0

rm -rf "$STAGE"
mkdir -p "$IN" "$OUT"

# The inputs: 5 committed recordings and 2 synthetic files (make_audio.py describes them all).
cp "$REPO/streamer/data/audio/birds_10s_32k.ogg" \
   "$REPO/streamer/data/audio/BC2026_Test_0002_S90_20190522_060000.ogg" \
   "$REPO/tests/data/audio/jura_dawn_44k1_stereo.flac" \
   "$REPO/tests/data/audio/jura_excerpt_48k.flac" \
   "$REPO/tests/data/audio/jura_S4A03895_20190522_24h_16min_22k.ogg" "$IN/"
"$PY" "$HERE/make_audio.py" synthetic "$IN"

analyze() { "$PY" -m birdnet_analyzer.analyze "$@" --threads 1; }

# a. Defaults (min_conf 0.25, sensitivity 1.0, overlap 0, no location filter, no merging),
#    all four result types, one file of each per input.
analyze "$IN" -o "$OUT/defaults" --rtype table csv audacity kaleidoscope

# b. The lowest threshold that keeps the fixture small, csv only.
analyze "$IN" -o "$OUT/min_conf_0.01" --min_conf 0.01 --rtype csv

# b2. One short file at threshold 0.1 with all four result types: its last window (9.0-10.13 s,
#     1.13 s of audio) has detections, so each format's rendering of a clipped window is covered.
analyze "$IN/birds_10s_32k.ogg" -o "$OUT/min_conf_0.1_all_types" --min_conf 0.1 \
  --rtype table csv audacity kaleidoscope

# c. Sensitivity 1.25 and 0.75 on one file, same low threshold, csv only.
for s in 1.25 0.75; do
  analyze "$IN/BC2026_Test_0002_S90_20190522_060000.ogg" -o "$OUT/sensitivity_$s" \
    --min_conf 0.01 --sensitivity "$s" --rtype csv
done

# d. Embeddings (the 1024-d layer) of the first 20 windows of two files, via the peer's functions.
"$PY" "$HERE/peer_extras.py" embeddings "$OUT/embeddings" --max-windows 20 \
  "$IN/birds_10s_32k.ogg" "$IN/jura_dawn_44k1_stereo.flac"

# e. Species lists from the range model (the peer's species command, its default threshold 0.03
#    and sort by frequency), and the scores behind them.
species() {  # name lat lon week
  "$PY" -m birdnet_analyzer.species "$OUT/species/$1.species_list.txt" --lat "$2" --lon "$3" --week "$4"
  "$PY" "$HERE/peer_extras.py" range "$OUT/species/$1.scores.tsv" "$2" "$3" "$4"
}
mkdir -p "$OUT/species"
species jura_lat47.3_lon7.0_week21 47.3 7.0 21
species ithaca_lat42.48_lon-76.45_week-1 42.48 -76.45 -1
species pantanal_lat-16.5_lon-56.7_week10 -16.5 -56.7 10

"$PY" "$HERE/peer_extras.py" versions "$OUT/versions.txt"

# Replace the generated part of the fixture (README.md stays).
for d in defaults min_conf_0.01 min_conf_0.1_all_types sensitivity_1.25 sensitivity_0.75 embeddings species; do
  rm -rf "${DEST:?}/$d"
done
mkdir -p "$DEST"
cp -r "$OUT"/. "$DEST"/
du -sh "$DEST"
