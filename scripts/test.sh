#!/usr/bin/env bash
# Set up (if needed), lint, and run the default test suite (about 10 minutes on 2 CPU cores).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m slow` for the long checks.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest -q "$@"
