"""Measuring in a fresh process: a child runs one measurement and prints it as a JSON line, so its peak memory is
its own. Peak resident memory is read from VmHWM, which a new program starts afresh; ru_maxrss would carry over
the parent's high-water mark across fork and exec."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any


def peak_rss_mb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024)
    raise RuntimeError("no VmHWM in /proc/self/status")


def run_json(script: Path, *args: str) -> dict[str, Any]:
    """Run `python script args...` and return the JSON object on the last line of its output."""
    result = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{script.name} {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.splitlines()[-1])


class TreePeak:
    """Peak resident memory of this process and all its descendants, summed and sampled every `interval` seconds
    on a thread: what a Spark driver costs (its JVM and Python workers are child processes, so VmHWM of this one
    would miss them). Use as a context manager; `.mb` afterwards."""

    def __init__(self, interval: float = 0.1) -> None:
        import threading

        self.interval, self.peak_kb = interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreePeak:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def mb(self) -> int:
        return round(self.peak_kb / 1024)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        import os

        parents: dict[int, int] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue  # a process that ended while being read
        tree, frontier = {os.getpid()}, [os.getpid()]
        while frontier:
            children = [pid for pid, parent in parents.items() if parent in frontier and pid not in tree]
            tree.update(children)
            frontier = children
        total = 0
        for pid in tree:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            total += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
        self.peak_kb = max(self.peak_kb, total)
