"""The README's scaling table for `prepare`: events per second and peak memory at several log sizes.

    python benchmarks/prepare_scaling.py 250000 1000000 4000000
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq

from din_export.data.synthetic import LOG_SPEC_PATH, generate_log

HERE = Path(__file__).parent


def measure(events: int, folder: Path) -> dict:
    log, items, users = generate_log(events, seed=0)
    paths = [folder / f"{name}-{events}.parquet" for name in ("log", "items", "users")]
    for table, path in zip((log, items, users), paths, strict=True):
        pq.write_table(table, path)
    del log, items, users
    result = subprocess.run([sys.executable, str(HERE / "prepare_run.py"), str(LOG_SPEC_PATH), *map(str, paths),
                             str(folder / f"out-{events}")], capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


if __name__ == "__main__":
    print("| events | samples written | seconds | events / s | peak RSS (MiB) | RSS after imports (MiB) |")
    print("|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as scratch:
        for size in map(int, sys.argv[1:] or ["250000", "1000000", "4000000"]):
            row = measure(size, Path(scratch))
            print(f"| {row['events']:,} | {row['samples']:,} | {row['seconds']:.1f} | {row['events_per_second']:,} | "
                  f"{row['peak_rss_mb']:,} | {row['import_rss_mb']:,} |", flush=True)
