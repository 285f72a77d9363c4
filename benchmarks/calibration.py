"""Calibration, measured: which post-hoc calibration `train-and-export` defaults to, and what the exact correction
for negative downsampling does. One model is trained per seed (`train-and-export --calibration none`, through the
CLI); each method is then fitted on that model's validation logits and scored on its test split, so the methods
differ only in the map from logit to probability:

- uncorrected: the model's own sigmoid, as if nobody had downsampled;
- correction: the exact shift by log(keep_negatives) alone (`--calibration none`);
- platt, isotonic: the correction, then the fitted map (`--calibration platt|isotonic`).

    python benchmarks/calibration.py --data impressions --seeds 0 1 2   # generated, 5% clicks, a tenth of non-clicks kept
    python benchmarks/calibration.py --data movielens --seeds 0 1 2     # MovieLens-100k ids + genre, sampled negatives
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from machine import cpu_model

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
ML100K = ROOT.parent / "shared" / "data" / "ml-100k"
BIN = Path(sys.executable).parent
METHODS = ("uncorrected", "correction", "platt", "isotonic")


def prepared(kind: str, folder: Path, seed: int, events: int, keep: float) -> Path:
    """A prepared sample folder: the generated impression log (seeded) or MovieLens-100k ids + genre."""
    from din_export.data.synthetic import IMPRESSIONS_SPEC_PATH, generate_impressions

    out = folder / f"{kind}-{seed}"
    if kind == "impressions":
        log, items = generate_impressions(events, seed=seed)
        pq.write_table(log, folder / "log.parquet")
        pq.write_table(items, folder / "items.parquet")
        recipe = folder / "recipe.toml"
        recipe.write_text(IMPRESSIONS_SPEC_PATH.read_text().replace("keep_negatives = 0.1", f"keep_negatives = {keep}"))
        sources = ["--log", str(folder / "log.parquet"), "--items", str(folder / "items.parquet")]
    else:
        recipe = ROOT / "examples" / "movielens-100k-ids-genre.toml"
        sources = ["--log", str(ML100K / "ml-100k.inter"), "--items", str(ML100K / "ml-100k.item")]
    subprocess.run([str(BIN / "din-export"), "prepare", "--spec", str(recipe), *sources, "--out", str(out)], check=True,
                   capture_output=True)
    return out


def scores(data: Path, bundle: Path) -> dict[str, dict[str, float]]:
    """Each method's test metrics for the bundle's model, fitted on its validation logits."""
    from din_export.bundle import load_bundle
    from din_export.data.samples import read_table
    from din_export.data.splits import encode_split
    from din_export.model.calibration import Calibration, CalibrationFit, fit_calibration
    from din_export.training.metrics import evaluate
    from din_export.training.train import predict_logits
    from din_runtime.encoding import FeatureEncoder

    loaded = load_bundle(bundle)
    keep = loaded.spec.keep_negatives
    splits = {name: encode_split(read_table(data / f"{name}.parquet", loaded.spec), loaded.spec, FeatureEncoder(loaded.schema))
              for name in ("valid", "test")}
    logits = {name: predict_logits(loaded.din, split) for name, split in splits.items()}
    fits = {"uncorrected": CalibrationFit(), "correction": CalibrationFit(keep_negatives=keep),
            **{method: fit_calibration(method, logits["valid"], splits["valid"].labels, keep) for method in ("platt", "isotonic")}}
    result = {}
    for method, fit in fits.items():
        with torch.inference_mode():
            probabilities = Calibration(fit)(torch.from_numpy(logits["test"])).numpy().astype(np.float64)
        result[method] = evaluate(splits["test"].labels, probabilities, None)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=("impressions", "movielens"), default="impressions")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--events", type=int, default=500_000, help="impressions of the generated log")
    parser.add_argument("--keep", type=float, default=0.1, help="keep_negatives of the generated log's recipe")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: train-and-export's)")
    args = parser.parse_args()
    runs: list[dict[str, dict[str, float]]] = []
    with tempfile.TemporaryDirectory() as scratch:
        for seed in args.seeds:
            data = prepared(args.data, Path(scratch), seed, args.events, args.keep)
            bundle = Path(scratch) / f"bundle-{seed}"
            epochs = ["--epochs", str(args.epochs)] if args.epochs else []
            subprocess.run([str(BIN / "din-export"), "train-and-export", "--data", str(data), "--spec", str(data / "spec.toml"),
                            "--calibration", "none", "--seed", str(seed), *epochs, "--out", str(bundle), "--quiet"],
                           check=True, capture_output=True)
            runs.append(scores(data, bundle))
            print(f"seed {seed}: " + ", ".join(f"{m} ECE {runs[-1][m]['ece']:.4f} ratio {runs[-1][m]['calibration_ratio']:.3f}"
                                               for m in METHODS), flush=True)
    label = (f"generated impressions ({args.events:,}, keep_negatives {args.keep:g})" if args.data == "impressions"
             else "MovieLens-100k ids + genre (one sampled negative per rating)")
    print(f"\nCPU: {cpu_model()}; {label}; test split; seeds {args.seeds}; mean (min-max) over seeds\n")
    print("| served probability | ECE | calibration ratio | logloss | AUC |")
    print("|---|---:|---:|---:|---:|")
    for method in METHODS:
        cells = []
        for key in ("ece", "calibration_ratio", "logloss", "auc"):
            values = np.array([run[method][key] for run in runs])
            cells.append(f"{values.mean():.4f} ({values.min():.4f}-{values.max():.4f})" if len(values) > 1 else f"{values[0]:.4f}")
        print(f"| {method} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
