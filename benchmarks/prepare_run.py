"""Run `prepare` on a log in a fresh process and print its speed and peak memory as JSON (fresh.py: why a
process of its own, and how its peak is read).
    python benchmarks/prepare_run.py RECIPE LOG ITEMS USERS OUT [inline|reference] [duckdb|spark]

With spark, a local[2] session starts first (its seconds reported apart); peak memory is then the process tree's
(driver JVM and Python workers included), sampled, since VmHWM of this process would miss its children.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from fresh import TreePeak, peak_rss_mb

from din_export.data.prepare import prepare
from din_export.data.rules import Sources

SPARK_MASTER = "local[2]"
SPARK_CONF = {"spark.driver.memory": "4g"}  # local mode: the executors are the driver JVM's threads


def main(recipe: str, log: str, items: str, users: str, out: str, layout: str = "inline", engine: str = "duckdb") -> None:
    baseline_mb = peak_rss_mb()
    sources = Sources(Path(log), Path(items), Path(users))
    session_seconds = 0.0
    with TreePeak() as tree:
        if engine == "spark":
            from din_export.data import spark

            started = time.perf_counter()
            session = spark.session(SPARK_MASTER, SPARK_CONF)
            session_seconds = time.perf_counter() - started
            started = time.perf_counter()
            summary = spark.prepare(session, Path(recipe), sources, Path(out), layout=layout)
            seconds = time.perf_counter() - started
            session.stop()
        else:
            started = time.perf_counter()
            summary = prepare(Path(recipe), sources, Path(out), layout=layout)
            seconds = time.perf_counter() - started
    print(json.dumps({"events": summary["events"], "samples": sum(summary["rows"].values()), "seconds": round(seconds, 3),
                      "session_seconds": round(session_seconds, 3), "events_per_second": round(summary["events"] / seconds),
                      "import_rss_mb": round(baseline_mb), "peak_rss_mb": round(peak_rss_mb()), "tree_peak_rss_mb": tree.mb}))


if __name__ == "__main__":
    main(*sys.argv[1:8])
