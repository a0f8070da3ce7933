#!/usr/bin/env bash
# Set up a virtual environment in .venv with napari-tessera installed (editable).
# Usage: scripts/setup.sh [EXTRA]   EXTRA: all (napari + Qt, default) or testing
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-all}"
py="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$py" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
stamp=".venv/.tessera-$extra-$(sha1sum pyproject.toml | cut -c1-12)"
if [ ! -f "$stamp" ]; then
    python -m pip install -q --upgrade pip
    # The CPU build of torch first: a bare `torch` requirement could pull a multi-GB CUDA build.
    python -c "import torch" 2>/dev/null || python -m pip install -q "torch==2.13.0" \
        || python -m pip install -q torch
    python -m pip install -q -e ".[$extra]"
    touch "$stamp"
fi
