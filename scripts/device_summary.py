"""The device check's closing table: test counts and failures from pytest's JUnit XML, then the
benchmark rows (scripts/results_table.py). Prints whatever exists; never fails on a missing file.

Usage: python scripts/device_summary.py OUTDIR
"""
from __future__ import annotations

import collections
import os
import sys
import xml.etree.ElementTree as ET

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def test_summary(junit_path: str) -> list[str]:
    if not os.path.exists(junit_path):
        return [f"tests: no results ({junit_path} missing: the tests phase did not run or finish)"]
    try:
        root = ET.parse(junit_path).getroot()
    except ET.ParseError as e:
        return [f"tests: unreadable {junit_path} ({e})"]
    counts = collections.Counter()
    failed, skips, failed_files = [], collections.Counter(), collections.Counter()
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        kinds = {child.tag for child in case}
        if "failure" in kinds or "error" in kinds:
            kind = "failed" if "failure" in kinds else "error"
            counts[kind] += 1
            failed_files[case.get('classname', '')] += 1
            node = case.find(kind if kind == "error" else "failure")
            msg = (node.get("message") or "").strip().splitlines()
            failed.append(f"  {kind.upper():6} {name}: {msg[0][:150] if msg else ''}")
        elif "skipped" in kinds:
            counts["skipped"] += 1
            skips[(case.find("skipped").get("message") or "")[:110]] += 1
        else:
            counts["passed"] += 1
    lines = ["tests: " + ", ".join(f"{counts[k]} {k}" for k in ("passed", "failed", "error", "skipped"))]
    lines += failed[:40]
    if len(failed) > 40:  # the list is cut: which files the rest are in
        lines.append(f"  ... {len(failed) - 40} more; failures and errors per file: "
                     + ", ".join(f"{name} {n}" for name, n in failed_files.most_common()))
    if skips:
        lines.append("  most common skip reasons:")
        lines += [f"    {n:4d} x {reason}" for reason, n in skips.most_common(6)]
    return lines


def main(outdir: str) -> int:
    for line in test_summary(os.path.join(outdir, "junit.xml")):
        print(line)
    print("benchmarks:")
    try:
        import results_table

        results_table.main(outdir)  # the folder's newest results-*.jsonl
    except Exception as e:  # the table must print whatever else exists
        print(f"  no benchmark rows ({type(e).__name__}: {e})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "out/device_check"))
