"""Run `prepare` on a log in a fresh process and print its speed and peak memory as JSON.

A process of its own makes the peak resident memory that of prepare alone. It is read from VmHWM, which a new
program starts afresh; ru_maxrss would carry over the parent's high-water mark across fork and exec.
    python benchmarks/prepare_run.py RECIPE LOG ITEMS USERS OUT [inline|reference]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from din_export.data.prepare import Sources, prepare


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


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
