"""Print the benchmark rows written by benchmarks/common.emit() as the summary table.

Usage: python scripts/results_table.py [FILE_OR_DIR]   (a folder: its newest results-*.jsonl,
the file of the latest benchmark run; default out/device_check)
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))
from summary import format_table, load_rows, results_path  # noqa: E402


def main(path: str) -> int:
    found = results_path(path)
    if found is None:
        print(f"no results ({path}: no results file)")
        return 0
    print(f"{found}:")
    print(format_table(load_rows(found)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "out/device_check"))
