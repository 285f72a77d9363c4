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
