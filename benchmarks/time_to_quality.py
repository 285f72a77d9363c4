"""Time to quality (MLPerf Training's measure): the wall time until a model first reaches a target validation AUC.
DeepCTR-Torch 0.3.0's DIN (peer_deepctr.py's settings) trains all --peer-epochs epochs first; its best validation
AUC is the target. Then din-export's default DIN trains as `train-and-export` would (its own early stopping). Both
in this process, one after the other, the same torch threads, the same prepared MovieLens-100k ids+genre samples
and validation split (encoded once by din-export). Time runs from the start of training and includes each epoch's
validation; a model reaches the target at the end of the first epoch whose validation AUC is at least it (epochs
are the unit: a model that gets there within its first epoch is credited with the whole epoch).

    .venv/bin/pip install deepctr-torch==0.3.0 scikit-learn requests    # benchmark-only, not a project dependency
    MALLOC_MMAP_THRESHOLD_=17179869184 MALLOC_TRIM_THRESHOLD_=17179869184 python benchmarks/time_to_quality.py
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
from pathlib import Path

import torch
from machine import cpu_model
from recipe_search import prepared
from training_epoch import head

from din_export.config import ModelConfig, TrainConfig
from din_export.data.splits import EncodedData
from din_export.model.family import build_model
from din_export.training.train import train

Curve = list[tuple[int, float, float]]  # (epoch, seconds since training began, validation AUC)


def timed(curve: Curve, started: float):  # noqa: ANN201 - the on_epoch callback
    def on_epoch(epoch: int, valid_auc: float) -> None:
        curve.append((epoch, time.perf_counter() - started, valid_auc))
    return on_epoch


def peer_curve(data: EncodedData, seed: int, epochs: int) -> Curve:
    from peer_deepctr import run as run_peer

    curve: Curve = []
    run_peer(data, seed, "din", patience=epochs + 1, on_epoch=timed(curve, time.perf_counter()), epochs=epochs)
    return curve


def our_curve(data: EncodedData, seed: int, epochs: int) -> Curve:
    curve: Curve = []
    torch.manual_seed(seed)
    model = build_model(data.schema, ModelConfig())
    config = TrainConfig(seed=seed, progress=False, epochs=epochs)
    train(model, data.splits["train"], data.splits["valid"], config, on_epoch=timed(curve, time.perf_counter()))
    return curve


def reached(curve: Curve, target: float) -> tuple[int, float] | None:
    """(epoch, seconds) at the end of the first epoch at or above the target, or None."""
    return next(((epoch, seconds) for epoch, seconds, auc in curve if auc >= target), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--peer-epochs", type=int, default=10, help="the peer's epochs; its best validation AUC is the target")
    parser.add_argument("--epochs", type=int, default=TrainConfig().epochs, help="din-export's most epochs (its default)")
    parser.add_argument("--target", type=float, default=None, help="a target validation AUC of your own instead (the peer does not run)")
    parser.add_argument("--train-rows", type=int, default=None, help="train both on the first rows of the training split only (CI runs it small)")
    args = parser.parse_args()
    if args.target is None and importlib.util.find_spec("deepctr_torch") is None:
        raise SystemExit("the target is DeepCTR-Torch's best: pip install deepctr-torch==0.3.0 scikit-learn requests, or give --target")
    torch.set_num_threads(2)
    print(f"CPU: {cpu_model()}; torch threads {torch.get_num_threads()}; MovieLens-100k ids+genre; seed {args.seed}")
    with tempfile.TemporaryDirectory() as scratch:
        data = prepared("ids-genre", Path(scratch))
        data.splits["train"] = head(data.splits["train"], args.train_rows)
        curves = {} if args.target is not None else {"DeepCTR-Torch DIN": peer_curve(data, args.seed, args.peer_epochs)}
        curves["din-export DIN"] = our_curve(data, args.seed, args.epochs)
    if args.target is None:
        target = max(auc for _, _, auc in curves["DeepCTR-Torch DIN"])
        print(f"\ntarget: the peer's best validation AUC over {args.peer_epochs} epochs, {target:.4f}\n")
    else:
        target = args.target
        print(f"\ntarget: validation AUC {target:.4f} (--target)\n")
    print("| model | best validation AUC | epochs run | seconds run | epoch reaching the target | seconds to the target |"
          "\n|---|---:|---:|---:|---:|---:|")
    times = {}
    for name, curve in curves.items():
        hit = reached(curve, target)
        times[name] = hit[1] if hit else None
        print(f"| {name} | {max(auc for _, _, auc in curve):.4f} | {len(curve)} | {curve[-1][1]:.1f} | "
              f"{hit[0] if hit else 'not reached'} | {f'{hit[1]:.1f}' if hit else '-'} |")
    if args.target is None:
        ours, peer = times["din-export DIN"], times["DeepCTR-Torch DIN"]
        print(f"\ntime to the target, DeepCTR-Torch / din-export: {f'{peer / ours:.1f}x' if ours else 'din-export did not reach it'}")


if __name__ == "__main__":
    main()
