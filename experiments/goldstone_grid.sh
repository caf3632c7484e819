#!/bin/bash
# Experiment 1's full grid (2 groups x 2 models x 8 stds x 5 seeds x 5 epochs), resumable.
# Order: epoch 1 of seed 0 for every architecture, then epochs 2-5 of seed 0, then seeds 1-4
# (each pass resumes the previous one's checkpoints), so partial results cover every architecture.
# Usage: nohup bash experiments/goldstone_grid.sh [dataset] > workdirs/goldstone/grid.log 2>&1 &
set -e
cd "$(dirname "$0")/.."
DATASET=${1:-fashion_mnist}
for PASS in "0 1" "0 5" "1-4 5"; do
  read -r SEEDS EPOCHS <<< "$PASS"
  for ARCH in u1,equivariant u1,generic o4,equivariant o4,generic; do
    GROUP=${ARCH%,*}; MODEL=${ARCH#*,}
    .venv/bin/python -m krause.goldstone.main \
      --config "configs/goldstone_mlp.py:group=$GROUP,model=$MODEL,dataset=$DATASET,seeds=$SEEDS" \
      --config.epochs="$EPOCHS" \
      --workdir "workdirs/goldstone/${DATASET}/${GROUP}_${MODEL}_seeds${SEEDS}"
  done
done
