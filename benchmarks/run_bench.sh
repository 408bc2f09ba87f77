#!/usr/bin/env bash
# Run `streamer bench` and keep its outputs under benchmarks/results/<UTC date-time>/.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$here/results/$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$out"
python "$here/../bin/streamer" bench --out-dir "$out" "$@" | tee "$out/stdout.txt"
