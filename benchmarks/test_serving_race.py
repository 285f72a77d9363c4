"""The whole serving call against what a user would run instead, every column interleaved in one process.

Per round, for each shape, each column runs in turn (A, B, C, ... then B, C, ..., A: the order rotates every
round), so the machine's drift hits all alike; the figure is the median over rounds of the time per call.
Histories are 50 long and, for `predict`, given as Python lists, as JSON decodes them. Columns:

- predict: din_runtime from raw values (encoding included), folded graph;
- predict, item IDs only: the same rows without the item's category and the history's categories, which the bundle
  looks up in its item-to-category table;
- predict, batch session: predict on the batch session whatever the size (calls of up to 16 rows otherwise take
  the single-threaded one);
- encode: predict's encoding step alone, from the lists;
- predict, arrays / encode, arrays: the same rows as numpy arrays (histories 2-D), predict and its encoding alone;
- session: the ONNX Runtime session alone on the encoded feed;
- torch.compile: inductor's compilation of the bundle's own (folded) PyTorch model with static shapes (one compiled
  graph per shape, its fastest form), on encoded tensors;
- OpenVINO: its CPU plugin on the bundle's model.onnx, on the encoded feed, in float32 (its default may compute in bf16);
- eager: the bundle's PyTorch model, torch.inference_mode;
- session int8 / predict int8: the same weights exported with `--precision int8 --int8-products per-behaviour`
  (int8 embedding tables and the attention unit's matrix products in integers, activation ranges calibrated on the
  validation split), its session alone and predict on it;
- floor: the folded graph's matrix-product FLOPs (benchmarks/flops.py) at the GEMM rate of a 1024^3 float32 product
  in ONNX Runtime, timed once per round among the columns: what the arithmetic alone needs at this machine's rate;
  floor int8: the same operations at the rate of a 1024^3 uint8 x int8 product (MatMulInteger) of the same rounds.

Also rank of 1,000 candidates against predict on the replicated rows (2-D history arrays, predict's fastest form),
and rank on the int8 bundle.
Every engine gets 2 threads. Run (PyTorch at its best: glibc malloc kept from returning memory between calls):

    MALLOC_MMAP_THRESHOLD_=17179869184 MALLOC_TRIM_THRESHOLD_=17179869184 \\
      .venv/bin/python -m pytest -n 0 benchmarks/test_serving_race.py -s --benchmark-min-rounds=1
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import openvino as ov
import pytest
import torch
from flops import flops_per_row

from din_export.bundle import load_bundle
from din_export.export.graphs import TOLERANCE
from din_export.export.rebuild import export_bundle
from din_export.model.base import ProbabilityModel, in_form
from din_runtime import Predictor
from test_latency import GEMM_SIZE, THREADS, matmul_session, ranking_request, raw_batch

SHAPES = ((1, 50), (256, 50), (1024, 50))
ROUNDS = 20
CALLS_PER_TIMING = {1: 100, 256: 4, 1024: 1}  # calls timed together, so that one timing is well above the clock's grain
RANK_CANDIDATES = 1000
ITEM_ATTRIBUTES = ("cate_id", "hist_cate_id")  # the bundle looks them up from the item IDs when a client leaves them out


def as_lists(rows: dict) -> dict:
    """The rows as a JSON client sends them: Python lists of ints and floats, histories as lists of lists."""
    return {name: [np.asarray(v).tolist() for v in column] if name.startswith("hist_") else np.asarray(column).tolist()
            for name, column in rows.items()}


def consistent(predictor: Predictor, rows: dict) -> dict:
    """The rows with each item's own category (from the bundle's table), as real requests carry them."""
    looked_up = predictor.encode({name: column for name, column in rows.items() if name not in ITEM_ATTRIBUTES})
    keys = np.asarray([-1, -1, *predictor.schema["cate_id"].keys])  # index 0 padding, 1 out-of-vocabulary
    lengths = [len(history) for history in rows["hist_item_id"]]
    return {**rows, "cate_id": keys[looked_up["cate_id"]].tolist(),
            "hist_cate_id": [keys[row[:n]].tolist() for row, n in zip(looked_up["hist_cate_id"], lengths, strict=True)]}


def per_call_ms(function: Callable[[], object], calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        function()
    return (time.perf_counter() - started) * 1e3 / calls


@pytest.fixture(scope="module")
def engines(reference_bundle: Path, torch_threads, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Every engine loaded once: the predictor (float32 and int8), the folded PyTorch model eager and compiled,
    OpenVINO's compiled model, and the two GEMM rates' sessions."""
    torch_threads(THREADS)
    predictor = Predictor.load(reference_bundle, providers="cpu", threads=THREADS)
    int8_bundle = tmp_path_factory.mktemp("race") / "int8"
    # one short epoch: the AUC gate is not the point here
    export_bundle(reference_bundle, int8_bundle, precision="int8", force=True, int8_products="per-behaviour")
    int8 = Predictor.load(int8_bundle, providers="cpu", threads=THREADS)
    eager = ProbabilityModel(in_form(load_bundle(reference_bundle).din, "folded"))  # what model.onnx computes, calibration too
    compiled = torch.compile(eager, backend="inductor", dynamic=False)  # static: recompiled per shape, at its fastest
    core = ov.Core()
    openvino = core.compile_model(core.read_model(str(reference_bundle / "model.onnx")), "CPU",
                                  {"INFERENCE_NUM_THREADS": THREADS, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"})
    return {"predictor": predictor, "int8": int8, "eager": eager, "compiled": compiled, "openvino": openvino,
            "gemm": matmul_session(GEMM_SIZE), "gemm int8": matmul_session(GEMM_SIZE, integer=True)}


def columns(engines: dict, batch: int, length: int) -> dict[str, Callable[[], np.ndarray]]:
    """One zero-argument call per column, each returning probabilities of shape (batch,)."""
    predictor, int8 = engines["predictor"], engines["int8"]
    rows = consistent(predictor, as_lists(raw_batch(predictor, batch, length, seed=batch)))
    feed = predictor.encode(rows)
    tensors = [torch.from_numpy(feed[name]) for name in predictor.feature_names]
    openvino = engines["openvino"]

    def torch_call(model) -> Callable[[], np.ndarray]:
        def call() -> np.ndarray:
            with torch.inference_mode():
                return model(*tensors).numpy()
        return call

    ids_only = {name: column for name, column in rows.items() if name not in ITEM_ATTRIBUTES}
    arrays = {name: np.asarray(column) for name, column in rows.items()}  # histories of equal length: 2-D arrays
    return {
        "predict": lambda: predictor.predict(rows),
        "predict, item IDs only": lambda: predictor.predict(ids_only),
        # what predict did before small calls had their single-threaded session: the same call on the batch session
        "predict, batch session": lambda: predictor._run(predictor.session, predictor.encode(rows), batch, predictor.session_rows),
        "predict, arrays": lambda: predictor.predict(arrays),
        "encode": lambda: np.zeros(batch) + len(predictor.encode(rows)),
        "encode, arrays": lambda: np.zeros(batch) + len(predictor.encode(arrays)),
        "session": lambda: predictor.session.run(None, feed)[0],
        "session int8": lambda: int8.session.run(None, feed)[0],
        "predict int8": lambda: int8.predict(rows),
        "torch.compile": torch_call(engines["compiled"]),
        "OpenVINO": lambda: next(iter(openvino(feed).values())),
        "eager": torch_call(engines["eager"]),
    }


def test_serving_race(benchmark, engines: dict) -> None:
    calls = {shape: columns(engines, *shape) for shape in SHAPES}
    for shape, row in calls.items():  # warm-up (and torch.compile's compilation), and every column gives the same probabilities
        reference = row["predict"]()
        for name, call in ((name, call) for name, call in row.items() if not name.startswith("encode")):
            result = np.asarray(call()).reshape(-1)
            tolerance = TOLERANCE["int8"] if "int8" in name else 1e-4
            assert result.shape == (shape[0],) and np.max(np.abs(result - reference)) <= tolerance, name
    times: dict[tuple, dict[str, list[float]]] = {shape: {name: [] for name in row} for shape, row in calls.items()}
    gemm_input = {"a": np.random.default_rng(1).random((GEMM_SIZE, GEMM_SIZE), dtype=np.float32)}
    integer_input = {"a": np.random.default_rng(1).integers(0, 256, (GEMM_SIZE, GEMM_SIZE), dtype=np.uint8)}
    gemm_seconds: list[float] = []
    integer_seconds: list[float] = []
    turn = [0]

    def interleaved() -> None:
        # Each round starts the order one column later, so that every column follows every other equally often:
        # torch's worker threads keep spinning for a while after a call and slow whatever runs next.
        for shape, row in calls.items():
            names = list(row)
            for name in names[turn[0] % len(names):] + names[:turn[0] % len(names)]:
                times[shape][name].append(per_call_ms(row[name], CALLS_PER_TIMING[shape[0]]))
            gemm_seconds.append(per_call_ms(lambda: engines["gemm"].run(None, gemm_input), 1) / 1e3)
            integer_seconds.append(per_call_ms(lambda: engines["gemm int8"].run(None, integer_input), 1) / 1e3)
        turn[0] += 1

    benchmark.pedantic(interleaved, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    table = {f"{b}x{t}": {name: round(statistics.median(values), 4) for name, values in times[(b, t)].items()} for b, t in SHAPES}
    gflops = 2 * GEMM_SIZE ** 3 / statistics.median(gemm_seconds) / 1e9
    integer_gops = 2 * GEMM_SIZE ** 3 / statistics.median(integer_seconds) / 1e9
    benchmark.extra_info["GEMM GFLOP/s"] = round(gflops, 1)
    benchmark.extra_info["int8 GEMM GOP/s"] = round(integer_gops, 1)
    manifest = engines["predictor"].manifest
    for (batch, length), row in zip(SHAPES, table.values(), strict=True):
        row["floor"] = round(batch * flops_per_row(manifest, length, "folded") / gflops / 1e6, 4)
        row["floor int8"] = round(batch * flops_per_row(manifest, length, "folded") / integer_gops / 1e6, 4)
        row["session / session int8"] = round(row["session"] / row["session int8"], 2)
        row["torch.compile / session int8"] = round(row["torch.compile"] / row["session int8"], 2)
        row["torch.compile / predict int8"] = round(row["torch.compile"] / row["predict int8"], 2)
        row["session int8 / floor int8"] = round(row["session int8"] / row["floor int8"], 2)
        row["session / floor"] = round(row["session"] / row["floor"], 2)
        row["torch.compile / session"] = round(row["torch.compile"] / row["session"], 2)
        row["OpenVINO / session"] = round(row["OpenVINO"] / row["session"], 2)
        row["torch.compile / predict"] = round(row["torch.compile"] / row["predict"], 2)
        row["torch.compile / predict, item IDs only"] = round(row["torch.compile"] / row["predict, item IDs only"], 2)
        row["encoding share of predict, arrays"] = round(row["encode, arrays"] / row["predict, arrays"], 3)
    benchmark.extra_info["ms per call"] = table
    print()
    for key, row in table.items():
        print(key, row)
    assert all(np.isfinite(value) for row in table.values() for value in row.values())


def test_rank_against_replicated_predict(benchmark, engines: dict) -> None:
    """rank scores the history once; predict on the replicated rows carries it per candidate."""
    predictor, int8 = engines["predictor"], engines["int8"]
    user_row, candidates = ranking_request(predictor, RANK_CANDIDATES, 50)
    replicated = {**candidates, **{name: np.repeat(np.asarray(value)[None], RANK_CANDIDATES, axis=0) for name, value in user_row.items()}}
    ranking = predictor.rank(user_row, candidates)
    assert np.max(np.abs(predictor.predict(replicated)[ranking.order] - ranking.probabilities)) <= 1e-5
    ranked_int8 = int8.rank(user_row, candidates)
    assert np.max(np.abs(predictor.predict(replicated)[ranked_int8.order] - ranked_int8.probabilities)) <= TOLERANCE["int8"]
    calls = {"rank": lambda: predictor.rank(user_row, candidates), "predict replicated": lambda: predictor.predict(replicated),
             "rank int8": lambda: int8.rank(user_row, candidates)}
    times: dict[str, list[float]] = {name: [] for name in calls}

    def interleaved() -> None:
        for name, call in calls.items():
            times[name].append(per_call_ms(call, 1))

    benchmark.pedantic(interleaved, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    medians = {name: round(statistics.median(values), 3) for name, values in times.items()}
    benchmark.extra_info.update({f"{name} ms": value for name, value in medians.items()})
    benchmark.extra_info["speed-up"] = round(medians["predict replicated"] / medians["rank"], 2)
    benchmark.extra_info["rank / rank int8"] = round(medians["rank"] / medians["rank int8"], 2)
    print(f"\nrank of {RANK_CANDIDATES} at length 50: {benchmark.extra_info}")
    assert medians["rank"] > 0
