"""What serving the attention weights costs: model.onnx (probability only) against explain.onnx (probability and
weights) on the same feed, interleaved in one process (A, B, A, B), median of each. Why explain.onnx is a graph of
its own: if asking for the weights costs little, one graph with two outputs would do; the measurement says whether
predict would pay for an output it never reads.

    python benchmarks/explain_cost.py BUNDLE --rows 1 256 1024
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from machine import cpu_model

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    from din_export.export.graphs import random_feed
    from din_runtime.manifest import OUTPUT_NAME, WEIGHTS_NAME, read_manifest, schema_of
    from din_runtime.providers import cpu_session

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 256, 1024])
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    manifest = read_manifest(args.bundle)
    schema = schema_of(manifest)
    batch, explain = cpu_session(args.bundle / "model.onnx"), cpu_session(args.bundle / "explain.onnx")
    print(f"CPU: {cpu_model()}; {args.bundle.name} ({manifest['model']['variant']}); histories of {schema.max_len}; "
          f"median of {args.repeats} interleaved calls each\n")
    print("| rows | model.onnx (ms) | explain.onnx, both outputs (ms) | explain / model |")
    print("|---:|---:|---:|---:|")
    for rows in args.rows:
        feed = random_feed(schema, rows, schema.max_len, np.random.default_rng(0))
        times: dict[str, list[float]] = {"model": [], "explain": []}
        for _ in range(10):
            batch.run([OUTPUT_NAME], feed)
            explain.run([OUTPUT_NAME, WEIGHTS_NAME], feed)
        for _ in range(args.repeats):
            for name, session, outputs in (("model", batch, [OUTPUT_NAME]), ("explain", explain, [OUTPUT_NAME, WEIGHTS_NAME])):
                started = time.perf_counter()
                session.run(outputs, feed)
                times[name].append(time.perf_counter() - started)
        model_ms, explain_ms = (float(np.median(times[name])) * 1e3 for name in ("model", "explain"))
        print(f"| {rows} | {model_ms:.3f} | {explain_ms:.3f} | {explain_ms / model_ms:.2f} |")


if __name__ == "__main__":
    main()
