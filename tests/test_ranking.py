"""Predictor.rank: many candidates for one user, the history sent once; equal to predict on the replicated rows."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from din_export.data.synthetic import generate
from din_runtime import BundleError, InputError, Predictor, Ranking
from helpers import rank_against_predict

ATOL = 1e-5


def raw_rows(count: int, seed: int) -> dict:
    table = generate(count, seed=seed, max_history=80)  # histories longer than max_len, IDs the bundle never saw
    return {name: table.column(name).to_pylist() for name in table.column_names}


@pytest.fixture(scope="module")
def predictor(bundle: Path) -> Predictor:
    return Predictor.load(bundle, providers="cpu")


def test_rank_equals_predict_on_the_replicated_rows(predictor: Predictor) -> None:
    assert predictor.ranking_session is not None
    rows = raw_rows(300, seed=11)
    lengths = [len(h) for h in rows["hist_item_id"]]
    for user in (int(np.argmax(lengths)), int(np.argmin(lengths)), 7):  # longest (cut to max_len), shortest, any
        ranking, replicated = rank_against_predict(predictor, rows, user)
        assert isinstance(ranking, Ranking) and len(ranking) == 300
        assert sorted(ranking.order.tolist()) == list(range(300))
        assert np.max(np.abs(ranking.probabilities - replicated[ranking.order])) <= ATOL
        assert np.all(np.diff(ranking.probabilities) <= 0)  # best first
        assert ranking.candidates["item_id"] == [rows["item_id"][i] for i in ranking.order]


def test_top_k_keeps_the_best_and_an_empty_history_is_scored(predictor: Predictor) -> None:
    rows = raw_rows(120, seed=12)
    rows["hist_item_id"][0], rows["hist_cate_id"][0] = [], []
    whole, _ = rank_against_predict(predictor, rows, user=0)
    top, replicated = rank_against_predict(predictor, rows, user=0, top_k=5)
    assert top.order.tolist() == whole.order[:5].tolist() and len(top.candidates["price"]) == 5
    assert np.max(np.abs(top.probabilities - replicated[top.order])) <= ATOL and np.all(np.isfinite(whole.probabilities))
    assert len(rank_against_predict(predictor, rows, user=0, top_k=1000)[0]) == 120


def test_rank_on_movielens_equals_predict(ml100k_samples: Path, ml100k_bundle: Path) -> None:
    import pyarrow.parquet as pq

    rows = pq.read_table(ml100k_samples / "test.parquet").slice(0, 500).to_pydict()
    item_side = ("item_id", "genre", "release_year")  # a movie's own features; the rest describe the user
    predictor = Predictor.load(ml100k_bundle, providers="cpu")
    user_row = {name: rows[name][42] for name in predictor.request_names if name not in item_side}
    candidates = {name: rows[name] for name in item_side}
    ranking = predictor.rank(user_row, candidates, top_k=20)
    replicated = predictor.predict({**candidates, **{name: [value] * 500 for name, value in user_row.items()}})
    assert np.max(np.abs(ranking.probabilities - replicated[ranking.order])) <= ATOL
    assert ranking.order.tolist() == np.argsort(-replicated, kind="stable")[:20].tolist()


def test_chunked_ranking_and_a_bundle_without_the_ranking_graph(bundle: Path, predictor: Predictor, tmp_path: Path) -> None:
    rows = raw_rows(50, seed=13)
    whole, _ = rank_against_predict(predictor, rows, user=3)
    chunked, _ = rank_against_predict(Predictor.load(bundle, providers="cpu", rank_block=300), rows, user=3)  # a few candidates a block
    assert np.max(np.abs(whole.probabilities - chunked.probabilities)) <= 1e-6
    older = tmp_path / "older"
    shutil.copytree(bundle, older)
    (older / "rank.onnx").unlink()
    manifest = json.loads((older / "manifest.json").read_text())
    del manifest["ranking"]
    (older / "manifest.json").write_text(json.dumps(manifest))
    replicated_path = Predictor.load(older, providers="cpu")
    assert replicated_path.ranking_session is None
    fallback, _ = rank_against_predict(replicated_path, rows, user=3)
    assert np.max(np.abs(whole.probabilities - fallback.probabilities)) <= ATOL


def test_a_damaged_ranking_graph_is_refused(bundle: Path, tmp_path: Path) -> None:
    copy = tmp_path / "damaged"
    shutil.copytree(bundle, copy)
    data = bytearray((copy / "rank.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "rank.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="rank.onnx: sha256"):
        Predictor.load(copy)


def test_misplaced_and_bad_features_name_the_feature(predictor: Predictor) -> None:
    user = {"user_id": 1, "hist_item_id": [11, 12], "hist_cate_id": [1, 2]}
    candidates = {"item_id": [13, 14], "cate_id": [3, 4], "price": [1.0, 2.0]}
    predictor.rank(user, candidates)
    cases = [
        (user, {**candidates, "hist_item_id": [[11], [12]]}, "feature 'hist_item_id': is a behaviour history"),
        (user, {k: v for k, v in candidates.items() if k != "item_id"}, "feature 'item_id': missing from candidates"),
        ({**user, "price": 3.0}, candidates, "feature 'price': given in both"),
        ({k: v for k, v in user.items() if k != "user_id"}, candidates, "feature 'user_id': missing from user_row and from candidates"),
        ({**user, "hist_cate_id": [1]}, candidates, "feature 'hist_cate_id': in user_row: history length differs"),
        (user, {**candidates, "price": [1.0, "cheap"]}, "feature 'price', row 1"),
        (user, {**candidates, "cate_id": [3]}, "feature 'cate_id': has 1 rows"),
    ]
    for user_row, candidate_columns, message in cases:
        with pytest.raises(InputError, match=message):
            predictor.rank(user_row, candidate_columns)
    for top_k in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="top_k must be a positive integer"):
            predictor.rank(user, candidates, top_k=top_k)
    assert len(predictor.rank(user, {"item_id": [], "cate_id": [], "price": []})) == 0
