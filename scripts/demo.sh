#!/usr/bin/env bash
# The main job on a fresh machine: set up, make a synthetic nuclei image, segment it with the
# built-in model, and (when a display is present) open it in napari with the Tessera widgets.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh all
# shellcheck disable=SC1091
. .venv/bin/activate
mkdir -p out
tessera sample -o out/sample.tif --labels out/sample_truth.tif --size 512
tessera segment out/sample.tif -o out/sample_labels.tif --instances --probabilities out/sample_prob.tif
if [ -n "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ] && [ -z "${TESSERA_NO_GUI:-}" ]; then
    python -m napari_tessera.demo out/sample.tif out/sample_labels.tif || true
fi
