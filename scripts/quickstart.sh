#!/usr/bin/env bash
# Set up (if needed), then the main job: ViT vs KViT on Fashion-MNIST on the CPU (about 4 minutes
# on 2 cores). Prepares the dataset into ~/tensorflow_datasets on first use. Extra arguments go to
# experiments/quickstart.py (e.g. --workdir DIR, --data_dir DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# tcmalloc reuses XLA's large buffers instead of page-faulting them in anew (krause/allocator.py).
TCMALLOC="$(ls /usr/lib/*/libtcmalloc_minimal.so.4 2> /dev/null | head -n 1 || true)"
if [ -n "$TCMALLOC" ] && [ -z "${KRAUSE_NO_TCMALLOC:-}" ]; then
  export LD_PRELOAD="$TCMALLOC${LD_PRELOAD:+ $LD_PRELOAD}"
  export TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD="${TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD:-1099511627776}"
fi
.venv/bin/python experiments/quickstart.py --workdir workdirs/quickstart "$@"
