"""Bulk loading a log into the behaviour store: `din-export events load` on generated logs of the given sizes (the
scaling benchmark's log and recipe: benchmarks/prepare_scaling.py), into SQLite and into Redis, each load in a
process of its own (store_load_run.py). Reports seconds and events per second as the command reports them, the
loader's own peak resident memory (VmHWM; redis-server's memory is not the loader's) and the behaviours the store
holds after.

    python benchmarks/store_ingest.py 1000000 20000000

Redis runs as the tests run it (tests/helpers.start_redis: append-only, fsync on every write, a free port, files in
the scratch folder); it is skipped, saying so, where redis-server is not installed.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from fresh import run_json
from machine import cpu_model
from prepare_scaling import RECIPE, write_log

HERE = Path(__file__).parent


def load(paths: list[Path], url: str) -> dict[str, int | float]:
    """One load in a fresh process (store_load_run.py): its seconds and rate as the command reports them (the
    interpreter's start left out) and the loader's own peak memory."""
    return run_json(HERE / "store_load_run.py", str(RECIPE), *map(str, paths), url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sizes", nargs="+", type=int, help="events per generated log")
    parser.add_argument("--scratch", type=Path, help="where logs and stores go (default: a temporary folder)")
    args = parser.parse_args()
    print(f"CPU: {cpu_model()}")
    print("\n| events | backend | seconds | events/s | loader peak MB | behaviours held |\n|---:|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(dir=args.scratch) as scratch:
        folder = Path(scratch)
        redis = None
        if shutil.which("redis-server"):
            sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # tests/helpers.py
            from helpers import start_redis

            redis, port = start_redis(folder)
        else:
            print("redis-server is not installed: Redis skipped (Debian: apt-get install redis-server)", file=sys.stderr)
        try:
            for number, events in enumerate(args.sizes):
                paths = write_log(events, folder)
                urls = {"sqlite": f"sqlite:///{folder / f'store-{events}.db'}"}
                if redis is not None:
                    urls["redis"] = f"redis://127.0.0.1:{port}/{number % 16}"
                for backend, url in urls.items():
                    row = load(paths, url)
                    print(f"| {events:,} | {backend} | {row['seconds']} | {row['events_per_second']:,} | {row['peak_mb']:,} | {row['held']:,} |",
                          flush=True)
                    if backend == "redis":
                        import redis as client

                        client.Redis(port=port, db=number % 16).flushdb()
                shutil.rmtree(paths[0])
        finally:
            if redis is not None:
                redis.terminate()
                redis.wait(timeout=60)


if __name__ == "__main__":
    main()
