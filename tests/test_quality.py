"""On the built-in data, attention over the history must beat mean pooling trained the same way."""

from pathlib import Path

import pytest

from din_runtime.manifest import read_manifest
from helpers import build_bundle


@pytest.mark.slow
def test_din_beats_mean_pooling_on_builtin_data(tmp_path: Path) -> None:
    auc = {}
    for variant in ("din", "base"):
        bundle = build_bundle(tmp_path / variant, samples=40_000, epochs=4, batch_size=256, variant=variant,
                              embedding_dim=8, attention_hidden=(32, 16), mlp_hidden=(64, 32))
        auc[variant] = read_manifest(bundle)["metrics"]["test"]["auc"]
    # Measured at this size with seeds 0, 1, 2: DIN 0.746, 0.717, 0.741 against base 0.599, 0.625, 0.631.
    assert auc["din"] > auc["base"] + 0.03, auc
