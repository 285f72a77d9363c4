"""Fixtures shared by tests/ and benchmarks/: small real bundles trained once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

SMALL_MODEL = {"embedding_dim": 8, "attention_hidden": (16, 8), "mlp_hidden": (32, 16)}


def build_bundle(out: Path, samples: int = 3000, epochs: int = 2, batch_size: int = 128, **model_options) -> Path:
    from din_export.model import ModelConfig
    from din_export.pipeline import DataSource, train_and_export
    from din_export.train import TrainConfig

    train_and_export(DataSource(synthetic_samples=samples), out, model_config=ModelConfig(**{**SMALL_MODEL, **model_options}),
                     train_config=TrainConfig(epochs=epochs, batch_size=batch_size, progress=False))
    return out


@pytest.fixture(scope="session")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DIN bundle trained on the built-in data."""
    return build_bundle(tmp_path_factory.mktemp("bundles") / "din")



@pytest.fixture(scope="session")
def reference_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DIN at the reference sizes (embedding 16, attention 80-40, MLP 200-80) for latency benchmarks.
    Latency does not depend on how well the weights are trained; one short epoch gives real weights."""
    return build_bundle(tmp_path_factory.mktemp("bench") / "din", samples=2000, epochs=1,
                        embedding_dim=16, attention_hidden=(80, 40), mlp_hidden=(200, 80))
