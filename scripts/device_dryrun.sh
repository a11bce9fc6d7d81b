#!/usr/bin/env bash
# Dry run of scripts/device_check.sh on a CPU machine, in a Python that looks like the GPU image's:
# a fresh venv with only what that image is known to have (torch, triton at the image's version,
# numpy, pytest, pytest-benchmark, pybind11, ninja, cmake), none of our optional dependencies,
# and a wheelhouse (.whl/) built for this Python, in a fresh clone of HEAD (only the committed
# tree, as the device tool carries it). It proves, before GPU time is spent, that the check
# installs the missing modules offline, builds, collects and runs every test and benchmark file,
# and prints its table; the Triton kernels run in the interpreter here (no CUDA).
#
# Usage: scripts/device_dryrun.sh [--budget SECONDS] [WORKDIR]
#   --budget: passed to device_check.sh (default 900: the 2-core CPU runs the suite slower than
#             the GPU machine's 16 cores; the GPU call itself uses about 495).
#   WORKDIR (default /tmp/onerec-dryrun): venv, clone and the check's output (WORKDIR/out).
# Needs network for the first run (venv packages, wheels); exits with device_check.sh's status
# after checking that the table was written and names every phase.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
BUDGET=900
while [ $# -gt 0 ]; do
  case "$1" in
    --budget) BUDGET=$2; shift 2 ;;
    -h|--help) sed -n 2,15p "$0"; exit 0 ;;
    *) WORK_ARG=$1; shift ;;
  esac
done
WORK=${WORK_ARG:-/tmp/onerec-dryrun}
PYV=$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
mkdir -p "$WORK"

# The GPU image's packages (RESULTS.md / the device tool's page), triton pinned to its 3.6.0;
# torch is the CPU build this machine serves from disk.
if [ ! -x "$WORK/venv/bin/python" ]; then
  python3 -m venv "$WORK/venv"
  "$WORK/venv/bin/python" -m pip install -q --upgrade pip
  "$WORK/venv/bin/python" -m pip install -q torch==2.13.0
  # numpy < 2.4: Triton 3.6's *interpreter* (which runs the kernels here; the GPU compiles
  # them) cannot take numpy 2.4 (tests/conftest.py says so and stops).
  "$WORK/venv/bin/python" -m pip install -q triton==3.6.0 "numpy<2.4" pytest pytest-benchmark \
    pybind11 ninja cmake setuptools wheel
fi
VPY="$WORK/venv/bin/python"
echo "venv: $($VPY -c 'import sys, torch, triton; print(sys.version.split()[0], torch.__version__, triton.__version__)')"
# A reused venv: drop what an earlier dry run installed from the wheelhouse.
$VPY -m pip uninstall -q -y scipy tqdm hypothesis attrs sortedcontainers pytest-timeout \
  matplotlib onerec-kernels >/dev/null 2>&1 || true
# None of the optional modules may be importable, or the dry run proves nothing about .whl/.
$VPY - <<'EOF'
import importlib.util, sys
present = [m for m in ("scipy", "tqdm", "matplotlib", "hypothesis", "pytest_timeout")
           if importlib.util.find_spec(m) is not None]
sys.exit(f"the simulated GPU Python already has {present}" if present else 0)
EOF

rm -rf "$WORK/clone" "$WORK/out"
git clone -q "$REPO" "$WORK/clone"
cd "$WORK/clone"
WHEEL_PYTHON=$PYV bash scripts/build_wheelhouse.sh >/dev/null
echo "wheelhouse for Python $PYV: $(ls .whl | wc -l) wheels, $(du -sm .whl | cut -f1) MiB"

set +e
PYTHON=$VPY bash scripts/device_check.sh --budget "$BUDGET" "$WORK/out"
rc=$?
set -e
echo "device_check.sh exit status: $rc"
for f in env.txt build.log tests.log junit.xml table.txt; do
  [ -s "$WORK/out/$f" ] || { echo "dry run: $f missing or empty" >&2; exit 1; }
done
grep -q "^phase tests:" "$WORK/out/table.txt" && grep -q "^phase bench:" "$WORK/out/table.txt" \
  || { echo "dry run: the table does not name every phase" >&2; exit 1; }
# The wheelhouse must have been used: the optional modules import in the venv afterwards.
$VPY -c "import scipy, tqdm, hypothesis, pytest_timeout" \
  || { echo "dry run: the wheelhouse was not installed" >&2; exit 1; }
exit $rc
