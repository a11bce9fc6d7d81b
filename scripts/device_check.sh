#!/usr/bin/env bash
# The GPU check: one prepared command on the lent CUDA machine (torch/triton/nvcc preinstalled, no
# network). Phases, each with its own time box (the boxes sum below the budget, so the closing
# table always prints, from whatever rows exist, even when a phase fails or times out):
#   env      versions, GPU, which optional modules are missing (and installs them from .whl/)
#   build    pip install -e . (builds the CUDA extension)
#   tests    the test suite on the GPU (compiled Triton, ONEREC_TRITON_AUTOTUNE=0: one config)
#   bench    benchmarks --quick (ONEREC_TRITON_AUTOTUNE=quick: a short autotune list)
#
# Usage: scripts/device_check.sh [--phase all|tests|bench] [--budget SECONDS] [OUTDIR]
#   OUTDIR defaults to $OUT (the device tool's return folder) or out/device_check.
#   --phase tests|bench runs env + build + that phase only (a second call finishing what a first
#   could not). --budget (default 510 s) scales the time boxes; the device tool's call limit is
#   600 s, so pass its timeout_s >= budget + 30.
# Files written to OUTDIR (at most 8, the device tool's limit): env.txt, build.log, tests.log,
# junit.xml, bench.log, results-all.jsonl, table.txt (and nothing else: the tool returns 8).
# Missing Python modules: build .whl/ first with scripts/build_wheelhouse.sh and carry it.
set -uo pipefail
cd "$(dirname "$0")/.."

PHASE=all
BUDGET=510
while [ $# -gt 0 ]; do
  case "$1" in
    --phase) PHASE=$2; shift 2 ;;
    --budget) BUDGET=$2; shift 2 ;;
    -h|--help) sed -n 2,18p "$0"; exit 0 ;;
    *) OUTDIR_ARG=$1; shift ;;
  esac
done
case "$PHASE" in all|tests|bench) ;; *) echo "--phase must be all, tests or bench"; exit 2 ;; esac
OUTDIR=${OUTDIR_ARG:-${OUT:-out/device_check}}
mkdir -p "$OUTDIR"
rm -f "$OUTDIR"/results*.jsonl "$OUTDIR"/junit.xml "$OUTDIR"/table.txt

export PYTHONUNBUFFERED=1 ONEREC_BENCH_OUT="$OUTDIR" ONEREC_EXPECT_NATIVE=1
unset TRITON_INTERPRET  # compiled Triton only: tests/conftest.py refuses the interpreter on CUDA
PY=${PYTHON:-python3}
t0=$(date +%s)
elapsed() { echo $(( $(date +%s) - t0 )); }
section() { echo "=== $* (t=$(elapsed)s)"; }
declare -A PHASE_STATUS=()

# Time boxes as fractions of the budget (510 s: deps 35, build 92, tests 163, then the benchmarks
# get what is left less 15 s for the table). Unused time of a phase passes to the benchmarks.
box() { echo $(( BUDGET * $1 / 100 )); }

finish() {
  section "table"
  {
    echo "device check $(date -u +%Y-%m-%dT%H:%M:%SZ)  phase=$PHASE  budget=${BUDGET}s  elapsed=$(elapsed)s"
    for p in deps build tests bench; do
      [ -n "${PHASE_STATUS[$p]:-}" ] && echo "phase $p: ${PHASE_STATUS[$p]}"
    done
    $PY scripts/device_summary.py "$OUTDIR" 2>&1 || echo "(device_summary.py failed)"
  } | tee "$OUTDIR/table.txt"
}
trap finish EXIT

# run_phase NAME SECONDS LOG CMD...: time-boxed, status recorded (ok / failed rc / timed out).
run_phase() {
  local name=$1 secs=$2 log=$3; shift 3
  section "$name (box ${secs}s)"
  # SIGINT first: pytest then stops like on Ctrl-C and still writes its summary and JUnit XML
  timeout -s INT --kill-after=15 "$secs" "$@" >"$log" 2>&1
  local rc=$?
  case $rc in
    0) PHASE_STATUS[$name]="ok ($(elapsed)s)" ;;
    124|130|137) PHASE_STATUS[$name]="TIMED OUT after ${secs}s (partial results kept)" ;;
    *) PHASE_STATUS[$name]="failed rc=$rc" ;;
  esac
  echo "$name: ${PHASE_STATUS[$name]}"
  return $rc
}

section "environment"
{
  date -u +"%Y-%m-%dT%H:%M:%SZ"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
  $PY -c "import sys, torch, triton; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda', torch.version.cuda, '| triton', triton.__version__)"
  nvcc --version | tail -1
  nproc
} >"$OUTDIR/env.txt" 2>&1
cat "$OUTDIR/env.txt"

# Optional modules our tests and data layer use; install only the missing ones, offline, from
# the carried wheelhouse (pip resolves their dependencies against what is installed).
MISSING=$($PY - <<'EOF'
import importlib.util
mods = {"scipy": "scipy", "tqdm": "tqdm", "matplotlib": "matplotlib", "hypothesis": "hypothesis",
        "pytest_timeout": "pytest-timeout", "pytest_benchmark": "pytest-benchmark"}
print(" ".join(dist for mod, dist in mods.items() if importlib.util.find_spec(mod) is None))
EOF
)
echo "missing optional modules: ${MISSING:-none}" | tee -a "$OUTDIR/env.txt"
CARRIED=""; NOT_CARRIED=""
for p in $MISSING; do
  # wheel file names use underscores: pytest-timeout -> pytest_timeout-2.4.0-...whl
  if ls .whl/"${p//-/_}"-*.whl >/dev/null 2>&1; then CARRIED+=" $p"; else NOT_CARRIED+=" $p"; fi
done
if [ -n "$CARRIED" ]; then
  run_phase deps "$(box 7)" "$OUTDIR/deps.tmp" $PY -m pip install -q --no-index \
    --find-links .whl --no-cache-dir --no-compile $CARRIED
  tail -n 5 "$OUTDIR/deps.tmp" >>"$OUTDIR/env.txt"; rm -f "$OUTDIR/deps.tmp"
fi
if [ -n "$NOT_CARRIED" ]; then
  echo "not in .whl/ (tests needing them skip):$NOT_CARRIED" | tee -a "$OUTDIR/env.txt"
fi

# MAX_JOBS: the machine has 16 cores; ninja builds the .cu files in parallel.
export MAX_JOBS=${MAX_JOBS:-16}
if ! run_phase build "$(box 18)" "$OUTDIR/build.log" \
    $PY -m pip install -v --no-build-isolation --no-deps --no-cache-dir -e .; then
  echo "pip install failed (tail below); trying setup.py build_ext --inplace"
  tail -n 25 "$OUTDIR/build.log"
  run_phase build "$(box 15)" "$OUTDIR/build2.tmp" $PY setup.py build_ext --inplace
  cat "$OUTDIR/build2.tmp" >>"$OUTDIR/build.log"; rm -f "$OUTDIR/build2.tmp"
fi
$PY -c "import onerec_kernels as ok; print(ok.backends())" 2>&1 | tee -a "$OUTDIR/env.txt"
# how the extension links libstdc++ (it must be NEEDED, not a static copy: see setup.py)
readelf -d onerec_kernels/_C*.so 2>/dev/null | grep NEEDED | tr -s ' ' >>"$OUTDIR/env.txt"

if [ "$PHASE" != bench ]; then
  # One seed for every worker (tests/_seed.py), printed so a failure replays.
  export ONEREC_TEST_SEED=${ONEREC_TEST_SEED:-$(( RANDOM * 32768 + RANDOM ))}
  echo "ONEREC_TEST_SEED=$ONEREC_TEST_SEED" >>"$OUTDIR/env.txt"
  # pytest-xdist when the image has it: most of the tests' time is Triton compiling, which
  # spreads over the 16 cores.
  XDIST=""
  $PY -c "import xdist" 2>/dev/null && XDIST="-n 8"
  # --continue-on-collection-errors: one broken file must not hide every other result. No
  # --maxfail: one family failing everywhere must not hide the others (the time box bounds it).
  ONEREC_TRITON_AUTOTUNE=0 run_phase tests "$(box 32)" "$OUTDIR/tests.log" \
    $PY -m pytest tests -q -p no:cacheprovider --continue-on-collection-errors \
    $XDIST -rfE --junitxml="$OUTDIR/junit.xml" -o junit_family=xunit1
  tail -n 20 "$OUTDIR/tests.log"
fi

bench_files() {
  # One pytest process per benchmark file: a CUDA error is sticky for its process, so a fault in
  # one family must not void the others' numbers. The beam file last (the first run's illegal
  # access, 2026-11-30, surfaced there).
  ls benchmarks/bench_*.py | grep -v bench_beam.py
  ls benchmarks/bench_beam.py 2>/dev/null
}

if [ "$PHASE" != tests ]; then
  left=$(( BUDGET - $(elapsed) - 15 ))
  if [ "$left" -lt 30 ]; then
    PHASE_STATUS[bench]="skipped: ${left}s left in the budget (rerun with --phase bench)"
  else
    # Each file gets an equal share of what is left; a file that ends early leaves its rest to
    # the next ones.
    deadline=$(( $(elapsed) + left ))
    files=($(bench_files))
    : >"$OUTDIR/bench.log"
    bench_rc=0
    for i in "${!files[@]}"; do
      remaining=$(( deadline - $(elapsed) ))
      share=$(( remaining / (${#files[@]} - i) ))
      if [ "$share" -lt 10 ]; then
        echo "${files[$i]}: skipped (${remaining}s left)" | tee -a "$OUTDIR/bench.log"; bench_rc=1
        continue
      fi
      section "bench ${files[$i]} (box ${share}s)"
      ONEREC_TRITON_AUTOTUNE=quick timeout -s INT --kill-after=10 "$share" \
        $PY -m pytest "${files[$i]}" -q -p no:cacheprovider --quick -rfE >"$OUTDIR/bench.tmp" 2>&1
      rc=$?
      [ $rc -ne 0 ] && bench_rc=$rc
      echo "--- ${files[$i]}: rc=$rc" >>"$OUTDIR/bench.log"
      cat "$OUTDIR/bench.tmp" >>"$OUTDIR/bench.log"
      grep -E "passed|failed|error" "$OUTDIR/bench.tmp" | tail -n 1
      # A device fault: locate it in this same call (the first failing test, under
      # compute-sanitizer's memcheck, on what is left of this file's share).
      first=$(grep -m1 -oE "^FAILED [^ ]+" "$OUTDIR/bench.tmp" | cut -d' ' -f2)
      san_left=$(( deadline - $(elapsed) - 10 ))
      if grep -q "illegal memory access\|unspecified launch failure" "$OUTDIR/bench.tmp" \
          && [ -n "$first" ] && [ "$san_left" -ge 30 ] && command -v compute-sanitizer >/dev/null; then
        [ "$san_left" -gt 120 ] && san_left=120
        section "memcheck $first (box ${san_left}s)"
        echo "--- compute-sanitizer memcheck: $first" >>"$OUTDIR/bench.log"
        ONEREC_TRITON_AUTOTUNE=0 timeout -s INT --kill-after=10 "$san_left" compute-sanitizer \
          --tool memcheck --print-limit 5 $PY -m pytest "$first" -q -x -p no:cacheprovider \
          --quick 2>&1 | grep -v "Host Frame" | head -n 80 >>"$OUTDIR/bench.log"
        grep -m3 "Invalid\|ERROR SUMMARY" "$OUTDIR/bench.log" | tail -n 3
      fi
    done
    rm -f "$OUTDIR/bench.tmp"
    # One results file for the table and the device tool's 8-file limit.
    cat "$OUTDIR"/results-*.jsonl >"$OUTDIR/results-merged.jsonl.tmp" 2>/dev/null
    rm -f "$OUTDIR"/results-*.jsonl
    mv "$OUTDIR/results-merged.jsonl.tmp" "$OUTDIR/results-all.jsonl"
    case $bench_rc in
      0) PHASE_STATUS[bench]="ok ($(elapsed)s)" ;;
      124|130|137) PHASE_STATUS[bench]="TIMED OUT in a file (partial results kept)" ;;
      *) PHASE_STATUS[bench]="failed rc=$bench_rc (see bench.log)" ;;
    esac
  fi
fi

for p in deps build tests bench; do
  case "${PHASE_STATUS[$p]:-ok}" in ok*|no*|skipped*) ;; *) exit 1 ;; esac
done
exit 0
