#!/usr/bin/env bash
# Set up and run the test suite (what CI runs). `bash scripts/test.sh --fast`: the inner loop
# (`pytest -m "not slow"`) in two processes (pytest-xdist; each test file kept in one process, so
# a file's module fixtures are built once), CONVTUNE_TEST_JOBS processes if set.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ "${1:-}" = "--fast" ]; then
    shift
    exec .venv/bin/python -m pytest -q -m "not slow" -n "${CONVTUNE_TEST_JOBS:-2}" --dist loadfile "$@"
fi
exec .venv/bin/python -m pytest -q "$@"
