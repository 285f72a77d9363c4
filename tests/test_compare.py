"""`din-export compare OLD NEW --data TABLE`: both bundles scored through din_runtime, the AUC difference with a
paired bootstrap interval over users, exit 0 / 1 / 2 for a rollout script."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from din_export.cli import main
from din_export.compare import TiedOrder, paired_bootstrap
from din_export.data.synthetic import generate
from din_export.training.metrics import auc
from helpers import build_bundle


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("compare") / "window.parquet"
    pq.write_table(generate(3000, seed=11), path)
    return path


def test_the_weighted_auc_is_the_rank_sum_auc_with_rows_repeated() -> None:
    rng = np.random.default_rng(0)
    scores = np.round(rng.random(500), 2)  # many ties
    truth = (rng.random(500) < scores).astype(np.float32)
    order = TiedOrder(scores, truth)
    assert order.auc(np.ones(500)) == pytest.approx(auc(truth, scores), abs=1e-12)
    weights = rng.integers(0, 4, 500).astype(np.float64)
    repeated = np.repeat(np.arange(500), weights.astype(int))
    assert order.auc(weights) == pytest.approx(auc(truth[repeated], scores[repeated]), abs=1e-12)


def test_the_interval_is_paired_and_reproducible() -> None:
    rng = np.random.default_rng(1)
    truth = (rng.random(2000) < 0.3).astype(np.float32)
    users = rng.integers(0, 200, 2000)
    good = truth + rng.normal(0, 0.8, 2000)
    assert paired_bootstrap(good, good, truth, users, 200, 0) == (0.0, 0.0)  # the same model: no difference at all
    worse = truth + rng.normal(0, 3.0, 2000)
    low, high = paired_bootstrap(good, worse, truth, users, 200, 0)
    assert high < 0 and paired_bootstrap(good, worse, truth, users, 200, 0) == (low, high)


def test_a_model_against_itself_passes_with_an_interval_holding_zero(bundle: Path, table: Path) -> None:
    result = CliRunner().invoke(main, ["compare", str(bundle), str(bundle), "--data", str(table), "--json", "--resamples", "200"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    low, high = report["interval"]
    assert low <= 0 <= high and report["auc_difference"] == 0 and report["worse"] is False
    users = len(set(pq.read_table(table, columns=["user_id"]).column("user_id").to_pylist()))
    assert report["rows"] == 3000 and report["users"] == users and report["old"]["auc"] == report["new"]["auc"]
    assert {"auc", "gauc", "logloss", "accuracy", "gauc_users"} <= set(report["old"])
    text = CliRunner().invoke(main, ["compare", str(bundle), str(bundle), "--data", str(table), "--resamples", "200"])
    assert text.exit_code == 0 and "AUC new - old: +0.0000" in text.output and "not worse" in text.output


@pytest.mark.slow
def test_a_clearly_worse_model_exits_one(table: Path, tmp_path: Path) -> None:
    strong = build_bundle(tmp_path / "strong", samples=20000, epochs=2)
    weak = build_bundle(tmp_path / "weak", samples=300, epochs=1, embedding_dim=2, attention_hidden=(2,), mlp_hidden=(2,))
    result = CliRunner().invoke(main, ["compare", str(strong), str(weak), "--data", str(table), "--json", "--resamples", "300"])
    assert result.exit_code == 1, result.output
    report = json.loads(result.output)
    assert report["worse"] is True and report["interval"][1] < 0 < report["old"]["auc"] - report["new"]["auc"]
    # the other way round NEW is the better one, so the gate lets it through
    assert CliRunner().invoke(main, ["compare", str(weak), str(strong), "--data", str(table), "--resamples", "300"]).exit_code == 0


def test_a_table_the_bundles_cannot_read_is_one_line_with_exit_two(bundle: Path, tmp_path: Path) -> None:
    unlabelled = tmp_path / "unlabelled.parquet"
    pq.write_table(generate(200, seed=2).drop_columns(["label"]), unlabelled)
    result = CliRunner().invoke(main, ["compare", str(bundle), str(bundle), "--data", str(unlabelled)])
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "label" in result.output, result.output
