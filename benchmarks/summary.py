"""The benchmark summary a performance engineer reads: one line per recorded row with op, shape,
backend, our median time, the fastest anchor measured in the same run, their ratio, the rate
(TFLOP/s, GFLOP/s or GB/s), the percent of the measured peak (GPU) and the spread of our time.

Rows are what benchmarks/common.record() keeps (in process) or writes (JSON lines); the
benchmarks name their numbers differently (time_ms, cpp_ms, step_ms, ...), so the columns are
read by the key conventions below. Pure standard library: scripts/results_table.py uses it too.
"""
from __future__ import annotations

import glob
import json
import os
import re

# Our time: the first of these keys a row has.
OURS_KEYS = ("time_ms", "cpp_ms", "step_ms", "search_ms", "fit_ms", "cpp_fit_ms", "ours_ms")
# Anchors measured in the same run (a published figure such as static_reference_ms is not one).
ANCHOR_KEY = re.compile(r"^(anchor_.+|.+_anchor|reference|reference_fit|python_.+)_ms$")
SHAPE_KEYS = (("N", "N"), ("D", "D"), ("K", "K"), ("L", "L"), ("users", "B"), ("beams", "W"),
              ("vocab", "V"), ("items", "items"), ("iters", "iters"), ("dtype", ""))
COLUMNS = ("op", "shape", "backend", "ours ms", "anchor", "anchor ms", "ratio", "rate",
           "% peak", "spread")


def _num(row: dict, key: str):
    v = row.get(key)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _fmt_ms(ms: float) -> str:
    return f"{ms:.4g}" if ms >= 0.01 else f"{ms:.2e}"


def summarize(row: dict) -> dict:
    """The summary columns of one recorded row (missing values: '-')."""
    name = row.get("name", "?")
    op = re.sub(r"^test_(bench_)?", "", name.split("[", 1)[0])
    params = name[len(name.split("[", 1)[0]):]
    shape = " ".join(f"{label}={row[key]}" if label else str(row[key])
                     for key, label in SHAPE_KEYS if key in row) or params or "-"
    ours_key = next((k for k in OURS_KEYS if _num(row, k) is not None), None)
    backend = row.get("backend") or (
        "cpp" if ours_key and ours_key.startswith("cpp") else
        "gpu" if re.search(r"gpu|cuda|static", name) else "-")
    out = dict.fromkeys(COLUMNS, "-")
    out.update(op=op, shape=shape, backend=backend)
    if ours_key is None:
        levels = [k for k in row if re.fullmatch(r"level\d+_ms", k)]
        if levels:  # per-level step times: the sum of one search's steps
            ours_key, ours = "+".join(levels), sum(float(row[k]) for k in levels)
        else:
            return out
    else:
        ours = float(row[ours_key])
    out["ours ms"] = _fmt_ms(ours)
    anchors = {k[:-3]: float(row[k]) for k in row if ANCHOR_KEY.match(k) and _num(row, k)}
    if anchors:
        best = min(anchors, key=anchors.get)  # the fastest anchor is the fair one
        out.update({"anchor": best.removeprefix("anchor_"), "anchor ms": _fmt_ms(anchors[best]),
                    "ratio": f"{anchors[best] / ours:.2f}x" if ours > 0 else "-"})
    for key, unit in (("tflops", "TFLOP/s"), ("lloyd_tflops_lower_bound", "TFLOP/s"),
                      ("cpp_gflops", "GFLOP/s"), ("gbps", "GB/s")):
        if _num(row, key) is not None:
            out["rate"] = f"{_num(row, key):.3g} {unit}"
            break
    pct = next((k for k in row if k.startswith("pct_of") and _num(row, k) is not None), None)
    if pct:
        out["% peak"] = f"{_num(row, pct):.1f}"
    spread = _num(row, f"{ours_key}_spread_pct")
    if spread is not None:
        n = row.get(f"{ours_key}_samples")
        out["spread"] = f"±{spread / 2:.1f}%" + (f" n={n}" if n else "")
    return out


def format_table(rows: list[dict]) -> str:
    """The summary of `rows` as an aligned text table with a legend."""
    if not rows:
        return "no benchmark rows recorded"
    lines = [summarize(r) for r in rows]
    width = {c: max(len(c), *(len(str(line[c])) for line in lines)) for c in COLUMNS}
    right = {"ours ms", "anchor ms", "ratio", "% peak"}

    def fmt(line):
        cells = (str(line[c]).rjust(width[c]) if c in right else str(line[c]).ljust(width[c])
                 for c in COLUMNS)
        return "  ".join(cells).rstrip()

    legend = ("ours / anchor: median ms (GPU: CUDA events; CPU: wall clock, >= 5 runs and >= 1 s); "
              "anchor: the fastest measured in the same run; ratio = anchor / ours (> 1: ours "
              "faster); % peak: of the bf16 GEMM peak measured in the run; spread: half the "
              "interquartile range of our time, n runs")
    return "\n".join([fmt(dict(zip(COLUMNS, COLUMNS))), fmt({c: "-" * width[c] for c in COLUMNS}),
                      *(fmt(line) for line in lines), legend])


def results_path(path: str) -> str | None:
    """A results file as given, or the newest results-*.jsonl of a folder (each benchmark run
    writes its own; a legacy results.jsonl counts when there is no other)."""
    if not os.path.isdir(path):
        if os.path.exists(path):
            return path
        if os.path.basename(path) == "results.jsonl":  # the old single file's name: its folder
            return results_path(os.path.dirname(path) or ".")
        return None
    files = sorted(glob.glob(os.path.join(path, "results-*.jsonl")), key=os.path.getmtime)
    if files:
        return files[-1]
    legacy = os.path.join(path, "results.jsonl")
    return legacy if os.path.exists(legacy) else None


def load_rows(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
