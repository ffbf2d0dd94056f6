#!/usr/bin/env bash
# The baselines of issue 4 (ISAL in both modes, Learning Loss, BADGE, BALD) on
# the supervised CPU protocol of BENCHMARKS.md, written next to the random /
# entropy / coreset runs of run_cpu_protocol.sh so one table holds them all.
# Resumable: rerun to continue. SEEDS="0 1 2" (default); DATASETS="fashionmnist cifar10".
set -euo pipefail
cd "$(dirname "$0")/.."
CIFAR=${CIFAR:-/tmp/cifar10-jpeg}
FMNIST=${FMNIST:-../shared/data/fashion-mnist}
SEEDS=${SEEDS:-0 1 2}
DATASETS=${DATASETS:-fashionmnist cifar10}
VARIANTS=(
    --variant "isal-last_layer:strategy=isal strategy_options.mode=last_layer"
    --variant "learning_loss:strategy=learning_loss"
    --variant "badge:strategy=badge"
    --variant "bald:strategy=bald"
    --variant "isal-faithful:strategy=isal"
)
for ds in $DATASETS; do
    if [ "$ds" = fashionmnist ]; then
        python3 benchmarks/cpu_protocol.py --preset cpu-fashionmnist --set "data_root=$FMNIST" --seeds $SEEDS --out runs/bench/fashionmnist "${VARIANTS[@]}"
    else
        [ -d "$CIFAR" ] || { mkdir -p "$(dirname "$CIFAR")"; tar xzf ../shared/data/cifar10-jpeg.tar.gz -C "$(dirname "$CIFAR")"; }
        python3 benchmarks/cpu_protocol.py --preset cpu-cifar10 --set "dataset=imagefolder:$CIFAR" --seeds $SEEDS --out runs/bench/cifar10 "${VARIANTS[@]}"
    fi
done
