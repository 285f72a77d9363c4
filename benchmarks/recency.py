"""Recency in the attention, measured where DIN without it gets worse the more history it sees: MovieLens-100k with
the ids+genre recipe, prepared at several max_len, DIN trained with the defaults and `--recency none` (the
paper's DIN, blind to order) and `--recency position` (each behaviour's log2 bucket back from the most recent as
an embedding added to its key). Test AUC, GAUC and logloss from each bundle's manifest, per seed, then mean and sd.

    python benchmarks/recency.py --max-lens 10 50 200 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from machine import cpu_model

ROOT = Path(__file__).resolve().parent.parent
ML100K = ROOT.parent / "shared" / "data" / "ml-100k"
RECIPE = ROOT / "examples" / "movielens-100k-ids-genre.toml"
BIN = Path(sys.executable).parent
RECENCIES = ("none", "position")
METRICS = ("auc", "gauc", "logloss")


def din_export(*args: object) -> str:
    result = subprocess.run([str(BIN / "din-export"), *map(str, args)], capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"din-export {args[0]} failed: {result.stderr[-2000:]}")
    return result.stdout


def summary(values: list[float]) -> str:
    return f"{statistics.mean(values):.4f}" + (f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-lens", nargs="+", type=int, default=[10, 50, 200])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--recency", nargs="+", choices=RECENCIES, default=list(RECENCIES))
    parser.add_argument("--epoch-samples", type=int, default=0, help="train-and-export --epoch-samples, one epoch (CI runs it small)")
    parser.add_argument("--scratch", type=Path, help="where samples and bundles go (default: a temporary folder)")
    args = parser.parse_args()
    print(f"CPU: {cpu_model()}; MovieLens-100k, {RECIPE.name}; seeds {args.seeds}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(dir=args.scratch) as scratch:
        for max_len in args.max_lens:
            recipe = Path(scratch) / f"recipe-{max_len}.toml"
            recipe.write_text(re.sub(r"(?m)^max_len = \d+$", f"max_len = {max_len}", RECIPE.read_text()), encoding="utf-8")
            data = Path(scratch) / f"samples-{max_len}"
            din_export("prepare", "--spec", recipe, "--log", ML100K / "ml-100k.inter", "--items", ML100K / "ml-100k.item", "--out", data)
            small = ["--epoch-samples", args.epoch_samples, "--epochs", 1] if args.epoch_samples else []
            for recency in args.recency:
                found: dict[str, list[float]] = {metric: [] for metric in METRICS}
                seconds = []
                for seed in args.seeds:
                    bundle = Path(scratch) / f"din-{max_len}-{recency}-{seed}"
                    din_export("train-and-export", "--data", data, "--spec", data / "spec.toml", "--recency", recency, "--seed", seed,
                               *small, "--out", bundle, "--quiet")
                    manifest = json.loads((bundle / "manifest.json").read_text())
                    for metric in METRICS:
                        found[metric].append(manifest["metrics"]["test"][metric])
                    seconds.append(manifest["seconds"]["train"])
                rows.append((max_len, recency, found, statistics.mean(seconds)))
                print(f"max_len {max_len}, recency {recency}: {json.dumps(found)}", flush=True)
    print("\n| max_len | recency | test AUC | test GAUC | test logloss | training s |\n|---:|---|---:|---:|---:|---:|")
    for max_len, recency, found, seconds in rows:
        print(f"| {max_len} | {recency} | {summary(found['auc'])} | {summary(found['gauc'])} | {summary(found['logloss'])} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
