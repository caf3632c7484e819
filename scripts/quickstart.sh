#!/usr/bin/env bash
# Set up (if needed) and run the main job on its embedded default.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python scripts/bench_attention.py --quick --json results/bench_attention_quick.json "$@"
