"""Where a bundle's ONNX Runtime time goes: ONNX Runtime's own profiler over repeated calls at one shape, summed by
operator type. It backs the README's account of what bounds the latency.

    python benchmarks/profile_graph.py BUNDLE [--batch 256] [--length 50] [--runs 100] [--graph model|rank]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnxruntime as ort

from din_export.export.graphs import one_history, random_feed
from din_runtime.manifest import read_manifest, schema_of

THREADS = 2
WARMUP = 20


def profile(bundle: Path, batch: int, length: int, runs: int, graph: str) -> dict[str, float]:
    """Milliseconds per call by operator type (kernel time only; the profiler's own overhead inflates the total)."""
    schema = schema_of(read_manifest(bundle))
    feed = random_feed(schema, batch, length, np.random.default_rng(0))
    if graph == "rank":
        feed = one_history(feed, schema, batch - 1)
    with tempfile.TemporaryDirectory() as folder:
        options = ort.SessionOptions()
        options.intra_op_num_threads = THREADS
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(folder) / "profile")
        session = ort.InferenceSession(str(bundle / ("model.onnx" if graph == "model" else "rank.onnx")), options,
                                       providers=["CPUExecutionProvider"])
        for _ in range(WARMUP + runs):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    by_op: dict[str, float] = defaultdict(float)
    node_events = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    for event in node_events[len(node_events) * WARMUP // (WARMUP + runs):]:
        by_op[event["args"]["op_name"]] += event["dur"] / 1e3 / runs
    return dict(sorted(by_op.items(), key=lambda item: -item[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--batch", type=int, default=256, help="rows (candidates, for the rank graph)")
    parser.add_argument("--length", type=int, default=50)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--graph", choices=("model", "rank"), default="model")
    args = parser.parse_args()
    by_op = profile(args.bundle, args.batch, args.length, args.runs, args.graph)
    total = sum(by_op.values())
    print(f"{args.graph}.onnx, batch {args.batch}, length {args.length}: {total:.3f} ms of kernels per call\n")
    print("| operator | ms per call | share |\n|---|---:|---:|")
    for op, ms in by_op.items():
        print(f"| {op} | {ms:.3f} | {ms / total:.0%} |")


if __name__ == "__main__":
    main()
