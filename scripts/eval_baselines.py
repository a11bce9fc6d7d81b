"""Evaluate the baselines side by side on one dataset (the table of issue 12's "Evaluation").

    python scripts/eval_baselines.py --data ml-100k:../shared/data/ml-100k --out table.json

Prints the markdown table (both protocols: consumed items excluded / kept) and writes the dict
as JSON with --out. Everything is seeded (--seed); SASRec trains here (--sasrec-epochs).
"""
from __future__ import annotations

import argparse
import json
import time

from onerec.data import load_dataset
from onerec.eval import baseline_rankers, compare_rankers


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="synthetic")
    ap.add_argument("--split", default="test", choices=("valid", "test"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--baselines", default="popularity,co-occurrence,history prior,sasrec")
    ap.add_argument("--sasrec-epochs", type=int, default=100)
    ap.add_argument("--sasrec-max-len", type=int, default=100)
    ap.add_argument("--max-users", type=int, default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    ds = load_dataset(args.data)
    print(ds.summary())
    rankers = baseline_rankers(ds, names=[n.strip() for n in args.baselines.split(",")],
                               seed=args.seed,
                               sasrec_options={"epochs": args.sasrec_epochs,
                                               "max_len": args.sasrec_max_len})
    table = compare_rankers(ds, rankers, split=args.split, max_users=args.max_users)
    sas = rankers.get("sasrec")
    if sas is not None:
        table["sasrec_train"] = sas.report
        print(f"sasrec: {sas.report['epochs']} epochs in {sas.report['seconds']:.1f} s, loss "
              f"{sas.report['loss'][0]:.3f} -> {sas.report['loss'][-1]:.3f}")
    table["command"] = "python scripts/eval_baselines.py " + " ".join(
        f"--{k.replace('_', '-')} {v!r}" for k, v in vars(args).items() if v is not None)
    table["seconds"] = time.perf_counter() - t0
    print(table["markdown"])
    print(f"total {table['seconds']:.1f} s")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(table, f, indent=1)
    return table


if __name__ == "__main__":
    main()
