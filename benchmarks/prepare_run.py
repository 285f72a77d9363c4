"""Run `prepare` on a log in a fresh process and print its speed and peak memory as JSON.

A process of its own makes the peak resident memory (ru_maxrss) that of prepare alone:
    python benchmarks/prepare_run.py RECIPE LOG ITEMS USERS OUT
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

from din_export.prepare import Sources, prepare


def main(recipe: str, log: str, items: str, users: str, out: str) -> None:
    baseline_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    summary = prepare(Path(recipe), Sources(Path(log), Path(items), Path(users)), Path(out))
    seconds = time.perf_counter() - started
    print(json.dumps({"events": summary["events"], "samples": sum(summary["rows"].values()), "seconds": round(seconds, 3),
                      "events_per_second": round(summary["events"] / seconds), "import_rss_mb": round(baseline_mb),
                      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))


if __name__ == "__main__":
    main(*sys.argv[1:6])
