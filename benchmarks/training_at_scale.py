"""Training from prepared data at scale, in both layouts: the README's table of reading and encoding time, batch
assembly samples/s, DIN training samples/s and peak memory, each measured in a fresh process.

The log is prepare_scaling.py's (issue 15's generated log, recipe benchmarks/scale-log.toml). Batch assembly is
timed over ASSEMBLY_ROWS training rows in shuffled batches of 512 (best of two passes); training runs
`din-export train-and-export --epochs 1 --epoch-samples N` with default settings, and its samples/s is what the
bundle's manifest records for that epoch (one epoch over the whole 20M-event training split would take hours on
two cores; the rate does not depend on how many samples an epoch draws).

    python benchmarks/training_at_scale.py 4000000 20000000 --inline-up-to 4000000
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from fresh import peak_rss_mb, run_json
from prepare_scaling import RECIPE, write_log

ASSEMBLY_ROWS = 2_000_000
BATCH = 512


def assembly(folder: Path) -> dict:
    """Read and encode the prepared splits as train-and-export does, then time batch assembly."""
    from din_export.data.prepared import SPEC_FILE
    from din_export.data.source import DataSource
    from din_export.data.spec import load_spec
    from din_export.data.splits import load_data

    started = time.perf_counter()
    data = load_data(DataSource(folder / "train.parquet", folder / "valid.parquet", folder / "test.parquet"), load_spec(folder / SPEC_FILE), 0)
    loaded = time.perf_counter() - started
    split = data.splits["train"]
    order = np.random.default_rng(0).permutation(len(split))[:ASSEMBLY_ROWS]
    best = np.inf
    for _ in range(2):
        started = time.perf_counter()
        for i in range(0, len(order), BATCH):
            split.rows(order[i:i + BATCH])
        best = min(best, time.perf_counter() - started)
    arrays = sum(a.nbytes for a in split.feed.values()) + sum(w.start.nbytes + w.end.nbytes for w in split.windows.values())
    stores = {id(w.values): w.values.nbytes for s in data.splits.values() for w in s.windows.values()}
    return {"train_samples": len(split), "load_s": round(loaded, 1), "assembly_per_s": round(len(order) / best),
            "train_arrays_mb": round(arrays / 2**20), "store_mb": round(sum(stores.values()) / 2**20), "peak_rss_mb": peak_rss_mb()}


def training(folder: Path, out: Path, epoch_samples: int) -> dict:
    from click.testing import CliRunner

    from din_export.cli import main

    result = CliRunner().invoke(main, ["train-and-export", "--data", str(folder), "--epochs", "1", "--epoch-samples", str(epoch_samples),
                                       "--out", str(out), "--quiet"])
    if result.exit_code != 0:
        raise RuntimeError(result.output)
    manifest = json.loads((out / "manifest.json").read_text())
    seconds = manifest["seconds"]
    read_encode = seconds["read"] + seconds["fit encoding"] + seconds["encode"]
    return {"train_per_s": round(manifest["training"]["samples_per_second"]), "read_encode_s": round(read_encode, 1),
            "evaluate_s": round(seconds["evaluate"], 1), "valid_auc": round(manifest["metrics"]["valid"]["auc"], 4), "peak_rss_mb": peak_rss_mb()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("sizes", nargs="*", type=int, default=[4_000_000, 20_000_000])
    parser.add_argument("--inline-up-to", type=int, default=4_000_000)
    parser.add_argument("--epoch-samples", type=int, default=200_000)
    parser.add_argument("--scratch", type=Path, default=None)
    args = parser.parse_args()

    from din_export.data.prepare import prepare
    from din_export.data.rules import Sources

    print("| events | layout | train samples | read + encode (s) | batch assembly (samples/s) | train arrays + store (MiB) | "
          "peak RSS, load + assembly (MiB) | DIN training (samples/s) | peak RSS, train-and-export (MiB) |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(dir=args.scratch) as scratch:
        for size in args.sizes:
            log, items, users = write_log(size, Path(scratch))
            for layout in ["reference"] + (["inline"] if size <= args.inline_up_to else []):
                folder = Path(scratch) / f"prepared-{size}-{layout}"
                prepare(RECIPE, Sources(log, items, users), folder, layout=layout)
                fed = run_json(Path(__file__), "--child", "assembly", str(folder))
                trained = run_json(Path(__file__), "--child", "training", str(folder), str(Path(scratch) / "bundle"), str(args.epoch_samples))
                print(f"| {size:,} | {layout} | {fed['train_samples']:,} | {trained['read_encode_s']} | {fed['assembly_per_s']:,} | "
                      f"{fed['train_arrays_mb']:,} + {fed['store_mb']:,} | {fed['peak_rss_mb']:,} | {trained['train_per_s']:,} | "
                      f"{trained['peak_rss_mb']:,} |", flush=True)
                shutil.rmtree(folder)
                shutil.rmtree(Path(scratch) / "bundle", ignore_errors=True)
            shutil.rmtree(log)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        kind, *rest = sys.argv[2:]
        if kind == "assembly":
            print(json.dumps(assembly(Path(rest[0]))))
        else:
            print(json.dumps(training(Path(rest[0]), Path(rest[1]), int(rest[2]))))
    else:
        main()
