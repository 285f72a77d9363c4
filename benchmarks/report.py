"""Turn a pytest-benchmark JSON file into the README's latency table: medians and ratios from one run.

    python benchmarks/report.py .benchmarks/latest.json
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict

ROWS = {"test_runtime_predict": "runtime predict", "test_onnx_session": "ONNX session", "test_pytorch_eager": "PyTorch eager"}


def table(path: str) -> str:
    medians: dict[tuple[int, int], dict[str, float]] = defaultdict(dict)
    for bench in json.load(open(path))["benchmarks"]:
        name = bench["name"].split("[")[0]
        if name in ROWS:
            medians[(bench["params"]["batch"], bench["params"]["length"])][ROWS[name]] = bench["stats"]["median"] * 1e3
    lines = ["| batch | length | runtime predict (ms) | ONNX session (ms) | PyTorch eager (ms) | PyTorch / predict | encoding share of predict |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for (batch, length), row in sorted(medians.items()):
        predict, session, eager = row["runtime predict"], row["ONNX session"], row["PyTorch eager"]
        lines.append(f"| {batch} | {length} | {predict:.3f} | {session:.3f} | {eager:.3f} | {eager / predict:.2f}x | "
                     f"{max(0.0, 1 - session / predict):.0%} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(sys.argv[1]))
