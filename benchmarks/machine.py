"""What machine a figure was measured on: printed beside every figure, since timings from another CPU do not compare."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name as the kernel reports it (/proc/cpuinfo), or what platform knows elsewhere."""
    info = Path("/proc/cpuinfo")
    for line in info.read_text().splitlines() if info.is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"
