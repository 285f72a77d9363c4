"""DIN's explanation of a score: explain.onnx (probability and the activation unit's weight per behaviour),
Predictor.explain, rank(explain=True), the server's explain route and `report --explain`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from din_runtime import Predictor
from helpers import post_json, start_server

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def rows() -> dict[str, list]:
    """Rows of the built-in data as lists: histories of every length from empty to past max_len (50)."""
    from din_export.data.synthetic import generate

    table = generate(40, seed=5, max_history=70).to_pydict()
    table["hist_item_id"][0], table["hist_cate_id"][0] = [], []
    return {name: values for name, values in table.items() if name != "label"}


def test_explain_gives_predict_probabilities_and_one_weight_per_behaviour_used(predictor: Predictor, rows: dict) -> None:
    explanation = predictor.explain(rows)
    assert np.array_equal(explanation.probabilities, predictor.predict(rows))
    assert [len(w) for w in explanation.weights] == [min(len(h), 50) for h in rows["hist_item_id"]]
    assert all(np.all(np.isfinite(w)) for w in explanation.weights) and len(explanation.weights[0]) == 0


def test_the_weights_are_what_pytorch_computes_for_the_most_recent_behaviours(bundle: Path, predictor: Predictor, rows: dict) -> None:
    from din_export.bundle import load_bundle

    din = load_bundle(bundle).din
    feed = predictor.encode(rows)
    with torch.inference_mode():
        _, weights = din.explained(*(torch.from_numpy(feed[name]) for name in din.schema.names))
    explanation = predictor.explain(rows)
    for row, served in enumerate(explanation.weights):
        assert np.allclose(served, weights[row, :len(served)].numpy(), atol=1e-5)
        assert np.all(weights[row, len(served):].numpy() == 0)  # padding weighs nothing
    long_row = next(i for i, h in enumerate(rows["hist_item_id"]) if len(h) > 50)
    truncated = {name: [values[long_row][-50:] if name.startswith("hist_") else values[long_row]] for name, values in rows.items()}
    assert np.allclose(predictor.explain(truncated).weights[0], explanation.weights[long_row], atol=1e-6)


def test_rank_explains_its_ranked_candidates_as_explain_does_on_the_replicated_rows(predictor: Predictor, rows: dict) -> None:
    user = {name: rows[name][3] for name in ("user_id", "hist_item_id", "hist_cate_id")}
    candidates = {name: rows[name] for name in ("item_id", "cate_id", "price")}
    ranking = predictor.rank(user, candidates, top_k=5, explain=True)
    replicated = {**{name: [candidates[name][i] for i in ranking.order] for name in candidates},
                  **{name: [value] * 5 for name, value in user.items()}}
    explanation = predictor.explain(replicated)
    assert len(ranking.weights) == 5
    for ranked, explained in zip(ranking.weights, explanation.weights, strict=True):
        assert np.allclose(ranked, explained, atol=1e-5)
    assert predictor.rank(user, candidates, top_k=5).weights is None


def _infer_body(rows: dict, count: int) -> dict:
    inputs = []
    for name, values in rows.items():
        values = values[:count]
        if name.startswith("hist_"):
            inputs.append({"name": name, "datatype": "BYTES", "shape": [count], "data": [" ".join(map(str, h)) for h in values]})
        elif name == "price":
            inputs.append({"name": name, "datatype": "FP32", "shape": [count], "data": [v if v is not None else float("nan") for v in values]})
        else:
            inputs.append({"name": name, "datatype": "INT64", "shape": [count], "data": values})
    return {"id": "why", "inputs": inputs}


@pytest.mark.slow
def test_the_server_explains_rows_and_ranked_candidates(bundle: Path, predictor: Predictor, rows: dict) -> None:
    rows = {name: values for name, values in rows.items() if name != "price"} | {"price": [1.5] * len(rows["item_id"])}
    process, url = start_server(bundle, "din")
    try:
        status, answer = post_json(url, "/v2/models/din/explain", _infer_body(rows, 6))
        assert status == 200 and answer["id"] == "why" and answer["model_version"] == "1"
        expected = predictor.explain({name: values[:6] for name, values in rows.items()})
        assert np.allclose(answer["probabilities"], expected.probabilities, atol=1e-6)
        assert [len(w) for w in answer["weights"]] == [len(w) for w in expected.weights]
        assert all(np.allclose(a, e, atol=1e-6) for a, e in zip(answer["weights"], expected.weights, strict=True))
        status, ranked = post_json(url, "/v2/models/din/rank", {
            "user": {"user_id": rows["user_id"][2], "hist_item_id": rows["hist_item_id"][2], "hist_cate_id": rows["hist_cate_id"][2]},
            "candidates": {"item_id": rows["item_id"], "cate_id": rows["cate_id"], "price": rows["price"]}, "top_k": 3, "explain": True})
        assert status == 200 and len(ranked["weights"]) == 3 and len(ranked["weights"][0]) == min(50, len(rows["hist_item_id"][2]))
        status, refused = post_json(url, "/v2/models/din/rank", {"user": {}, "candidates": {}, "explain": "yes"})
        assert status == 400 and "'explain' must be true or false" in refused["error"]
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.slow
def test_report_draws_the_explanation_figure(bundle: Path, rows: dict, tmp_path: Path) -> None:
    import pyarrow as pa

    table = tmp_path / "rows.parquet"
    pq.write_table(pa.table({**rows, "label": [0] * len(rows["item_id"])}), table)
    figure = tmp_path / "why.png"
    result = subprocess.run([str(BIN / "din-export"), "report", str(bundle), "--explain", str(table), "--rows", "4",
                             "--explain-plot", str(figure)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert f"explanation of 4 candidates for the first row's user: {figure}" in result.stdout
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    misuse = subprocess.run([str(BIN / "din-export"), "report", str(bundle), "--rows", "3"], capture_output=True, text=True)
    assert misuse.returncode == 2 and "--rows applies to --explain TABLE" in misuse.stderr


@pytest.mark.slow
def test_removing_the_highest_weighted_behaviour_moves_the_score_more_than_the_lowest(ml100k_bundle: Path, ml100k_samples: Path) -> None:
    """Faithfulness on real MovieLens rows: the weights say which behaviours the score rests on. The weights are the
    paper's raw ones, signed (a behaviour may be subtracted from the interest), so a behaviour's weight in the pooled
    sum is its magnitude: highest and lowest by |weight|."""
    table = pq.read_table(ml100k_samples / "test.parquet").slice(0, 600).to_pydict()
    predictor = Predictor.load(ml100k_bundle, providers="cpu")
    features = [name for name in predictor.request_names if name in table]
    rows = {name: table[name] for name in features}
    usable = [i for i, history in enumerate(rows["hist_item_id"]) if len(history) >= 5]
    rows = {name: [values[i] for i in usable] for name, values in rows.items()}
    explanation = predictor.explain(rows)
    histories = [name for name in features if name.startswith("hist_")]

    def without(position_of: callable) -> dict:
        edited = {name: list(values) for name, values in rows.items()}
        for i, weights in enumerate(explanation.weights):
            start = len(rows["hist_item_id"][i]) - len(weights)  # the weights cover the most recent max_len
            drop = start + int(position_of(weights))
            for name in histories:
                edited[name][i] = rows[name][i][:drop] + rows[name][i][drop + 1:]
        return edited

    highest = np.abs(predictor.predict(without(lambda w: np.argmax(np.abs(w)))) - explanation.probabilities)
    lowest = np.abs(predictor.predict(without(lambda w: np.argmin(np.abs(w)))) - explanation.probabilities)
    assert len(usable) > 300
    assert highest.mean() > lowest.mean()
