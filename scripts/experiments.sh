#!/usr/bin/env bash
# The article's experiments, measured on this machine (run it on a quiet one: timings are only as
# good as the machine is idle). Writes docs/experiments/<name>.json + .png and docs/experiments.md.
#   bash scripts/experiments.sh                 # all of them, small sizes (minutes on 2 cores)
#   bash scripts/experiments.sh layout          # one experiment: its JSON, plot and report section
#   bash scripts/experiments.sh all --full      # the article's sizes (much longer)
# Options after the name go to `convtune experiment` (--out DIR, --report PATH, --threads N, --logs DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if ! command -v valgrind >/dev/null; then
    echo "note: valgrind not found: the layout experiment's cache-miss figures need it: apt-get install -y valgrind" >&2
fi
NAME=${1:-all}
shift || true
exec .venv/bin/python -m tuning.experiments "$NAME" "$@"
