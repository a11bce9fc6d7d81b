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
