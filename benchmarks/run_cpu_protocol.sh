#!/usr/bin/env bash
# The whole CPU protocol grid of BENCHMARKS.md (Fashion-MNIST, then CIFAR-10 JPEG
# folders): 3 strategies x 3 seeds each. Resumable: rerun to continue.
set -euo pipefail
cd "$(dirname "$0")/.."
CIFAR=${CIFAR:-/tmp/cifar10-jpeg}
FMNIST=${FMNIST:-../shared/data/fashion-mnist}
[ -d "$CIFAR" ] || { mkdir -p "$(dirname "$CIFAR")"; tar xzf ../shared/data/cifar10-jpeg.tar.gz -C "$(dirname "$CIFAR")"; }
python3 benchmarks/cpu_protocol.py --preset cpu-fashionmnist --set "data_root=$FMNIST" --out runs/bench/fashionmnist
python3 benchmarks/cpu_protocol.py --preset cpu-cifar10 --set "dataset=imagefolder:$CIFAR" --out runs/bench/cifar10
