"""The int8 options for a bundle's graphs, side by side: the measurement behind what `--precision int8` quantises.

    python benchmarks/int8_options.py BUNDLE [--rounds 15] [--valid TABLE]

Each option converts the bundle's model.onnx and rank.onnx (activation ranges, where static, calibrated on its
validation split as `export --precision int8` does):

- fp32: the graphs as trained;
- tables: the embedding tables alone in int8 (`--precision int8`, by default);
- dynamic: the tables and every matrix product, activation ranges found per call (ONNX Runtime's quantize_dynamic,
  weights per channel);
- static, constant weights: the tables and the products whose right-hand side is a weight (QDQ;
  `--int8-products constant-weights`);
- static, per behaviour: the tables and the products that run once per behaviour (QDQ; `--int8-products per-behaviour`);
- static, all: the tables and every product (QDQ; `--int8-products all`).

For each: validation AUC, the largest probability difference from fp32 on random feeds with histories of 0, 1, 2,
max_len and 3 x max_len behaviours, and the time per call at 1 x 50, 256 x 50 and rank of 1,000 candidates x 50,
every option interleaved in one process (2 threads, medians over rounds, the order rotating every round).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from machine import cpu_model
from onnxruntime.quantization import QuantType, quantize_dynamic

from din_export.bundle import load_bundle
from din_export.export.graphs import BATCH, RANKING, GraphContract, one_history, random_feed
from din_export.export.precision import PRODUCT_OPS, calibration_feeds, quantize_int8, session_metrics
from din_export.export.rebuild import validation_split
from din_runtime.manifest import MODEL_FILE, RANKING_FILE
from din_runtime.providers import cpu_session

THREADS = 2
CALLS = {"1 x 50": 100, "256 x 50": 4, "rank 1,000 x 50": 2}


STATIC = {"tables": "none", "static, constant weights": "constant-weights", "static, per behaviour": "per-behaviour",
          "static, all": "all"}  # option: its --int8-products


def convert(option: str, source: Path, target: Path, feeds) -> None:
    if option in STATIC:
        quantize_int8(source, target, feeds, STATIC[option])
    else:  # dynamic: the embedding tables and every product, activations quantised per call
        model = onnx.load(str(source))
        del model.graph.value_info[:]
        cleared = target.with_suffix(".cleared.onnx")
        onnx.save(model, str(cleared))
        quantize_dynamic(str(cleared), str(target), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["Gather", *PRODUCT_OPS], extra_options={"MatMulConstBOnly": False})


def options_graphs(bundle: Path, scratch: Path, split) -> dict[str, dict[GraphContract, Path]]:
    schema = load_bundle(bundle).schema
    graphs: dict[str, dict[GraphContract, Path]] = {"fp32": {BATCH: bundle / MODEL_FILE, RANKING: bundle / RANKING_FILE}}
    for option in ("tables", "dynamic", "static, constant weights", "static, per behaviour", "static, all"):
        folder = scratch / option.replace(", ", "-").replace(" ", "-")
        folder.mkdir()
        graphs[option] = {}
        for contract in (BATCH, RANKING):
            target = folder / contract.file
            convert(option, graphs["fp32"][contract], target, calibration_feeds(split, contract, schema))
            graphs[option][contract] = target
    return graphs


def session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    return cpu_session(path, options)


def largest_difference(sessions: dict, reference: dict, schema) -> float:
    """Largest |probability - fp32's| over random feeds of every length named in the module docstring."""
    worst = 0.0
    for length in (0, 1, 2, schema.max_len, 3 * schema.max_len):
        feed = random_feed(schema, 64, max(length, 1), np.random.default_rng(length))
        for name in schema.history_names:
            feed[name][:, length:] = 0
        for contract, graph_feed in ((BATCH, feed), (RANKING, one_history(feed, schema, 63))):
            got, expected = (s[contract].run(["probability"], graph_feed)[0] for s in (sessions, reference))
            worst = max(worst, float(np.max(np.abs(got - expected))))
    return worst


def timed(calls: dict[str, dict[str, Callable[[], object]]], rounds: int) -> dict[str, dict[str, float]]:
    times = {option: {shape: [] for shape in CALLS} for option in calls}
    options = list(calls)
    for round_ in range(rounds + 1):  # the first round warms up
        for option in options[round_ % len(options):] + options[:round_ % len(options)]:
            for shape, count in CALLS.items():
                started = time.perf_counter()
                for _ in range(count):
                    calls[option][shape]()
                if round_:
                    times[option][shape].append((time.perf_counter() - started) * 1e3 / count)
    return {option: {shape: statistics.median(values) for shape, values in by_shape.items()} for option, by_shape in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--valid", type=Path, help="validation table (default: the bundle's own split)")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.ERROR)  # the quantiser's advice, once per graph
    loaded = load_bundle(args.bundle)
    schema, split = loaded.schema, validation_split(loaded, args.valid)
    with tempfile.TemporaryDirectory() as scratch:
        graphs = options_graphs(args.bundle, Path(scratch), split)
        sessions = {option: {c: session(path) for c, path in by_graph.items()} for option, by_graph in graphs.items()}
        aucs = {option: session_metrics(by_graph[BATCH], split)["auc"] for option, by_graph in graphs.items()}
        differences = {option: largest_difference(sessions[option], sessions["fp32"], schema) for option in graphs}
    single, batch = (random_feed(schema, rows, 50, np.random.default_rng(rows)) for rows in (1, 256))
    for feed in (single, batch):  # every row a full history: the timed shapes are exactly B x 50
        for name in schema.history_names:
            feed[name][0] = feed[name][-1]
    ranking = one_history(random_feed(schema, 1000, 50, np.random.default_rng(7)), schema, 999)
    calls = {option: {"1 x 50": lambda s=s: s[BATCH].run(None, single), "256 x 50": lambda s=s: s[BATCH].run(None, batch),
                      "rank 1,000 x 50": lambda s=s: s[RANKING].run(None, ranking)} for option, s in sessions.items()}
    times = timed(calls, args.rounds)
    print(f"CPU {cpu_model()}, {THREADS} threads; {args.bundle}; validation rows {len(split):,}; medians of {args.rounds} rounds\n")
    print("| option | validation AUC | AUC drop | largest difference from fp32 | " + " | ".join(f"{s} ms" for s in CALLS) + " | "
          + " | ".join(f"{s}: fp32 / option" for s in CALLS) + " |")
    print("|---|" + "---:|" * (3 + 2 * len(CALLS)))
    for option in graphs:
        print(f"| {option} | {aucs[option]:.4f} | {aucs['fp32'] - aucs[option]:.4f} | {differences[option]:.4f} | "
              + " | ".join(f"{times[option][s]:.3f}" for s in CALLS) + " | "
              + " | ".join(f"{times['fp32'][s] / times[option][s]:.2f}x" for s in CALLS) + " |")


if __name__ == "__main__":
    main()
