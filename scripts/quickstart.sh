#!/usr/bin/env bash
# Set up (if needed), then the main job: ViT vs KViT on Fashion-MNIST on the CPU (about 4 minutes
# on 2 cores). Prepares the dataset into ~/tensorflow_datasets on first use. Extra arguments go to
# experiments/quickstart.py (e.g. --workdir DIR, --data_dir DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python experiments/quickstart.py --workdir workdirs/quickstart "$@"
