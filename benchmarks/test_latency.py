"""Batch latency over batch size and sequence length: the runtime's predict (raw values in, folded graph), the
ONNX session alone (encoded arrays in) for the plain, folded and int8 graphs, and PyTorch eager on the same
weights. Compare within one run, on one machine."""

from pathlib import Path

import numpy as np
import pytest
import torch

from din_export.checkpoint import load_model
from din_export.reexport import export_bundle
from din_runtime import Predictor

BATCHES = (1, 64, 256, 1024)
LENGTHS = (10, 50)
GRAPHS = ("plain", "folded", "int8")


def raw_batch(predictor: Predictor, batch: int, length: int, seed: int = 0) -> dict:
    """Raw rows drawn from the bundle's vocabularies, every history exactly `length` long."""
    rng = np.random.default_rng(seed)
    keys = {f["name"]: np.asarray(f["keys"]) for f in predictor.manifest["encoding"] if f["kind"] == "categorical"}
    items = rng.integers(0, len(keys["item_id"]), (batch, length + 1))
    return {
        "user_id": rng.choice(keys["user_id"], batch),
        "item_id": keys["item_id"][items[:, 0]],
        "cate_id": rng.choice(keys["cate_id"], batch),
        "price": rng.lognormal(3.0, 0.6, batch),
        "hist_item_id": list(keys["item_id"][items[:, 1:]]),
        "hist_cate_id": list(rng.choice(keys["cate_id"], (batch, length))),
    }


@pytest.fixture(scope="module")
def predictor(reference_bundle: Path) -> Predictor:
    return Predictor.load(reference_bundle, providers="cpu")


@pytest.fixture(scope="module")
def graph_predictors(reference_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Predictor]:
    """The same weights exported as the plain graph, the folded graph and the int8 (embedding tables) graph."""
    folder = tmp_path_factory.mktemp("graphs")
    settings = {"plain": {"graph": "plain"}, "folded": {"graph": "folded"}, "int8": {"graph": "folded", "precision": "int8", "force": True}}
    for name, options in settings.items():
        export_bundle(reference_bundle, folder / name, **options)
    return {name: Predictor.load(folder / name, providers="cpu") for name in settings}


@pytest.fixture(scope="module")
def torch_model(reference_bundle: Path):
    return load_model(reference_bundle)


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("batch", BATCHES)
def test_runtime_predict(benchmark, predictor: Predictor, batch: int, length: int) -> None:
    benchmark.group = f"batch={batch} length={length}"
    rows = raw_batch(predictor, batch, length)
    probabilities = benchmark(predictor.predict, rows)
    assert probabilities.shape == (batch,)


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
    feed = predictor.encode(raw_batch(predictor, batch, length))
    tensors = [torch.from_numpy(feed[name]) for name in predictor.feature_names]

    def forward() -> torch.Tensor:
        with torch.inference_mode():
            return torch.sigmoid(torch_model(*tensors))

    probabilities = benchmark(forward)
    assert probabilities.shape == (batch,)
    assert np.max(np.abs(probabilities.numpy() - predictor.predict(raw_batch(predictor, batch, length)))) <= 1e-5
