#!/usr/bin/env bash
# The whole test suite on a fresh machine: system libraries for a virtual display (root),
# the virtual environment, then pytest under Xvfb (GUI tests need a real OpenGL canvas).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v xvfb-run >/dev/null 2>&1 || ! ldconfig -p | grep -q libEGL.so.1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            xvfb xauth libgl1 libgl1-mesa-dri libegl1 libxkbcommon-x11-0 libxcb-icccm4 \
            libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 \
            libxcb-xinput0 libxcb-xfixes0 libxcb-shape0 libxcb-cursor0 libdbus-1-3 \
            libfontconfig1 >/dev/null
    else
        echo "scripts/test.sh: xvfb-run and Mesa are missing; install them (see README)" >&2
    fi
fi
scripts/setup.sh testing
# shellcheck disable=SC1091
. .venv/bin/activate
if command -v xvfb-run >/dev/null 2>&1; then
    exec xvfb-run -a -s "-screen 0 1600x1200x24" python -m pytest "$@"
else
    exec python -m pytest "$@"
fi
