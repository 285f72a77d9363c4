"""Where an epoch of `train()` spends its time: PyTorch's profiler over the batches of one epoch on MovieLens-100k
ids+genre (the training_epoch benchmark's data and model), summed by operator, forward and backward together.
It backs the account of what bounds training speed on the quality page.

    python benchmarks/profile_training.py [--batch-size 256] [--rows 20000]
"""

from __future__ import annotations

import argparse
import tempfile
from collections import defaultdict
from pathlib import Path

import torch
from machine import cpu_model
from torch.profiler import ProfilerActivity, profile
from training_epoch import ML100K, RECIPE, epoch_inputs, warmed_model

from din_export.data.prepare import prepare
from din_export.data.rules import Sources
from din_export.training.train import train

MATRIX_PRODUCTS = ("aten::mm", "aten::bmm", "aten::addmm")


def by_operator(batch_size: int, rows: int) -> dict[str, float]:
    """Self CPU milliseconds per batch by ATen operator over one profiled epoch of `rows` rows."""
    with tempfile.TemporaryDirectory() as scratch:
        samples = Path(scratch) / "ids-genre"
        prepare(RECIPE, Sources(ML100K / "ml-100k.inter", ML100K / "ml-100k.item"), samples)
        data, split, valid, config = epoch_inputs(samples, batch_size, rows)
    model = warmed_model(data, split, valid, config)
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        train(model, split, valid, config)
    batches = rows // batch_size
    totals: dict[str, float] = defaultdict(float)
    for event in profiler.key_averages():
        if event.key.startswith("aten::"):
            totals[event.key] += event.self_cpu_time_total / 1e3 / batches
    return dict(sorted(totals.items(), key=lambda item: -item[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--top", type=int, default=14)
    args = parser.parse_args()
    torch.set_num_threads(2)
    totals = by_operator(args.batch_size, args.rows)
    whole = sum(totals.values())
    products = sum(totals.get(name, 0.0) for name in MATRIX_PRODUCTS)
    print(f"CPU: {cpu_model()}; torch threads {torch.get_num_threads()}; batch {args.batch_size}; "
          f"{whole:.1f} ms of ATen operators per batch under the profiler; matrix products {products / whole:.0%}\n")
    print("| operator | ms per batch | share |\n|---|---:|---:|")
    for name, ms in list(totals.items())[:args.top]:
        print(f"| {name.removeprefix('aten::')} | {ms:.2f} | {ms / whole:.0%} |")


if __name__ == "__main__":
    main()
