#!/usr/bin/env bash
# Tune every conv layer of ResNet-18 and MobileNet-v1 for this machine into logs/ (the shipped records).
# Run it alone on the machine: measurements taken beside other work are worthless.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/convtune tune --network resnet18 --algorithm "${ALGORITHM:-auto}" --trials-total "${RESNET_TRIALS:-900}" --logs logs
.venv/bin/convtune tune --network mobilenet_v1 --algorithm "${ALGORITHM:-auto}" --trials-total "${MOBILENET_TRIALS:-600}" --logs logs
