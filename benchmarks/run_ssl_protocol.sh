#!/usr/bin/env bash
# The SSL section of BENCHMARKS.md on CIFAR-10 (JPEG folders): BYOL pretraining
# (cached; resumable), its kNN / linear-probe accuracy, then the AL variants
# through benchmarks/cpu_protocol.py. Resumable: rerun to continue.
# SEEDS="0 1 2" for the full protocol; the default is seed 0 only.
set -euo pipefail
cd "$(dirname "$0")/.."
CIFAR=${CIFAR:-/tmp/cifar10-jpeg}
SEEDS=${SEEDS:-0}
[ -d "$CIFAR" ] || { mkdir -p "$(dirname "$CIFAR")"; tar xzf ../shared/data/cifar10-jpeg.tar.gz -C "$(dirname "$CIFAR")"; }
BYOL="ssl.method=byol ssl.epochs=30 ssl.asymmetric_views=false ssl.crop_scale=0.2"  # as measured: the shared symmetric views
FOLDER=$(python3 -m ssal pretrain -q --config cpu-cifar10 "dataset=imagefolder:$CIFAR" $BYOL | sed -n 's|.*backbone in \(.*\)/backbone.pt|\1|p')
python3 -m ssal eval-features -q "$FOLDER" --dataset "imagefolder:$CIFAR" \
    --json benchmarks/results/ssl/knn_byol30_smallcnn32_cifar10.json
python3 benchmarks/cpu_protocol.py --preset cpu-cifar10 --set "dataset=imagefolder:$CIFAR" --seeds $SEEDS --out runs/bench/cifar10-ssl \
    --variant "frozen-byol-typiclust:strategy=typiclust initial_strategy=typiclust train.mode=frozen $BYOL train.epochs=100 train.lr=0.1" \
    --variant "pretrain-byol-coreset:strategy=coreset train.mode=pretrain $BYOL" \
    --variant "joint-coreset:strategy=coreset train.mode=joint train.steps=500" \
    --variant "supervised-random:strategy=random train.steps=1300" \
    --variant "supervised-coreset:strategy=coreset train.steps=1300" \
    --variant "joint-random:strategy=random train.mode=joint train.steps=500"
