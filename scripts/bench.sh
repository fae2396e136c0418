#!/usr/bin/env bash
# The benchmark of docs/performance.md: convtune's best kernels vs PyTorch (oneDNN) and numpy im2col+BLAS,
# per layer, then the estimated network conv time. Needs PyTorch: CONVTUNE_EXTRAS=torch==2.13.0.
set -euo pipefail
cd "$(dirname "$0")/.."
CONVTUNE_EXTRAS="${CONVTUNE_EXTRAS:-torch==2.13.0 threadpoolctl}" bash scripts/setup.sh
for net in resnet18 mobilenet_v1; do
  .venv/bin/convtune bench "$net" --logs logs --json "docs/bench/$net.json"
done
