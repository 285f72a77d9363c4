"""The model family's speed, each against DIN, in one process: training samples/s of din, dien, bst and din-seq
(`train()` over the first --rows rows of the MovieLens-100k ids+genre training split, one epoch per round) beside
DeepCTR-Torch 0.3.0's DIEN (`fit`, the settings of benchmarks/peer_deepctr.py, where it is installed), and served
latency through `Predictor` (CPU, 2 threads) of each model's bundle: `predict` of 1 and 256 rows and `rank` of
1,000 candidates for one user, 50 behaviours. Interleaved round by round (din, dien, bst, din-seq, peer, din, ...)
so that drift hits all alike; medians.

    MALLOC_MMAP_THRESHOLD_=17179869184 MALLOC_TRIM_THRESHOLD_=17179869184 \
        python benchmarks/family_speed.py --rows 40960 --rounds 3 --serving-rounds 30
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from machine import cpu_model
from training_epoch import epoch_inputs, head, interleaved

from din_export.config import ModelConfig, TrainConfig
from din_export.data.prepare import prepare
from din_export.data.rules import Sources
from din_export.data.source import DataSource
from din_export.data.spec import load_spec
from din_export.model.family import build_model
from din_export.pipeline import train_and_export
from din_export.training.train import train
from din_runtime import Predictor

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "examples" / "movielens-100k-ids-genre.toml"
ML100K = ROOT.parent / "shared" / "data" / "ml-100k"
MODELS = ("din", "dien", "bst", "din-seq")
USER_SIDE = ("user_id", "hist_item_id", "hist_genre", "hist_time", "event_time")  # what a ranking request sends for its user


def peer_dien_epoch(data, rows: int, batch_size: int) -> Callable[[], None] | None:  # noqa: ANN001 - din-export's EncodedData
    """One DeepCTR-Torch DIEN epoch over the first `rows` training rows, or None where DeepCTR-Torch is absent."""
    started = set(threading.enumerate())
    with contextlib.redirect_stdout(io.StringIO()):  # its import looks up its latest version in a thread that prints
        try:
            from peer_deepctr import peer_inputs, peer_model
        except ImportError:
            return None
        for thread in set(threading.enumerate()) - started:
            thread.join(timeout=60)
    model = peer_model("dien", data, 0)
    x = {name: array[:rows] for name, array in peer_inputs("dien", data, "train", 0).items()}
    labels = data.splits["train"].labels[:rows]

    def epoch() -> None:
        with contextlib.redirect_stdout(io.StringIO()):
            model.fit(x, labels, batch_size=batch_size, epochs=1, verbose=0)
    return epoch


def training_rates(samples: Path, rows: int, batch_size: int, rounds: int, models: list[str]) -> dict[str, float]:
    data, split, valid, config = epoch_inputs(samples, batch_size, rows)
    runs: dict[str, Callable[[], object]] = {}
    for variant in models:
        torch.manual_seed(0)
        model = build_model(data.schema, ModelConfig(variant=variant))
        train(model, head(split, 10 * batch_size), valid, config)  # warm: allocations and kernels
        runs[variant] = lambda model=model: train(model, split, valid, config)
    peer = peer_dien_epoch(data, len(split.labels), batch_size)
    if peer is not None:
        peer()  # its first epoch allocates
        runs["DeepCTR-Torch DIEN"] = peer
    return {name: len(split.labels) / seconds for name, seconds in interleaved(runs, rounds).items()}


def serving_latency(samples: Path, scratch: Path, rounds: int, bundle_samples: int, models: list[str]) -> dict[str, dict[str, float]]:
    """Median ms of predict(1), predict(256) and rank(1,000) per model, each from a bundle trained briefly."""
    import pyarrow.parquet as pq

    heads = scratch / "bundle-samples"  # each split's first rows: latency needs real weights, not a quality estimate
    heads.mkdir()
    for split in ("train", "valid", "test"):
        pq.write_table(pq.read_table(samples / f"{split}.parquet").slice(0, bundle_samples), heads / f"{split}.parquet")
    predictors = {}
    for variant in models:
        bundle = scratch / f"bundle-{variant}"
        train_and_export(DataSource(*(heads / f"{s}.parquet" for s in ("train", "valid", "test"))), bundle, load_spec(samples / "spec.toml"),
                         model_config=ModelConfig(variant=variant), train_config=TrainConfig(epochs=1, progress=False))
        predictors[variant] = Predictor.load(bundle, providers="cpu", threads=2)

    table = pq.read_table(samples / "test.parquet").to_pydict()
    longest = int(np.argmax([len(h) for h in table["hist_item_id"]]))
    one = {name: values[longest:longest + 1] for name, values in table.items()}
    batch = {name: values[:256] for name, values in table.items()}
    user = {name: table[name][longest] for name in USER_SIDE if name in table}
    pool = pq.read_table(samples / "items.parquet").to_pydict() if (samples / "items.parquet").exists() else None
    candidates = ({"item_id": pool["item_id"][:1000]} if pool else
                  {name: [table[name][i % len(table[name])] for i in range(1000)] for name in ("item_id", "genre")})
    calls = {"predict, 1 row": lambda p: p.predict(one), "predict, 256 rows": lambda p: p.predict(batch),
             "rank, 1,000 candidates": lambda p: p.rank(user, candidates)}
    seconds = {(call, variant): [] for call in calls for variant in models}
    order = list(predictors)
    for round_ in range(rounds):
        for call, run in calls.items():
            # each round starts with another model: the first call after another kind of call finds colder caches
            for variant in order[round_ % len(order):] + order[:round_ % len(order)]:
                predictor = predictors[variant]
                started = time.perf_counter()
                run(predictor)
                seconds[call, variant].append(time.perf_counter() - started)
    return {call: {variant: statistics.median(seconds[call, variant]) * 1e3 for variant in models} for call in calls}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=40_960)
    parser.add_argument("--batch-size", type=int, default=TrainConfig().batch_size)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--serving-rounds", type=int, default=30)
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS), help="the models to time; din always runs too, as the reference")
    parser.add_argument("--bundle-samples", type=int, default=20_000, help="rows per split of each served bundle")
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(f"CPU: {cpu_model()}; torch threads {torch.get_num_threads()}; MovieLens-100k ids+genre, 50 behaviours")
    with tempfile.TemporaryDirectory() as scratch:
        samples = Path(scratch) / "ids-genre"
        prepare(RECIPE, Sources(ML100K / "ml-100k.inter", ML100K / "ml-100k.item"), samples)
        models = ["din", *(m for m in args.models if m != "din")]
        rates = training_rates(samples, args.rows, args.batch_size, args.rounds, models)
        print(f"\ntraining, batch {args.batch_size}, {args.rows:,} rows, median of {args.rounds} interleaved epochs\n")
        print("| model | samples/s | / DIN | / DeepCTR-Torch DIEN |\n|---|---:|---:|---:|")
        peer = rates.get("DeepCTR-Torch DIEN")
        for name, rate in rates.items():
            versus = f"{rate / peer:.2f}x" if peer else "not installed"
            print(f"| {name} | {rate:,.0f} | {rate / rates['din']:.2f}x | {versus} |", flush=True)
        latency = serving_latency(samples, Path(scratch), args.serving_rounds, args.bundle_samples, models)
        print(f"\nserved latency (Predictor, CPU, 2 threads), median ms of {args.serving_rounds} interleaved rounds, and / DIN\n")
        print("| call | " + " | ".join(models) + " |\n|---|" + "---:|" * len(models))
        for call, by_model in latency.items():
            cells = [f"{by_model[m]:.3f}" + ("" if m == "din" else f" ({by_model[m] / by_model['din']:.2f}x)") for m in models]
            print(f"| {call} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
