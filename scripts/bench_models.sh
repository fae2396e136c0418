#!/usr/bin/env bash
# Set up (with the rivals) and time torchvision models end to end against ONNX Runtime, untuned
# or with the records under logs/ (scripts/bench_models.py; nothing else should run meanwhile).
set -euo pipefail
cd "$(dirname "$0")/.."
CONVTUNE_EXTRAS="torch==2.14.1 torchvision==0.29.1 onnxruntime" bash scripts/setup.sh
MODELS=${MODELS:-"resnet18 resnet50 mobilenet_v2 mobilenet_v3_small mobilenet_v3_large efficientnet_b0 regnet_y_400mf resnext50_32x4d densenet121 googlenet squeezenet1_1 shufflenet_v2_x1_0 convnext_tiny inception_v3 deeplabv3_mobilenet_v3_large"}
exec .venv/bin/python scripts/bench_models.py $MODELS --json "docs/bench/models-$(.venv/bin/python -c 'from tuning.target import resolve_target; print(resolve_target("x86").tag)').json" "$@"
