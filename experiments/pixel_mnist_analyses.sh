#!/bin/bash
# Samples, completions and analyses of the reduced pixel table's runs (ARM / LARM / KARM on
# Fashion-MNIST as 784-token sequences):
#   results/pixel_mnist/samples_MODEL.png              64 unconditional samples (seed 3407 run)
#   results/pixel_mnist/samples_MODEL_completions.png  8 test images, top half given, 4 completions each
#   results/pixel_mnist/sampling.txt                   the cached decoder's images/s of each model
#   results/analyses/pixel_mnist/                      sinks and synchronisation, ARM vs KARM, all seeds
# Needs the finished runs of `python -m krause.reproduce pixel_mnist --scale reduced --seeds 3
# --workdir_root workdirs/reproduce/reduced` (or set W to that table's directory).
# Usage: bash experiments/pixel_mnist_analyses.sh
set -euo pipefail
cd "$(dirname "$0")/.."
W=${W:-workdirs/reproduce/reduced/pixel_mnist}
OUT=results/pixel_mnist
SEEDS="3407 3408 3409"
seeds() {
  local out=""
  for s in $SEEDS; do [ -f "$W/$1/seed_$s/results.json" ] && out+="${out:+,}$W/$1/seed_$s"; done
  echo "$out"
}
mkdir -p "$OUT"
: > "$OUT/sampling.txt"
for MODEL in arm larm karm; do
  COMMAND="python -m krause.sample --workdir $W/$MODEL/seed_3407 --num 64 --complete 8 --out $OUT/samples_$MODEL.png"
  echo "$ $COMMAND" | tee -a "$OUT/sampling.txt"
  .venv/bin/$COMMAND 2>/dev/null | tee -a "$OUT/sampling.txt"
done
for NAME in sinks synchronisation; do
  .venv/bin/python -m krause.analysis.$NAME --runs "softmax=$(seeds arm)" --runs "krause=$(seeds karm)" \
    --out results/analyses/pixel_mnist --num_images 16
done
