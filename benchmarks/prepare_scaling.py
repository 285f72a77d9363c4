"""The README's scaling table for `prepare`: events per second, peak memory and bytes written at several log
sizes, in both layouts (inline list columns, and the reference layout's sequence store), each run in a fresh process.

    python benchmarks/prepare_scaling.py 250000 1000000 4000000
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq

from din_export.data.synthetic import LOG_SPEC_PATH, generate_log

HERE = Path(__file__).parent


def measure(events: int, folder: Path) -> dict[str, dict]:
    log, items, users = generate_log(events, seed=0)
    paths = [folder / f"{name}-{events}.parquet" for name in ("log", "items", "users")]
    for table, path in zip((log, items, users), paths, strict=True):
        pq.write_table(table, path)
    del log, items, users
    rows = {}
    for layout in ("inline", "reference"):
        out = folder / f"out-{events}-{layout}"
        result = subprocess.run([sys.executable, str(HERE / "prepare_run.py"), str(LOG_SPEC_PATH), *map(str, paths), str(out), layout],
                                capture_output=True, text=True, check=True)
        rows[layout] = {**json.loads(result.stdout), "written_mb": round(sum(f.stat().st_size for f in out.iterdir()) / 2**20)}
        shutil.rmtree(out)
    return rows


if __name__ == "__main__":
    print("| events | layout | samples written | seconds | events / s | peak RSS (MiB) | written (MiB) |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as scratch:
        for size in map(int, sys.argv[1:] or ["250000", "1000000", "4000000"]):
            for layout, row in measure(size, Path(scratch)).items():
                print(f"| {row['events']:,} | {layout} | {row['samples']:,} | {row['seconds']:.1f} | {row['events_per_second']:,} | "
                      f"{row['peak_rss_mb']:,} | {row['written_mb']:,} |", flush=True)
