#!/usr/bin/env bash
# GPU check, one prepared run on a CUDA machine (torch/triton already installed, no network):
# install in place (builds the CUDA extension), run the tests on the GPU, run the benchmarks with
# short settings, write logs/JSON to OUTDIR and print a compact table last.
# Budget: under 8 minutes on one H200.   Usage: scripts/device_check.sh [OUTDIR]
set -uo pipefail
cd "$(dirname "$0")/.."
OUTDIR=${1:-${OUT:-out/device_check}}
mkdir -p "$OUTDIR"
export PYTHONUNBUFFERED=1 ONEREC_BENCH_OUT="$OUTDIR"
export ONEREC_TRITON_AUTOTUNE=${ONEREC_TRITON_AUTOTUNE:-quick}  # 4 configs per kernel: time-boxed
rm -f "$OUTDIR/results.jsonl"
t0=$(date +%s)
section() { echo "=== $* (t=$(( $(date +%s) - t0 ))s)"; }
status=0

section "environment"
{
  date -u +"%Y-%m-%dT%H:%M:%SZ"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
  python -c "import sys, torch, triton; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda', torch.version.cuda, '| triton', triton.__version__)"
  nvcc --version | tail -1
} 2>&1 | tee "$OUTDIR/env.txt"

section "install (native extension with CUDA kernels)"
if ! timeout 300 python -m pip install --no-build-isolation --no-deps -e . >"$OUTDIR/install.log" 2>&1; then
  echo "pip install failed (tail below); trying setup.py build_ext --inplace"
  tail -n 25 "$OUTDIR/install.log"
  timeout 300 python setup.py build_ext --inplace >>"$OUTDIR/install.log" 2>&1 || { tail -n 40 "$OUTDIR/install.log"; status=1; }
fi
python -c "import onerec_kernels as ok; print(ok.backends())" 2>&1 | tee -a "$OUTDIR/env.txt"

section "tests on the GPU"
ONEREC_EXPECT_NATIVE=1 timeout 240 python -m pytest tests -q --maxfail=25 -p no:cacheprovider \
  >"$OUTDIR/tests.log" 2>&1 || status=1
tail -n 15 "$OUTDIR/tests.log"

section "benchmarks (--quick)"
timeout 300 python -m pytest benchmarks -q -p no:cacheprovider --quick \
  --benchmark-json="$OUTDIR/bench.json" >"$OUTDIR/bench.log" 2>&1 || status=1
tail -n 8 "$OUTDIR/bench.log"

section "results"
python scripts/results_table.py "$OUTDIR/results.jsonl" | tee "$OUTDIR/table.txt"
section "done (status $status)"
exit $status
