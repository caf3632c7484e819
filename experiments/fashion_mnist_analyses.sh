#!/bin/bash
# The analyses on the reduced Fashion-MNIST table's runs (3 seeds per model), in both settings:
#   results/analyses/paper_setting/  ViT-T vs KViT-T with the paper's layouts and initialisations
#   results/analyses/controlled/     the same pre-LN block and initialisation, only the attention differs
# Needs the finished runs of `python -m krause.reproduce fashion_mnist --scale reduced --seeds 3
# --workdir_root workdirs/reproduce/reduced` (or set W to that table's directory).
# Usage: bash experiments/fashion_mnist_analyses.sh
set -euo pipefail
cd "$(dirname "$0")/.."
W=${W:-workdirs/reproduce/reduced/fashion_mnist}
SEEDS="3407 3408 3409"
seeds() { local d=$1; local out=""; for s in $SEEDS; do out+="${out:+,}$W/$d/seed_$s"; done; echo "$out"; }
for SETTING in paper_setting controlled; do
  SUFFIX=""; [ "$SETTING" = controlled ] && SUFFIX="+pre_ln"
  for NAME in synchronisation sinks sigma attention_maps; do
    .venv/bin/python -m krause.analysis.$NAME --runs "softmax=$(seeds vit_t4$SUFFIX)" \
      --runs "krause=$(seeds kvit_t4$SUFFIX)" --out "results/analyses/$SETTING"
  done
done
