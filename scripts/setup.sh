#!/usr/bin/env bash
# Create .venv and install convtune with its test extras (idempotent; PyPI only).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v gcc >/dev/null || { echo "convtune needs gcc to link libraries: apt-get install -y gcc g++" >&2; exit 1; }
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test,plot]" ${CONVTUNE_EXTRAS:-}
