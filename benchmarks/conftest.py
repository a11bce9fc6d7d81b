import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # benchmarks/common.py


def pytest_addoption(parser):
    parser.addoption("--quick", action="store_true", default=False,
                     help="short shapes and repetitions (scripts/device_check.sh)")


def pytest_configure(config):
    if config.getoption("--quick"):
        os.environ["ONEREC_BENCH_QUICK"] = "1"


@pytest.fixture
def quick():
    return os.environ.get("ONEREC_BENCH_QUICK", "0") == "1"


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Our own table, from the rows the benchmarks recorded (pytest-benchmark's table above it
    times one round per row only so that its JSON keeps our extra_info)."""
    import common
    from summary import format_table

    if not common.ROWS:
        return
    terminalreporter.section("onerec benchmark summary")
    for line in format_table(common.ROWS).splitlines():
        terminalreporter.write_line(line)
    out = os.environ.get("ONEREC_BENCH_OUT")
    if out:
        terminalreporter.write_line(f"rows written to {common.results_file(out)}")
