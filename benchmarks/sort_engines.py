"""Why `prepare` sorts with DuckDB: the relational heavy lifting of a behaviour log (order its events by user,
time and log row, then stream them out) done by numpy in memory, by Polars' streaming engine and by DuckDB,
each in a fresh process, on prepare_scaling.py's generated log. Prints seconds and peak RSS.

    python benchmarks/sort_engines.py 20000000
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from fresh import peak_rss_mb, run_json
from prepare_scaling import write_log

COLUMNS = ["user_id", "item_id", "timestamp"]
BATCH_ROWS = 262_144


def sort_events(engine: str, folder: Path) -> int:
    """Rows streamed out in (user, time, log row) order."""
    files = sorted(str(p) for p in folder.glob("*.parquet"))
    if engine == "numpy":
        import pyarrow.dataset as pads

        log = pads.dataset(files, format="parquet").to_table(columns=COLUMNS)
        user, when = log.column("user_id").to_numpy(), log.column("timestamp").to_numpy()
        return len(log.take(np.lexsort((np.arange(len(user)), when, user))))
    if engine == "polars":
        import polars as pl

        lazy = pl.scan_parquet(files).select(COLUMNS).with_row_index("row").sort(["user_id", "timestamp", "row"])
        return sum(len(batch) for batch in lazy.collect_batches(chunk_size=BATCH_ROWS))
    from din_export.data.scan import LogScan  # what prepare runs: DuckDB, 1GB, the files' rows numbered in log order

    with tempfile.TemporaryDirectory() as spill:
        scan = LogScan(folder, "user_id", "item_id", "timestamp", COLUMNS, Path(spill), "1GB")
        return sum(block.num_rows for block in scan.blocks(1_000_000))


def main(events: int) -> None:

    print("| engine | events | seconds | peak RSS (MiB) |")
    print("|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as scratch:
        log = write_log(events, Path(scratch))[0]
        for engine in ("numpy", "polars", "duckdb"):
            row = run_json(Path(__file__), "--child", engine, str(log))
            print(f"| {engine} | {row['rows']:,} | {row['seconds']:.1f} | {row['peak_rss_mb']:,} |", flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        started = time.perf_counter()
        rows = sort_events(sys.argv[2], Path(sys.argv[3]))
        print(json.dumps({"rows": rows, "seconds": time.perf_counter() - started, "peak_rss_mb": peak_rss_mb()}))
    else:
        main(int(sys.argv[1]) if len(sys.argv) > 1 else 20_000_000)
