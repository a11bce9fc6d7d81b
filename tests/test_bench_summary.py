"""The benchmark summary (issue 8, item 9): our own table from the recorded rows, CPU medians
with their spread over enough runs, one results file per run, results_table.py on a folder."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import common  # noqa: E402
import summary  # noqa: E402

ROWS = [
    {"name": "test_rq_assign_gpu[512]", "N": 1048576, "D": 512, "K": 8192, "L": 3,
     "dtype": "bfloat16", "time_ms": 2.5, "time_ms_spread_pct": 3.0, "tflops": 1234.5,
     "pct_of_bf16_peak": 61.2, "anchor_cdist_ms": 40.0, "anchor_bf16_gemm_ms": 10.0,
     "speedup_vs_bf16_gemm": 4.0},
    {"name": "test_kmeans_step_cpu[20000-64-256]", "N": 20000, "D": 64, "K": 256,
     "cpp_ms": 80.0, "cpp_ms_spread_pct": 10.0, "cpp_ms_samples": 13, "reference_ms": 640.0,
     "cpp_gflops": 8.2},
    {"name": "test_bench_static_protocol", "users": 256, "beams": 128, "items": 1000000,
     "static_reference_ms": 0.033, "level0_ms": 0.01, "level1_ms": 0.02, "level2_ms": 0.03},
]


def test_summary_columns_come_from_the_recorded_rows():
    gpu, cpu, static = (summary.summarize(r) for r in ROWS)
    assert gpu["op"] == "rq_assign_gpu" and gpu["shape"] == "N=1048576 D=512 K=8192 L=3 bfloat16"
    assert (gpu["anchor"], gpu["anchor ms"], gpu["ratio"]) == ("bf16_gemm", "10", "4.00x")
    assert gpu["rate"] == "1.23e+03 TFLOP/s" and gpu["% peak"] == "61.2"
    assert gpu["spread"] == "±1.5%" and gpu["backend"] == "gpu"
    assert (cpu["backend"], cpu["ours ms"], cpu["ratio"]) == ("cpp", "80", "8.00x")
    assert cpu["spread"] == "±5.0% n=13" and cpu["rate"] == "8.2 GFLOP/s"
    # a published figure is not an anchor measured in the run
    assert static["anchor"] == "-" and static["ours ms"] == "0.06"
    table = summary.format_table(ROWS)
    lines = table.splitlines()
    assert lines[0].split() == ["op", "shape", "backend", "ours", "ms", "anchor", "anchor", "ms",
                                "ratio", "rate", "%", "peak", "spread"]
    assert len(lines) == 2 + len(ROWS) + 1 and "ratio = anchor / ours" in lines[-1]


def test_cpu_timing_samples_until_stable_and_reports_the_spread():
    t = common.cpu_time_ms(lambda: time.sleep(0.001), repeats=1, warmup=0, min_time_s=0.05)
    assert isinstance(t, float) and t >= 1.0
    # ~1 ms runs: it kept sampling past the minimum until 50 ms of runs
    assert common.MIN_CPU_SAMPLES < t.samples <= 50
    assert 0.0 <= t.spread_pct < 1000
    quick = common.cpu_time_ms(lambda: None, repeats=3, warmup=0, min_time_s=0.0)
    assert quick.samples == common.MIN_CPU_SAMPLES  # never fewer than the minimum


class _Bench:
    name = "test_fake[1]"

    def __init__(self):
        self.extra_info = {}


def test_record_keeps_the_row_and_each_run_writes_its_own_file(tmp_path, monkeypatch):
    monkeypatch.setenv("ONEREC_BENCH_OUT", str(tmp_path))
    monkeypatch.setattr(common, "_RUN_FILE", [])
    monkeypatch.setattr(common, "ROWS", [])
    bench = _Bench()
    common.record(bench, N=7, cpp_ms=common.Timing(2.0, 1.5, 2.5, samples=9), reference_ms=4.0)
    assert bench.extra_info["cpp_ms_spread_pct"] == 50.0 and bench.extra_info["cpp_ms_samples"] == 9
    assert common.ROWS == [{"name": "test_fake[1]", "N": 7, "cpp_ms": 2.0,
                            "cpp_ms_spread_pct": 50.0, "cpp_ms_samples": 9, "reference_ms": 4.0}]
    first = common.results_file(str(tmp_path))
    # a second run (another process) has its own file name
    monkeypatch.setattr(common, "_RUN_FILE", ["results-20990101T000000Z-1.jsonl"])
    common.record(bench, N=8, cpp_ms=1.0)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 2 and os.path.basename(first) in files and "results.jsonl" not in files
    rows = [json.loads(line) for line in open(first)]
    assert [r["N"] for r in rows] == [7]


def test_results_table_reads_a_folder_newest_file(tmp_path):
    old, new = tmp_path / "results-a.jsonl", tmp_path / "results-b.jsonl"
    old.write_text(json.dumps({"name": "test_old", "time_ms": 1.0}) + "\n")
    new.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    os.utime(old, (1, 1))
    script = REPO / "scripts" / "results_table.py"
    for arg in (tmp_path, tmp_path / "results.jsonl", new):  # folder, legacy name, file
        out = subprocess.run([sys.executable, str(script), str(arg)], capture_output=True,
                             text=True, check=True).stdout
        assert "rq_assign_gpu" in out and "test_old" not in out and "4.00x" in out, arg
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "none")],
                         capture_output=True, text=True, check=True).stdout
    assert out.startswith("no results")


def test_terminal_summary_hook_prints_our_table(monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_conftest",
                                                  REPO / "benchmarks" / "conftest.py")
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)
    monkeypatch.setattr(common, "ROWS", list(ROWS))
    monkeypatch.delenv("ONEREC_BENCH_OUT", raising=False)
    lines = []

    class Reporter:
        def section(self, title):
            lines.append(f"== {title}")

        def write_line(self, line):
            lines.append(line)

    conftest.pytest_terminal_summary(Reporter(), 0, None)
    assert lines[0] == "== onerec benchmark summary"
    assert any(line.startswith("kmeans_step_cpu") and "8.00x" in line for line in lines)


@pytest.mark.parametrize("bench", ["bench_kmeans.py"])
def test_fit_benchmarks_time_the_fit(bench):
    """pytest-benchmark's row for a fit used to time `lambda: None` (644 ns)."""
    assert "lambda: None" not in (REPO / "benchmarks" / bench).read_text()


def test_cpu_times_are_interleaved(monkeypatch):
    """Ours and the anchor alternate (rotating order), so load drift lands in both."""
    order = []
    fns = {"ours": lambda: order.append("o"), "anchor": lambda: order.append("a")}
    t = common.cpu_times_ms(fns, repeats=6, warmup=0, min_time_s=0.0)
    assert t["ours"].samples == t["anchor"].samples == 6
    assert "".join(order) == "oa" "ao" "oa" "ao" "oa" "ao"


def test_device_summary_counts_tests_and_names_every_failing_file(tmp_path):
    """scripts/device_summary.py: the device check's table from JUnit XML. Past 40 failures the
    list is cut, and a line says which files the rest are in (no family hidden)."""
    sys.path.insert(0, str(REPO / "scripts"))
    import device_summary

    cases = [f'<testcase classname="tests.kernels.test_{"moe" if i < 30 else "rq"}" name="t{i}">'
             f'<failure message="boom {i}&#10;detail"/></testcase>' for i in range(45)]
    cases += ['<testcase classname="tests.test_x" name="ok"/>',
              '<testcase classname="tests.test_x" name="s"><skipped message="needs CUDA"/></testcase>',
              '<testcase classname="tests.test_y" name="e"><error message="fixture"/></testcase>']
    (tmp_path / "junit.xml").write_text(f"<testsuites><testsuite>{''.join(cases)}"
                                        "</testsuite></testsuites>")
    lines = device_summary.test_summary(str(tmp_path / "junit.xml"))
    assert lines[0] == "tests: 1 passed, 45 failed, 1 error, 1 skipped"
    assert lines[1] == "  FAILED tests.kernels.test_moe::t0: boom 0"
    assert sum(line.startswith("  FAILED") or line.startswith("  ERROR") for line in lines) == 40
    more = next(line for line in lines if line.startswith("  ... 6 more"))
    assert more.endswith("tests.kernels.test_moe 30, tests.kernels.test_rq 15, tests.test_y 1")
    assert "       1 x needs CUDA" in lines
