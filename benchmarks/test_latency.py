"""Batch latency over batch size x sequence length, at the reference sizes, all in one run on one machine:

- predict: the runtime from raw values (encoding included), folded graph; encode: its encoding step alone;
- session plain / folded / int8: the ONNX Runtime session alone on encoded arrays, the same weights exported three ways;
- eager: PyTorch on the same weights (plain model, torch.inference_mode, the same thread count);
- rank: 100 and 1,000 candidates for one user against predict on the replicated rows;
- gemm: a 1024^3 float32 matrix product in ONNX Runtime, the rate that turns FLOPs into a floor time.
`python benchmarks/report.py` turns the JSON into the README's tables and plot.
"""

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from flops import GRAPH_KINDS, flops_per_row
from onnx import TensorProto, helper

from din_export.bundle import load_bundle
from din_export.export.rebuild import export_bundle
from din_export.model.base import ProbabilityModel, in_form
from din_runtime import Predictor

BATCHES = (1, 32, 256, 1024, 4096)
LENGTHS = (10, 50, 200)
GRAPHS = ("plain", "folded", "int8")
RANK_CANDIDATES = (100, 1000)
RANK_LENGTHS = (50, 200)
THREADS = 2
GEMM_SIZE = 1024


def vocabularies(predictor: Predictor) -> dict[str, np.ndarray]:
    return {f["name"]: np.asarray(f["keys"]) for f in predictor.manifest["encoding"] if f["kind"] == "categorical"}


def raw_batch(predictor: Predictor, batch: int, length: int, seed: int = 0) -> dict:
    """Raw rows drawn from the bundle's vocabularies, every history exactly `length` long."""
    rng = np.random.default_rng(seed)
    keys = vocabularies(predictor)
    items = rng.integers(0, len(keys["item_id"]), (batch, length + 1))
    return {
        "user_id": rng.choice(keys["user_id"], batch),
        "item_id": keys["item_id"][items[:, 0]],
        "cate_id": rng.choice(keys["cate_id"], batch),
        "price": rng.lognormal(3.0, 0.6, batch),
        "hist_item_id": list(keys["item_id"][items[:, 1:]]),
        "hist_cate_id": list(rng.choice(keys["cate_id"], (batch, length))),
    }


def ranking_request(predictor: Predictor, candidates: int, length: int, seed: int = 0) -> tuple[dict, dict]:
    """One user (a history of `length` behaviours) and `candidates` candidate items with their own features."""
    rows = raw_batch(predictor, candidates, length, seed)
    user_row = {"user_id": rows["user_id"][0], "hist_item_id": rows["hist_item_id"][0], "hist_cate_id": rows["hist_cate_id"][0]}
    return user_row, {name: rows[name] for name in ("item_id", "cate_id", "price")}


def record_flops(benchmark, predictor: Predictor, length: int) -> None:
    benchmark.extra_info["flops_per_row"] = {graph: flops_per_row(predictor.manifest, length, graph) for graph in GRAPH_KINDS}


@pytest.fixture(scope="module")
def predictor(reference_bundle: Path) -> Predictor:
    return Predictor.load(reference_bundle, providers="cpu", threads=THREADS)


@pytest.fixture(scope="module")
def graph_predictors(reference_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Predictor]:
    """The same weights as the plain graph, the folded graph (the reference bundle's own) and the int8 (embedding
    tables) graph."""
    folder = tmp_path_factory.mktemp("graphs")
    export_bundle(reference_bundle, folder / "plain", attention_form="plain")
    export_bundle(reference_bundle, folder / "int8", attention_form="folded", precision="int8", force=True)
    bundles = {"plain": folder / "plain", "folded": reference_bundle, "int8": folder / "int8"}
    return {name: Predictor.load(path, providers="cpu", threads=THREADS) for name, path in bundles.items()}


@pytest.fixture(scope="module")
def torch_model(reference_bundle: Path, torch_threads):
    torch_threads(THREADS)
    return ProbabilityModel(in_form(load_bundle(reference_bundle).din, "plain"))  # what model.onnx computes, calibration too


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("batch", BATCHES)
def test_runtime_predict(benchmark, predictor: Predictor, batch: int, length: int) -> None:
    benchmark.group = f"batch={batch} length={length}"
    record_flops(benchmark, predictor, length)
    rows = raw_batch(predictor, batch, length)
    probabilities = benchmark(predictor.predict, rows)
    assert probabilities.shape == (batch,)


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("batch", BATCHES)
def test_runtime_encode(benchmark, predictor: Predictor, batch: int, length: int) -> None:
    """predict's encoding step alone, so its share of predict is measured, not inferred."""
    benchmark.group = f"batch={batch} length={length}"
    rows = raw_batch(predictor, batch, length)
    feed = benchmark(predictor.encode, rows)
    assert feed["hist_item_id"].shape == (batch, length)


@pytest.mark.parametrize("graph", GRAPHS)
@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("batch", BATCHES)
def test_onnx_session(benchmark, graph_predictors: dict[str, Predictor], batch: int, length: int, graph: str) -> None:
    benchmark.group = f"batch={batch} length={length}"
    session_predictor = graph_predictors[graph]
    feed = session_predictor.encode(raw_batch(session_predictor, batch, length))
    (probabilities,) = benchmark(session_predictor.session.run, None, feed)
    assert probabilities.shape == (batch,)


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("batch", BATCHES)
def test_pytorch_eager(benchmark, predictor: Predictor, torch_model, batch: int, length: int) -> None:
    benchmark.group = f"batch={batch} length={length}"
    rows = raw_batch(predictor, batch, length)
    feed = predictor.encode(rows)
    tensors = [torch.from_numpy(feed[name]) for name in predictor.feature_names]

    def forward() -> torch.Tensor:
        with torch.inference_mode():
            return torch_model(*tensors)

    probabilities = benchmark(forward)
    assert probabilities.shape == (batch,)
    assert np.max(np.abs(probabilities.numpy() - predictor.predict(rows))) <= 1e-5


@pytest.mark.parametrize("length", RANK_LENGTHS)
@pytest.mark.parametrize("candidates", RANK_CANDIDATES)
def test_rank(benchmark, predictor: Predictor, candidates: int, length: int) -> None:
    benchmark.group = f"rank candidates={candidates} length={length}"
    user_row, candidate_columns = ranking_request(predictor, candidates, length)
    ranking = benchmark(predictor.rank, user_row, candidate_columns)
    assert len(ranking) == candidates


@pytest.mark.parametrize("length", RANK_LENGTHS)
@pytest.mark.parametrize("candidates", RANK_CANDIDATES)
def test_predict_replicated(benchmark, predictor: Predictor, candidates: int, length: int) -> None:
    """What rank replaces: predict on one row per candidate, each carrying the user's history. The histories go in
    as a 2-D array, predict's fastest input form, so the comparison is against predict at its best."""
    benchmark.group = f"rank candidates={candidates} length={length}"
    user_row, candidate_columns = ranking_request(predictor, candidates, length)
    rows = {**candidate_columns, **{name: np.repeat(np.asarray(value)[None], candidates, axis=0) for name, value in user_row.items()}}
    probabilities = benchmark(predictor.predict, rows)
    ranking = predictor.rank(user_row, candidate_columns)
    assert np.max(np.abs(probabilities[ranking.order] - ranking.probabilities)) <= 1e-5


def matmul_session(size: int, integer: bool = False) -> ort.InferenceSession:
    """ONNX Runtime running one (size x size) @ (size x size) product with a constant right-hand side: float32
    (MatMul), or with `integer` uint8 @ int8 into int32 (MatMulInteger), the rate int8 graphs compute at (VNNI
    where the CPU has it)."""
    rng = np.random.default_rng(0)
    if integer:
        op, a_type, w_type, y_type = "MatMulInteger", TensorProto.UINT8, TensorProto.INT8, TensorProto.INT32
        values = rng.integers(-127, 128, (size, size))
    else:
        op, a_type, w_type, y_type = "MatMul", TensorProto.FLOAT, TensorProto.FLOAT, TensorProto.FLOAT
        values = rng.random((size, size), dtype=np.float32)
    weight = helper.make_tensor("w", w_type, [size, size], values.ravel())
    graph = helper.make_graph([helper.make_node(op, ["a", "w"], ["y"])], "gemm", [helper.make_tensor_value_info("a", a_type, [size, size])],
                              [helper.make_tensor_value_info("y", y_type, [size, size])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def test_gemm_rate(benchmark) -> None:
    benchmark.group = "gemm"
    benchmark.extra_info["flops"] = 2 * GEMM_SIZE ** 3
    session = matmul_session(GEMM_SIZE)
    a = np.random.default_rng(1).random((GEMM_SIZE, GEMM_SIZE), dtype=np.float32)
    (product,) = benchmark(session.run, None, {"a": a})
    weight = np.random.default_rng(0).random((GEMM_SIZE, GEMM_SIZE), dtype=np.float32)
    assert np.allclose(product[:4], a[:4] @ weight, rtol=1e-4)


@pytest.mark.parametrize("form", ["arrays", "lists"])
def test_encode_input_form(benchmark, predictor: Predictor, form: str) -> None:
    """Encoding 256 rows of 50 behaviours given as numpy arrays, or as plain Python lists (as JSON decodes them)."""
    benchmark.group = "encode input form"
    arrays = raw_batch(predictor, 256, 50)
    rows = arrays if form == "arrays" else {name: [np.asarray(v).tolist() for v in column] if name.startswith("hist_") else
                                            np.asarray(column).tolist() for name, column in arrays.items()}
    feed = benchmark(predictor.encode, rows)
    expected = predictor.encode(arrays)
    assert all(np.array_equal(feed[name], expected[name]) for name in expected)
