#!/usr/bin/env bash
# Build .whl/ (git-ignored): wheels of our optional Python dependencies for the GPU machine's
# Python (CPython 3.12, manylinux x86_64), which has torch, triton, numpy, pytest and
# pytest-benchmark but is not guaranteed to have these. The device tool carries .whl/ (name it in
# `carry`) and scripts/device_check.sh installs, offline, only the modules that are missing.
#
# Usage: scripts/build_wheelhouse.sh [--plots]
#   default: scipy (data layer), tqdm, hypothesis (+ attrs, sortedcontainers), pytest-timeout:
#            about 37 MiB
#   --plots: also matplotlib and its dependencies (+ about 24 MiB); the report plots' tests skip
#            without it, and the working tree plus wheels must stay under the tool's 64 MiB.
#   WHEEL_PYTHON=3.11: wheels for another CPython (scripts/device_dryrun.sh simulates the GPU
#            image in this machine's Python).
set -euo pipefail
cd "$(dirname "$0")/.."
PKGS=(scipy tqdm hypothesis attrs sortedcontainers pytest-timeout)
if [ "${1:-}" = "--plots" ]; then
  PKGS+=(matplotlib contourpy cycler fonttools kiwisolver pillow pyparsing python-dateutil six packaging)
fi
rm -rf .whl && mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "${WHEEL_PYTHON:-3.12}" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d .whl "${PKGS[@]}"
ls -1 .whl
size=$(du -sm .whl | cut -f1)
tree=$(git ls-files -z --cached --others --exclude-standard | du -cm --files0-from=- | tail -1 | cut -f1)
echo ".whl: ${size} MiB; working tree that travels: ${tree} MiB (limit 64 MiB together)"
if [ $(( size + tree )) -ge 64 ]; then
  echo "too large for one device call: drop --plots" >&2
  exit 1
fi
