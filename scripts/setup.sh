#!/usr/bin/env bash
# One-time set-up on a fresh machine (idempotent): Debian's Fashion-MNIST archives and tcmalloc
# (see krause/allocator.py), a virtual environment in .venv, and the package with its pinned
# dependencies (requirements.lock).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ] \
  || ! ls /usr/lib/*/libtcmalloc_minimal.so.4 > /dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist \
    libtcmalloc-minimal4
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c requirements.lock -e ".[test]"
