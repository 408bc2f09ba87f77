#!/usr/bin/env bash
# Run `streamer tune` on this machine; the profile goes to the cache folder, where infer finds it.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python "$here/../bin/streamer" tune "$@"
