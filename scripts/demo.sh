#!/usr/bin/env bash
# The main job on a fresh machine: set up, tune the default layer (ResNet-18's 56x56 64->64 3x3)
# with a small budget, compile the best record into a shared library, verify it in a fresh process.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
LAYER=${LAYER:-resnet18.layer1}
TRIALS=${TRIALS:-32}
.venv/bin/convtune tune "$LAYER" --algorithm "${ALGORITHM:-direct}" --trials "$TRIALS"
.venv/bin/convtune compile "$LAYER" -o "build/$LAYER.so"
.venv/bin/convtune verify "build/$LAYER.so"
