"""The README's quality table: test AUC, GAUC and logloss (mean and standard deviation over seeds) and training
samples per second for base, din with PReLU, din with Dice and din-seq on MovieLens-100k.

    python benchmarks/quality_table.py --seeds 0 1 2 --epochs 5 --batch-size 512

MovieLens-100k is prepared with examples/movielens-100k.toml from ../shared/data/ml-100k (not copied).
Each run's full result is appended to --results as a JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from din_export.model import ModelConfig
from din_export.pipeline import DataSource, train_and_export
from din_export.prepare import SPEC_FILE, Sources, prepare
from din_export.train import TrainConfig

ROOT = Path(__file__).resolve().parent.parent
ML100K = ROOT.parent / "shared" / "data" / "ml-100k"
RECIPE = ROOT / "examples" / "movielens-100k.toml"
VARIANTS = {
    "base (mean pooling)": {"variant": "base"},
    "din, PReLU": {"variant": "din", "mlp_activation": "prelu"},
    "din, Dice": {"variant": "din", "mlp_activation": "dice"},
    "din-seq (Transformer encoder)": {"variant": "din-seq"},
}


def run(samples: Path, name: str, seed: int, epochs: int, batch_size: int, scratch: Path) -> dict:
    source = DataSource(samples / "train.parquet", samples / "valid.parquet", samples / "test.parquet")
    manifest = train_and_export(source, scratch / f"{name}-{seed}".replace(" ", "_").replace(",", ""), samples / SPEC_FILE,
                                ModelConfig(**VARIANTS[name]), TrainConfig(epochs=epochs, batch_size=batch_size, seed=seed, progress=False))
    test = manifest["metrics"]["test"]
    return {"model": name, "seed": seed, "auc": test["auc"], "gauc": test["gauc"], "logloss": test["logloss"],
            "best_epoch": manifest["metrics"]["best_epoch"], "samples_per_second": manifest["training"]["samples_per_second"]}


def _cell(rows: list[dict], key: str, digits: int = 4) -> str:
    values = [r[key] for r in rows]
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {spread:.{digits}f}"


def summarise(rows: list[dict]) -> str:
    lines = ["| model | test AUC | test GAUC | test logloss | training samples/s |", "|---|---:|---:|---:|---:|"]
    for name in VARIANTS:
        mine = [r for r in rows if r["model"] == name]
        if mine:
            lines.append(f"| {name} | {_cell(mine, 'auc')} | {_cell(mine, 'gauc')} | {_cell(mine, 'logloss')} | "
                         f"{_cell(mine, 'samples_per_second', 0)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--models", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--results", type=Path, default=Path("quality-runs.jsonl"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        samples = Path(scratch) / "ml-100k"
        prepare(RECIPE, Sources(ML100K / "ml-100k.inter", ML100K / "ml-100k.item", ML100K / "ml-100k.user"), samples)
        for name in args.models:
            for seed in args.seeds:
                row = run(samples, name, seed, args.epochs, args.batch_size, Path(scratch))
                rows.append(row)
                with open(args.results, "a", encoding="utf-8") as stream:
                    stream.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)
    print(summarise(rows))


if __name__ == "__main__":
    main()
