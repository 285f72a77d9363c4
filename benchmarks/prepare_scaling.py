"""The README's scaling table for `prepare`: events per second, peak memory and bytes written at several log
sizes, each size and layout run in a fresh process (benchmarks/prepare_run.py).

The log is issue 15's: one user per 100 events (200,000 users at 20M), 50,000 Zipf-popular items, recipe
benchmarks/scale-log.toml (one item history of 50, one uniform negative per positive, a per-user 10% / 10% split).
It is generated in parts of at most 10M events (a folder of Parquet files, as logs are usually stored), so that
even 100M events are written without holding them in memory.

    python benchmarks/prepare_scaling.py 1000000 10000000 20000000 100000000 --inline-up-to 20000000
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
from fresh import run_json

from din_export.data.synthetic import generate_log

HERE = Path(__file__).parent
RECIPE = HERE / "scale-log.toml"
PART_EVENTS = 10_000_000
ITEMS = 50_000


def write_log(events: int, folder: Path) -> list[Path]:
    """[log folder, items, users] of a generated log of `events` events."""
    parts = folder / f"log-{events}"
    parts.mkdir()
    users = max(10, events // 100)
    for index, start in enumerate(range(0, events, PART_EVENTS)):
        log, items_table, users_table = generate_log(min(PART_EVENTS, events - start), seed=index, num_users=users, num_items=ITEMS, zipf=1.0)
        pq.write_table(log, parts / f"part-{index:03d}.parquet")
        if index == 0:
            pq.write_table(items_table, folder / f"items-{events}.parquet")
            pq.write_table(users_table, folder / f"users-{events}.parquet")
        del log
    return [parts, folder / f"items-{events}.parquet", folder / f"users-{events}.parquet"]


def measure(events: int, folder: Path, layouts: list[str]) -> dict[str, dict]:
    paths = write_log(events, folder)
    rows = {}
    for layout in layouts:
        out = folder / f"out-{events}-{layout}"
        measured = run_json(HERE / "prepare_run.py", str(RECIPE), *map(str, paths), str(out), layout)
        summary = json.loads((out / "prepare.json").read_text())
        rows[layout] = {**measured, "written_mb": round(sum(f.stat().st_size for f in out.iterdir()) / 2**20),
                        "spilled_mb": round(summary["sort_spilled_bytes"] / 2**20)}
        shutil.rmtree(out)
    shutil.rmtree(paths[0])
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("sizes", nargs="*", type=int, default=[1_000_000, 10_000_000, 20_000_000])
    parser.add_argument("--inline-up-to", type=int, default=20_000_000, help="largest size also prepared with the inline layout")
    parser.add_argument("--scratch", type=Path, default=None, help="folder for logs and outputs (default: a temporary one)")
    args = parser.parse_args()
    print("| events | layout | samples written | seconds | events / s | peak RSS (MiB) | sort spilled (MiB) | written (MiB) |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(dir=args.scratch) as scratch:
        for size in args.sizes:
            layouts = ["reference"] + (["inline"] if size <= args.inline_up_to else [])
            for layout, row in measure(size, Path(scratch), layouts).items():
                print(f"| {row['events']:,} | {layout} | {row['samples']:,} | {row['seconds']:.1f} | {row['events_per_second']:,} | "
                      f"{row['peak_rss_mb']:,} | {row['spilled_mb']:,} | {row['written_mb']:,} |", flush=True)
