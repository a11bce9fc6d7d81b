"""Print the benchmark rows written by benchmarks/common.emit() as a compact table."""
import json
import sys

# Columns worth a glance, in order; anything else stays in the JSON.
KEYS = ("time_ms", "step_ms", "search_ms", "fit_ms", "level0_ms", "level1_ms", "level2_ms",
        "tflops", "pct_of_bf16_peak", "speedup_vs_bf16_gemm", "speedup_vs_bf16",
        "speedup_vs_fp32", "speedup_vs_anchor", "speedup_vs_reference", "speedup_vs_python_loop",
        "meets_target")


def main(path: str) -> int:
    try:
        rows = [json.loads(line) for line in open(path) if line.strip()]
    except FileNotFoundError:
        print(f"no results ({path} missing)")
        return 0
    width = max((len(r["name"]) for r in rows), default=10)
    for row in rows:
        cells = [f"{k}={row[k]:.4g}" for k in KEYS if isinstance(row.get(k), (int, float))]
        print(f"{row['name']:<{width}}  " + "  ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "out/device_check/results.jsonl"))
