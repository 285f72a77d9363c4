"""A bundle written by din-export 0.1.0 before the restructuring (tests/fixtures/bundle-0.1.0, committed with the
outputs it gave then) loads, predicts, ranks, verifies and re-exports unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from din_export.cli import main
from din_runtime import Predictor

FIXTURE = Path(__file__).parent / "fixtures" / "bundle-0.1.0"
EXPECTED = json.loads((FIXTURE.parent / "bundle-0.1.0.expected.json").read_text(encoding="utf-8"))
USER_SIDE = ("user_id", "hist_item_id", "hist_cate_id")


@pytest.fixture(scope="module")
def old_predictor() -> Predictor:
    return Predictor.load(FIXTURE, providers="cpu")


def test_old_bundle_predicts_what_it_predicted(old_predictor: Predictor) -> None:
    probabilities = old_predictor.predict(EXPECTED["rows"])
    np.testing.assert_allclose(probabilities, EXPECTED["probabilities"], rtol=0, atol=1e-6)


def test_old_bundle_ranks_as_it_ranked(old_predictor: Predictor) -> None:
    rows, user = EXPECTED["rows"], EXPECTED["rank_user_row"]
    ranking = old_predictor.rank({k: rows[k][user] for k in USER_SIDE}, {k: v for k, v in rows.items() if k not in USER_SIDE})
    assert ranking.order.tolist() == EXPECTED["rank_order"]
    np.testing.assert_allclose(ranking.probabilities, EXPECTED["rank_probabilities"], rtol=0, atol=1e-6)


def test_old_bundle_passes_verify_and_inspect() -> None:
    runner = CliRunner()
    verified = runner.invoke(main, ["verify", str(FIXTURE)])
    assert verified.exit_code == 0, verified.output
    assert "verified" in verified.output
    inspected = runner.invoke(main, ["inspect", str(FIXTURE)])
    assert inspected.exit_code == 0, inspected.output
    assert "matches the manifest" in inspected.output


def test_old_bundle_reexports_to_a_bundle_that_predicts_the_same(tmp_path: Path) -> None:
    out = tmp_path / "again"
    result = CliRunner().invoke(main, ["export", str(FIXTURE), "--out", str(out)])
    assert result.exit_code == 0, result.output
    again = Predictor.load(out, providers="cpu").predict(EXPECTED["rows"])
    np.testing.assert_allclose(again, EXPECTED["probabilities"], rtol=0, atol=1e-5)
