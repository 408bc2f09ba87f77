#!/usr/bin/env bash
# Run `streamer bench-archive` (real-time factor and memory against input length) and keep its
# outputs under benchmarks/results/archive-<UTC date-time>/.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$here/results/archive-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$out"
python "$here/../bin/streamer" bench-archive --out-dir "$out" "$@" | tee "$out/stdout.txt"
