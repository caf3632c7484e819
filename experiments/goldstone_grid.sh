#!/bin/bash
# Experiment 1's full grid (2 groups x 2 models x 8 stds x 5 seeds x 5 epochs), resumable: each
# architecture's 40 models train as one vmapped program with a checkpoint after every epoch, so
# running the script again continues where it stopped. Prints the wall time at the end.
# Usage: nohup bash experiments/goldstone_grid.sh [dataset] [seeds=0-4] \
#          > workdirs/goldstone/grid.log 2>&1 &
set -e
cd "$(dirname "$0")/.."
DATASET=${1:-fashion_mnist}; SEEDS=${2:-0-4}
for ARCH in u1,equivariant u1,generic o4,equivariant o4,generic; do
  GROUP=${ARCH%,*}; MODEL=${ARCH#*,}
  .venv/bin/python -m krause.goldstone.main \
    --config "configs/goldstone_mlp.py:group=$GROUP,model=$MODEL,dataset=$DATASET,seeds=$SEEDS" \
    --workdir "workdirs/goldstone/${DATASET}/${GROUP}_${MODEL}_seeds${SEEDS}"
done
echo "grid done: ${SECONDS} s wall ($(( SECONDS / 60 )) min) in this invocation"
