"""Turn a pytest-benchmark JSON file into the README's latency table: medians and ratios from one run.

    python benchmarks/report.py bench.json
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict


def _row_name(bench: dict) -> str | None:
    name = bench["name"].split("[")[0]
    if name == "test_onnx_session":
        return f"session {bench['params']['graph']}"
    return {"test_runtime_predict": "predict", "test_pytorch_eager": "eager"}.get(name)


def table(path: str) -> str:
    medians: dict[tuple[int, int], dict[str, float]] = defaultdict(dict)
    with open(path, encoding="utf-8") as stream:
        for bench in json.load(stream)["benchmarks"]:
            row = _row_name(bench)
            if row:
                medians[(bench["params"]["batch"], bench["params"]["length"])][row] = bench["stats"]["median"] * 1e3
    lines = ["| batch | length | PyTorch eager (ms) | session plain (ms) | session folded (ms) | session int8 (ms) | predict (ms) | "
             "eager / predict | plain / folded | encoding share of predict |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for (batch, length), r in sorted(medians.items()):
        lines.append(f"| {batch} | {length} | {r['eager']:.3f} | {r['session plain']:.3f} | {r['session folded']:.3f} | "
                     f"{r['session int8']:.3f} | {r['predict']:.3f} | {r['eager'] / r['predict']:.2f}x | "
                     f"{r['session plain'] / r['session folded']:.2f}x | {max(0.0, 1 - r['session folded'] / r['predict']):.0%} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(sys.argv[1]))
