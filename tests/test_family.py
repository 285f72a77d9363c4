"""DIEN and BST beside DIN: what each model computes (AUGRU at padding, DIEN's auxiliary loss, BST's weights) and
every path a DIN bundle has, on their bundles: the server's infer, rank and explain routes, Triton's raw-input
graph, evaluate and compare, a warm start, tune with augmentation, and two processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from test_raw_inputs import raw_feed, raw_session

from din_export.cli import main
from din_export.config import DIEN_AUXILIARY_HIDDEN, ModelConfig, TrainConfig
from din_export.data.source import DataSource
from din_export.data.synthetic import generate
from din_export.model.family import build_model
from din_export.pipeline import train_and_export
from din_runtime import Predictor
from din_runtime.schema import FeatureSchema
from helpers import SMALL_MODEL, build_bundle, post_json, start_server, tensor

MAX_LEN = 12
ENCODING = [{"name": "item", "kind": "categorical", "key_type": "int", "keys": list(range(1, 31))},
            {"name": "genre", "kind": "categorical", "key_type": "int", "keys": list(range(1, 5))},
            {"name": "hist", "kind": "sequence", "shares": "item", "max_len": MAX_LEN},
            {"name": "hist_genre", "kind": "sequence", "shares": "genre", "max_len": MAX_LEN}]
FAMILY = ("dien", "bst")


def _model(variant: str, seed: int = 0):  # noqa: ANN202 - a BehaviourModel
    torch.manual_seed(seed)
    return build_model(FeatureSchema.from_manifest(ENCODING), ModelConfig(variant=variant, **SMALL_MODEL)).eval()


def _row(length: int, width: int, rng: np.random.Generator) -> list[torch.Tensor]:
    """One row in schema order (item, genre, hist, hist_genre) with `length` real behaviours padded to `width`."""
    history = np.zeros((1, width), dtype=np.int64)
    history[0, :length] = rng.integers(1, 31, length)
    genres = np.where(history > 0, history % 4 + 1, 0)
    return [torch.tensor([3]), torch.tensor([2]), torch.from_numpy(history), torch.from_numpy(genres)]


def test_augru_leaves_its_state_unchanged_on_padded_steps_at_every_length() -> None:
    """For every length 0..max_len: AUGRU's states after the last real behaviour equal its state there (zero for an
    empty history), so the score and the weights of a padded row are those of the same row unpadded."""
    dien = _model("dien")
    rng = np.random.default_rng(0)
    for length in range(MAX_LEN + 1):
        padded = _row(length, MAX_LEN, rng)
        tight = [padded[0], padded[1], padded[2][:, :max(length, 1)], padded[3][:, :max(length, 1)]]
        with torch.inference_mode():
            x = dict(zip(dien.schema.names, padded, strict=True))
            keys, mask = dien.behaviours(x)
            scores = dien.attention.weights(dien.candidate(x), keys, mask)
            last, states = dien.evolution(keys, scores)
            before = states[0, length - 1] if length else torch.zeros_like(last[0])
            assert all(torch.equal(states[0, step], before) for step in range(length, MAX_LEN)), length
            assert torch.equal(last[0], before)
            (logit, weights), (tight_logit, tight_weights) = dien.explained(*padded), dien.explained(*tight)
        assert torch.allclose(logit, tight_logit, atol=1e-6), length
        assert torch.allclose(weights[0, :length], tight_weights[0, :length], atol=1e-6) and not weights[0, length:].any()


def test_the_auxiliary_loss_never_counts_a_draw_of_the_true_next_item() -> None:
    """Where every behaviour is one item, every draw is the true next one: only the clicked pairs count."""
    dien = _model("dien").train()
    history = torch.full((4, MAX_LEN), 7)
    history[2, 5:] = 0
    x = dict(zip(dien.schema.names, [torch.tensor([1, 2, 3, 4]), torch.tensor([1, 1, 2, 2]), history, torch.where(history > 0, 2, 0)],
                 strict=True))
    embedded, mask = dien.embedded(x)
    states = dien.extractor(embedded) * mask.unsqueeze(-1)
    loss = dien.next_behaviour_loss(states, embedded, mask, history)
    clicked = dien.auxiliary(torch.cat([states[:, :-1], embedded[:, 1:]], dim=-1)).squeeze(-1)
    following = mask[:, 1:]
    expected = torch.nn.functional.softplus(-clicked)[following].sum() / following.sum()
    assert torch.allclose(loss, expected, atol=1e-6)
    dien(*x.values())  # a training pass keeps the same loss, weighted, for the training loop to take once
    assert torch.allclose(dien.auxiliary_loss(), dien.config.auxiliary_weight * expected, atol=1e-6)
    assert dien.auxiliary_loss() is None


def test_bst_weights_are_the_candidates_attention_over_real_behaviours() -> None:
    bst = _model("bst")
    rng = np.random.default_rng(1)
    for length in (0, 1, 5, MAX_LEN):
        with torch.inference_mode():
            _, weights = bst.explained(*_row(length, MAX_LEN, rng))
        assert not weights[0, length:].any() and torch.all(weights >= 0) and float(weights.sum()) < 1.0  # the rest on itself


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("family")
    return {variant: build_bundle(folder / variant, samples=1500, epochs=1, variant=variant) for variant in FAMILY}


@pytest.fixture(scope="module")
def rows() -> dict[str, list]:
    table = generate(24, seed=9, max_history=70).to_pydict()
    table["hist_item_id"][0], table["hist_cate_id"][0] = [], []
    return {name: values for name, values in table.items() if name != "label"}


def _infer_body(rows: dict[str, list], count: int) -> dict:
    inputs = [tensor(name, [" ".join(map(str, h)) for h in values[:count]] if name.startswith("hist_") else values[:count])
              for name, values in rows.items()]
    return {"inputs": inputs}


@pytest.mark.slow
@pytest.mark.parametrize("variant", FAMILY)
def test_the_server_predicts_ranks_and_explains_as_the_predictor_does(family: dict[str, Path], rows: dict, variant: str) -> None:
    predictor = Predictor.load(family[variant], providers="cpu")
    process, url = start_server(family[variant], variant)
    try:
        status, answer = post_json(url, f"/v2/models/{variant}/infer", _infer_body(rows, 8))
        assert status == 200
        np.testing.assert_allclose(answer["outputs"][0]["data"], predictor.predict({n: v[:8] for n, v in rows.items()}), atol=1e-6)
        user = {name: rows[name][3] for name in ("user_id", "hist_item_id", "hist_cate_id")}
        candidates = {name: rows[name] for name in ("item_id", "cate_id", "price")}
        status, ranked = post_json(url, f"/v2/models/{variant}/rank", {"user": user, "candidates": candidates, "top_k": 5, "explain": True})
        expected = predictor.rank(user, candidates, top_k=5, explain=True)
        assert status == 200 and ranked["order"] == expected.order.tolist()
        np.testing.assert_allclose(ranked["probabilities"], expected.probabilities, atol=1e-6)
        assert all(np.allclose(a, e, atol=1e-6) for a, e in zip(ranked["weights"], expected.weights, strict=True))
        status, explained = post_json(url, f"/v2/models/{variant}/explain", _infer_body(rows, 6))
        expected = predictor.explain({n: v[:6] for n, v in rows.items()})
        assert status == 200 and [len(w) for w in explained["weights"]] == [min(len(h), 50) for h in rows["hist_item_id"][:6]]
        assert all(np.allclose(a, e, atol=1e-6) for a, e in zip(explained["weights"], expected.weights, strict=True))
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.parametrize("variant", FAMILY)
def test_graphs_raw_inputs_evaluate_and_compare(family: dict[str, Path], rows: dict, variant: str, tmp_path: Path) -> None:
    bundle = family[variant]
    predictor = Predictor.load(bundle, providers="cpu")
    # Triton's raw-input graph: the bundle's encoding in ONNX in front of model.onnx, DIEN's Scan inside
    (probabilities,) = raw_session(bundle, tmp_path).run(["probability"], raw_feed(predictor, rows, 80))
    np.testing.assert_allclose(probabilities, predictor.predict(rows), rtol=0, atol=1e-5)
    if variant == "dien":  # the auxiliary network trains only: no graph holds its weights
        for graph in ("model.onnx", "rank.onnx", "explain.onnx"):
            shapes = [tuple(t.dims) for t in onnx.load(str(bundle / graph)).graph.initializer]
            assert not any(DIEN_AUXILIARY_HIDDEN[0] in shape for shape in shapes), graph
    reduced = CliRunner().invoke(main, ["export", str(bundle), "--precision", "int8", "--int8-products", "per-behaviour", "--force",
                                        "--out", str(tmp_path / "int8")])
    assert reduced.exit_code == 0 and "validation AUC" in reduced.output, reduced.output  # parity at int8 tolerance, Scan and all
    converted = json.loads((tmp_path / "int8" / "manifest.json").read_text())["onnx"]["precisions"]["converted"]
    assert converted["onnx"]["products"]["nodes"]  # the per-behaviour products in int8, whatever the model
    assert bool(converted["onnx"]["float32"]["loop_body_products"]) == (variant == "dien")  # DIEN's recurrences stay float32
    table = tmp_path / "table.parquet"
    pq.write_table(generate(400, seed=11), table)
    evaluated = CliRunner().invoke(main, ["evaluate", str(bundle), "--data", str(table), "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    assert 0.0 <= json.loads(evaluated.output)["auc"] <= 1.0
    compared = CliRunner().invoke(main, ["compare", str(bundle), str(bundle), "--data", str(table), "--json", "--resamples", "100"])
    assert compared.exit_code == 0, compared.output


@pytest.mark.slow
@pytest.mark.parametrize("variant", FAMILY)
def test_a_warm_start_for_zero_steps_predicts_as_its_parent(family: dict[str, Path], rows: dict, variant: str, tmp_path: Path) -> None:
    child = tmp_path / "child"
    train_and_export(DataSource(synthetic_samples=1500), child, None, None, TrainConfig(epochs=0, progress=False),
                     warm_start=family[variant])
    parent, continued = (Predictor.load(b, providers="cpu") for b in (family[variant], child))
    np.testing.assert_allclose(continued.predict(rows), parent.predict(rows), rtol=0, atol=1e-6)


@pytest.mark.slow
def test_tune_and_augmentation_train_the_family(tmp_path: Path) -> None:
    best = tmp_path / "best.toml"
    tuned = CliRunner().invoke(main, ["tune", "--model", "dien", "--samples", "1200", "--trials", "2", "--epochs", "1", "--out", str(best)])
    assert tuned.exit_code == 0, tuned.output
    trained = CliRunner().invoke(main, ["train-and-export", "--model", "bst", "--samples", "1200", "--epochs", "1", "--augmentation", "crop",
                                        "--augmentation-rate", "0.3", "--out", str(tmp_path / "bst"), "--quiet"])
    assert trained.exit_code == 0, trained.output
    assert json.loads((tmp_path / "bst" / "manifest.json").read_text())["training"]["augmentation"] == "crop"


@pytest.mark.slow
def test_dien_trains_in_two_processes(tmp_path: Path) -> None:
    torchrun = Path(sys.executable).parent / "torchrun"
    result = subprocess.run([str(torchrun), "--nproc-per-node", "2", "--master-port", "29523", "-m", "din_export", "train-and-export",
                             "--model", "dien", "--samples", "3000", "--epochs", "1", "--batch-size", "128", "--embedding-dim", "8",
                             "--quiet", "--out", str(tmp_path / "double")],
                            capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((tmp_path / "double" / "manifest.json").read_text())
    assert manifest["training"]["processes"] == 2 and manifest["model"]["variant"] == "dien"
