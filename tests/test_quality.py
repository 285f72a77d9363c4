"""On the built-in data, attention over the history must beat mean pooling trained the same way."""

from pathlib import Path

from conftest import build_bundle
from din_runtime.manifest import read_manifest


def test_din_beats_mean_pooling_on_builtin_data(tmp_path: Path) -> None:
    auc = {}
    for variant in ("din", "base"):
        bundle = build_bundle(tmp_path / variant, samples=20_000, epochs=4, variant=variant,
                              embedding_dim=8, attention_hidden=(32, 16), mlp_hidden=(64, 32))
        auc[variant] = read_manifest(bundle)["metrics"]["test"]["auc"]
    # Measured 0.646 vs 0.619 (seed 0) and 0.655 vs 0.625 (seed 1) at this size; the default run's gap is larger.
    assert auc["din"] > auc["base"] + 0.01, auc
