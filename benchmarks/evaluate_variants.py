"""The three architectures on MovieLens-100k ids + genre, each trained with the defaults and scored by `din-export
evaluate` on the test split (each user's last 10% of ratings with their sampled negatives): AUC, GAUC, ECE and,
with `--rank 100`, HR@10, NDCG@10 and MRR of each rated movie among 100 sampled unseen ones (the same negatives
for every model: one seed).

    python benchmarks/evaluate_variants.py --seed 0
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
from machine import cpu_model

ROOT = Path(__file__).resolve().parent.parent
ML100K = ROOT.parent / "shared" / "data" / "ml-100k"
BIN = Path(sys.executable).parent
VARIANTS = ("din", "base", "din-seq")


def din_export(*args: str) -> str:
    return subprocess.run([str(BIN / "din-export"), *map(str, args)], check=True, capture_output=True, text=True).stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="training seed (the negatives' seed is 0 for every model)")
    parser.add_argument("--negatives", type=int, default=100)
    parser.add_argument("--epoch-samples", type=int, default=0, help="train-and-export --epoch-samples (CI runs it small)")
    parser.add_argument("--test-rows", type=int, default=0, help="score only the first N test rows (0: all)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        data = Path(scratch) / "samples"
        din_export("prepare", "--spec", ROOT / "examples" / "movielens-100k-ids-genre.toml", "--log", ML100K / "ml-100k.inter",
                   "--items", ML100K / "ml-100k.item", "--out", data)
        test = data / "test.parquet"
        if args.test_rows:
            test = Path(scratch) / "test.parquet"
            pq.write_table(pq.read_table(data / "test.parquet").slice(0, args.test_rows), test)
        small = ["--epoch-samples", args.epoch_samples, "--epochs", 1] if args.epoch_samples else []
        for variant in args.variants:
            bundle = Path(scratch) / variant
            din_export("train-and-export", "--data", data, "--spec", data / "spec.toml", "--model", variant, "--seed", args.seed,
                       *small, "--out", bundle, "--quiet")
            result = json.loads(din_export("evaluate", bundle, "--data", test, "--rank", args.negatives, "--json"))
            rows.append((variant, result))
            print(f"{variant}: {json.dumps(result['ranking'])}", flush=True)
    ranking = rows[0][1]["ranking"]
    print(f"\nCPU: {cpu_model()}; test split, {rows[0][1]['rows']:,} rows; ranking: {ranking['positives']:,} positives, each among "
          f"{ranking['negatives']} negatives from {ranking['pool']} (seed 0); training seed {args.seed}\n")
    print("| model | AUC | GAUC | ECE | calibration ratio | HR@10 | NDCG@10 | MRR |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for variant, result in rows:
        r = result["ranking"]
        print(f"| {variant} | {result['auc']:.4f} | {result['gauc']:.4f} | {result['ece']:.4f} | {result['calibration_ratio']:.3f} "
              f"| {r['hr@10']:.4f} | {r['ndcg@10']:.4f} | {r['mrr']:.4f} |")


if __name__ == "__main__":
    main()
