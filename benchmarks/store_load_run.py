"""Run `din-export events load`'s work (din_export.events.load_log) in a fresh process and print its speed and the
loader's own peak memory as JSON (fresh.py: why a process of its own). redis-server's memory is not the loader's.
    python benchmarks/store_load_run.py RECIPE LOG ITEMS USERS STORE_URL
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from fresh import peak_rss_mb

from din_export.data.rules import Sources
from din_export.events import load_log


def main(recipe: str, log: str, items: str, users: str, url: str) -> None:
    summary = load_log(Path(recipe), Sources(Path(log), Path(items), Path(users)), url)
    print(json.dumps({"events": summary["events"], "seconds": summary["seconds"], "events_per_second": summary["events_per_second"],
                      "peak_mb": peak_rss_mb(), "held": summary["store_behaviours"]}))


if __name__ == "__main__":
    main(*sys.argv[1:6])
