#!/usr/bin/env bash
# Tune every conv layer of ResNet-18 and MobileNet-v1 for this machine into logs/ (the shipped records).
# Run it alone on the machine: measurements taken beside other work are worthless.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/convtune tune --network resnet18 --algorithm "${ALGORITHM:-auto}" --trials-total "${RESNET_TRIALS:-900}" --logs logs
.venv/bin/convtune tune --network mobilenet_v1 --algorithm "${ALGORITHM:-auto}" --trials-total "${MOBILENET_TRIALS:-600}" --logs logs

# Second pass: the layers the first pass left closest to oneDNN (docs/performance.md), 32 trials per
# algorithm, each search started from the other layers' records (transfer, on by default).
refine() { .venv/bin/convtune tune "$1" --algorithm "$2" --trials "${REFINE_TRIALS:-32}" --batch 8 --logs logs; }
refine mobilenet_v1.conv3.pw direct,im2col,indirect
refine mobilenet_v1.conv2.dw depthwise
refine resnet18.layer3.0.conv1 direct,im2col,indirect
refine resnet18.conv1 direct,im2col
refine mobilenet_v1.conv0 direct,im2col
refine mobilenet_v1.conv4.pw direct,im2col,indirect
refine resnet18.layer2.0.conv1 direct,im2col,indirect
refine resnet18.layer4.0.conv1 direct,indirect
refine resnet18.layer4 direct
refine mobilenet_v1.conv2.pw direct,im2col,indirect
refine mobilenet_v1.conv5.pw direct,im2col,indirect
refine mobilenet_v1.conv7.pw direct,im2col,indirect
refine mobilenet_v1.conv1.pw direct,im2col,indirect
# the three layers of scripts/bench_algorithms.py: every algorithm's own best, not just the winner's
refine resnet18.layer1 direct,spatial-pack
refine resnet18.layer2.0.conv1 spatial-pack
refine resnet18.layer2.0.downsample direct,im2col,spatial-pack,indirect
