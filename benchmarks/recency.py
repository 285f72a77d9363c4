"""Recency in the attention and the model family, measured where DIN without recency gets worse the more history
it sees: MovieLens-100k with a recipe (the ids+genre one by default), prepared at several max_len, each model
(`--models`: din, dien, bst, din-seq, base) trained with the defaults and `--recency none` (blind to order and
time), `position` (each behaviour's log2 bucket back from the most recent as an embedding added to its key), `time`
(the behaviours' times in the samples: each behaviour's age at the sample's time in log2 buckets of seconds, added
the same way) and/or `time+position` (both).
Test AUC, GAUC and logloss from each bundle's manifest, per seed, then mean and sd, and training samples/s.

    python benchmarks/recency.py --max-lens 10 50 200 --seeds 0 1 2
    python benchmarks/recency.py --max-lens 50 --recency position --models din dien bst din-seq --seeds 0 1 2
    python benchmarks/recency.py --max-lens 10 50 200 --recency position time time+position
    python benchmarks/recency.py --max-lens 50 --recency time+position --models dien bst din din-seq --seeds 0 1 2 --peer-seeds 0
    python benchmarks/recency.py --max-lens 200 50 --recency time+position --flags "--augmentation crop --augmentation-rate 0.5"
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from machine import cpu_model

ROOT = Path(__file__).resolve().parent.parent
ML100K = ROOT.parent / "shared" / "data" / "ml-100k"
RECIPES = {"ids-genre": ROOT / "examples" / "movielens-100k-ids-genre.toml", "ids": ROOT / "examples" / "movielens-100k.toml"}
BIN = Path(sys.executable).parent
RECENCIES = ("none", "position", "time", "time+position")
TIMES = '\n[features.hist_time]\nkind = "times"\n'  # the samples carry each behaviour's time (prepare fills it)
MODELS = ("din", "dien", "bst", "din-seq", "base")
METRICS = ("auc", "gauc", "logloss")


def din_export(*args: object) -> str:
    result = subprocess.run([str(BIN / "din-export"), *map(str, args)], capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"din-export {args[0]} failed: {result.stderr[-2000:]}")
    return result.stdout


def summary(values: list[float]) -> str:
    return f"{statistics.mean(values):.4f}" + (f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else "")


def peer_dien(data: Path, max_len: int, seeds: list[int]) -> tuple:
    """DeepCTR-Torch's DIEN on the same prepared samples (encoded by din-export; it has no input for times), a row
    of the table."""
    import torch
    from peer_deepctr import run

    from din_export.data.source import DataSource
    from din_export.data.spec import load_spec
    from din_export.data.splits import load_data

    torch.set_num_threads(2)
    encoded = load_data(DataSource(data / "train.parquet", data / "valid.parquet", data / "test.parquet"), load_spec(data / "untimed.toml"), seed=0)
    found: dict[str, list[float]] = {metric: [] for metric in METRICS}
    seconds, speeds = [], []
    for seed in seeds:
        result = run(encoded, seed, "dien")
        for metric in METRICS:
            found[metric].append(result[metric])
        speeds.append(result["samples_per_second"])
        seconds.append(result["epochs_run"] * len(encoded.splits["train"]) / result["samples_per_second"])
        print(f"max_len {max_len}, DeepCTR-Torch dien, seed {seed}: {json.dumps(result)}", flush=True)
    return max_len, "deepctr-torch dien", "none", found, statistics.mean(seconds), statistics.mean(speeds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-lens", nargs="+", type=int, default=[10, 50, 200])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--recency", nargs="+", choices=RECENCIES, default=list(RECENCIES))
    parser.add_argument("--models", nargs="+", choices=MODELS, default=["din"])
    parser.add_argument("--recipe", choices=list(RECIPES), default="ids-genre")
    parser.add_argument("--epoch-samples", type=int, default=0, help="train-and-export --epoch-samples, one epoch (CI runs it small)")
    parser.add_argument("--scratch", type=Path, help="where samples and bundles go (default: a temporary folder)")
    parser.add_argument("--flags", default="", help="more train-and-export flags for every run, in one string "
                        "(e.g. \"--augmentation crop --augmentation-rate 0.5\")")
    parser.add_argument("--peer-seeds", nargs="*", type=int, help="also DeepCTR-Torch 0.3.0's DIEN on the same samples, with these "
                        "seeds (peer_deepctr.py's settings; needs deepctr-torch and scikit-learn installed)")
    args = parser.parse_args()
    recipe_path = RECIPES[args.recipe]
    print(f"CPU: {cpu_model()}; MovieLens-100k, {recipe_path.name}; seeds {args.seeds}"
          + (f"; train-and-export {args.flags}" if args.flags else ""), flush=True)
    rows = []
    with tempfile.TemporaryDirectory(dir=args.scratch) as scratch:
        for max_len in args.max_lens:
            recipe = Path(scratch) / f"recipe-{max_len}.toml"
            text = re.sub(r"(?m)^max_len = \d+$", f"max_len = {max_len}", recipe_path.read_text())
            recipe.write_text(text if 'kind = "times"' in text else text + TIMES, encoding="utf-8")
            data = Path(scratch) / f"samples-{max_len}"
            users = ["--users", ML100K / "ml-100k.user"] if "[users]" in text else []
            din_export("prepare", "--spec", recipe, "--log", ML100K / "ml-100k.inter", "--items", ML100K / "ml-100k.item", *users, "--out", data)
            timed_spec = (data / "spec.toml").read_text()  # the same samples read without their times: a spec without the feature
            (data / "untimed.toml").write_text(re.sub(r'(?ms)^\[features\."?hist_time"?\]\nkind = "times"\n', "", timed_spec))
            small = ["--epoch-samples", args.epoch_samples, "--epochs", 1] if args.epoch_samples else []
            for model in args.models:
                for recency in args.recency:
                    found: dict[str, list[float]] = {metric: [] for metric in METRICS}
                    seconds, speeds = [], []
                    for seed in args.seeds:
                        bundle = Path(scratch) / f"{model}-{max_len}-{recency}-{seed}"
                        spec = data / ("spec.toml" if "time" in recency else "untimed.toml")
                        din_export("train-and-export", "--data", data, "--spec", spec, "--model", model,
                                   "--recency", "position" if "position" in recency else "none",
                                   "--seed", seed, *small, *shlex.split(args.flags), "--out", bundle, "--quiet")
                        manifest = json.loads((bundle / "manifest.json").read_text())
                        for metric in METRICS:
                            found[metric].append(manifest["metrics"]["test"][metric])
                        seconds.append(manifest["seconds"]["train"])
                        speeds.append(manifest["training"]["samples_per_second"])
                    rows.append((max_len, model, recency, found, statistics.mean(seconds), statistics.mean(speeds)))
                    print(f"max_len {max_len}, {model}, recency {recency}: {json.dumps(found)}", flush=True)
            if args.peer_seeds:
                rows.append(peer_dien(data, max_len, args.peer_seeds))
    print("\n| max_len | model | recency | test AUC | test GAUC | test logloss | training s | samples/s |\n|---:|---|---|---:|---:|---:|---:|---:|")
    for max_len, model, recency, found, seconds, speed in rows:
        print(f"| {max_len} | {model} | {recency} | {summary(found['auc'])} | {summary(found['gauc'])} | {summary(found['logloss'])} "
              f"| {seconds:.0f} | {speed:,.0f} |")


if __name__ == "__main__":
    main()
