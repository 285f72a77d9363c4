"""`din-export evaluate`: any table scored by a bundle through din_runtime, calibration included, and the ranking
evaluation (HR@K, NDCG@K, MRR of each positive among sampled negatives)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from din_export.evaluation import draw_negatives, ranking_metrics

BIN = Path(sys.executable).parent


def evaluate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "din-export"), "evaluate", *map(str, args)], capture_output=True, text=True)


def test_negatives_are_distinct_never_excluded_and_reproducible() -> None:
    keys = np.arange(1, 201).astype(str)
    excluded = {"1", "7", "8", "200", "not in the pool"}
    first = draw_negatives(np.random.default_rng(3), keys, excluded, 150)
    again = draw_negatives(np.random.default_rng(3), keys, excluded, 150)
    assert np.array_equal(first, again) and len(set(first.tolist())) == 150
    assert not set(keys[first]) & excluded
    assert len(draw_negatives(np.random.default_rng(0), keys, excluded, 196)) == 196
    with pytest.raises(ValueError, match="only 196 items are left to draw 197 negatives from"):
        draw_negatives(np.random.default_rng(0), keys, excluded, 197)


def test_ranking_metrics_of_known_ranks() -> None:
    metrics = ranking_metrics(np.array([1, 2, 10, 30]))
    assert metrics["hr@5"] == 0.5 and metrics["hr@10"] == 0.75 and metrics["hr@20"] == 0.75
    assert metrics["ndcg@5"] == pytest.approx((1 + 1 / np.log2(3)) / 4)
    assert metrics["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 10 + 1 / 30) / 4)


@pytest.fixture(scope="module")
def test_rows(ml100k_samples: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 1,000 rows of MovieLens-100k's test split (about 500 positives)."""
    path = tmp_path_factory.mktemp("evaluate") / "test.parquet"
    pq.write_table(pq.read_table(ml100k_samples / "test.parquet").slice(0, 1000), path)
    return path


@pytest.mark.slow
def test_evaluate_matches_the_training_metrics_and_writes_the_reliability_diagram(ml100k_bundle: Path, ml100k_samples: Path,
                                                                                  tmp_path: Path) -> None:
    plot = tmp_path / "reliability.png"
    result = evaluate(ml100k_bundle, "--data", ml100k_samples / "test.parquet", "--json", "--plot", plot)
    assert result.returncode == 0, result.stderr
    scored = json.loads(result.stdout)
    trained = json.loads((ml100k_bundle / "manifest.json").read_text())["metrics"]["test"]
    for key in ("auc", "gauc", "logloss", "accuracy", "ece", "calibration_ratio", "rows", "gauc_users"):
        assert scored[key] == pytest.approx(trained[key], abs=1e-5), key
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = evaluate(ml100k_bundle, "--data", ml100k_samples / "test.parquet")
    assert text.returncode == 0 and "GAUC over 943 users" in text.stdout and "ECE over 10 equal-mass bins" in text.stdout


@pytest.mark.slow
def test_rank_100_is_reproducible_and_consistent(ml100k_bundle: Path, test_rows: Path) -> None:
    runs = [evaluate(ml100k_bundle, "--data", test_rows, "--rank", "100", "--json") for _ in range(2)]
    assert all(run.returncode == 0 for run in runs), runs[0].stderr
    first, second = (json.loads(run.stdout)["ranking"] for run in runs)
    assert first == second
    assert first["negatives"] == 100 and first["positives"] == int(pq.read_table(test_rows).column("label").to_numpy().sum())
    cutoffs = (5, 10, 20)
    for k in cutoffs:
        assert 0 < first[f"ndcg@{k}"] <= first[f"hr@{k}"] <= 1
    assert [first[f"hr@{k}"] for k in cutoffs] == sorted(first[f"hr@{k}"] for k in cutoffs)
    assert [first[f"ndcg@{k}"] for k in cutoffs] == sorted(first[f"ndcg@{k}"] for k in cutoffs)
    assert first["hr@10"] > 10 / 101  # better than chance among 101 candidates
    other_seed = json.loads(evaluate(ml100k_bundle, "--data", test_rows, "--rank", "100", "--seed", "1", "--json").stdout)["ranking"]
    assert other_seed != first and other_seed["hr@20"] == pytest.approx(first["hr@20"], abs=0.06)


def test_evaluate_flags_and_tables_fail_in_one_line(bundle: Path, tmp_path: Path) -> None:
    misuse = evaluate(bundle, "--data", bundle / "manifest.json", "--items", bundle / "manifest.json")
    assert misuse.returncode == 2 and "--items applies to --rank N" in misuse.stderr
    table = tmp_path / "unlabelled.csv"
    table.write_text("user_id,item_id\n1,2\n")
    result = evaluate(bundle, "--data", table)
    assert result.returncode != 0 and len(result.stderr.strip().splitlines()) == 1 and "label" in result.stderr


@pytest.mark.slow
def test_rank_draws_from_the_item_table_prepare_writes(ml100k_bundle: Path, ml100k_samples: Path, test_rows: Path) -> None:
    items = pq.read_table(ml100k_samples / "items.parquet")
    assert items.column_names == ["item_id", "genre", "release_year"] and items.num_rows == 1682
    result = evaluate(ml100k_bundle, "--data", test_rows, "--rank", "50", "--items", ml100k_samples / "items.parquet", "--json")
    assert result.returncode == 0, result.stderr
    ranking = json.loads(result.stdout)["ranking"]
    assert ranking["pool"] == f"1,682 items of {ml100k_samples / 'items.parquet'}" and 0 < ranking["ndcg@10"] <= ranking["hr@10"]
