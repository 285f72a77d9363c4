"""Run `prepare` on a log in a fresh process and print its speed and peak memory as JSON (fresh.py: why a
process of its own, and how its peak is read).
    python benchmarks/prepare_run.py RECIPE LOG ITEMS USERS OUT [inline|reference]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from fresh import peak_rss_mb

from din_export.data.prepare import Sources, prepare


def main(recipe: str, log: str, items: str, users: str, out: str, layout: str = "inline") -> None:
    baseline_mb = peak_rss_mb()
    started = time.perf_counter()
    summary = prepare(Path(recipe), Sources(Path(log), Path(items), Path(users)), Path(out), layout=layout)
    seconds = time.perf_counter() - started
    print(json.dumps({"events": summary["events"], "samples": sum(summary["rows"].values()), "seconds": round(seconds, 3),
                      "events_per_second": round(summary["events"] / seconds), "import_rss_mb": round(baseline_mb),
                      "peak_rss_mb": round(peak_rss_mb())}))


if __name__ == "__main__":
    main(*sys.argv[1:7])
