"""Both engines of `prepare` on the same generated log (prepare_scaling.py's: one user per 100 events, 50,000
Zipf-popular items, recipe benchmarks/scale-log.toml), each size and engine in a fresh process
(benchmarks/prepare_run.py): seconds, events per second and the peak memory of the whole process tree (Spark's
driver JVM and Python workers included, sampled every 0.1 s). Spark runs local[2] with a 4 GiB driver; its session
start is reported apart. The two outputs are checked to hold the same number of samples.

    python benchmarks/prepare_engines.py 1000000 10000000
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from fresh import run_json
from machine import cpu_model
from prepare_scaling import RECIPE, write_log

HERE = Path(__file__).parent
ENGINES = ("duckdb", "spark")


def measure(events: int, folder: Path, layout: str) -> dict[str, dict]:
    paths = write_log(events, folder)
    rows = {}
    for engine in ENGINES:
        out = folder / f"out-{events}-{engine}"
        rows[engine] = run_json(HERE / "prepare_run.py", str(RECIPE), *map(str, paths), str(out), layout, engine)
        shutil.rmtree(out)
    shutil.rmtree(paths[0])
    if rows["duckdb"]["samples"] != rows["spark"]["samples"]:
        raise RuntimeError(f"the engines wrote {rows['duckdb']['samples']} and {rows['spark']['samples']} samples")
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("sizes", nargs="*", type=int, default=[1_000_000, 10_000_000])
    parser.add_argument("--layout", choices=("inline", "reference"), default="inline")
    parser.add_argument("--scratch", type=Path, default=None, help="folder for logs and outputs (default: a temporary one)")
    args = parser.parse_args()
    print(f"CPU: {cpu_model()}; layout {args.layout}")
    print("| events | engine | samples written | seconds | events / s | session start (s) | peak RSS, process tree (MiB) |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(dir=args.scratch) as scratch:
        for size in args.sizes:
            for engine, row in measure(size, Path(scratch), args.layout).items():
                print(f"| {row['events']:,} | {engine} | {row['samples']:,} | {row['seconds']:.1f} | {row['events_per_second']:,} | "
                      f"{row['session_seconds']:.1f} | {row['tree_peak_rss_mb']:,} |", flush=True)
