"""Fixtures shared by tests/ and benchmarks/: small real bundles trained once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

REFERENCE_MAX_LEN = 200
SMALL_MODEL = {"embedding_dim": 8, "attention_hidden": (16, 8), "mlp_hidden": (32, 16)}


def build_bundle(out: Path, samples: int = 3000, epochs: int = 2, batch_size: int = 128, spec_path: Path | None = None,
                 **model_options) -> Path:
    from din_export.model import ModelConfig
    from din_export.pipeline import DataSource, train_and_export
    from din_export.train import TrainConfig

    train_and_export(DataSource(synthetic_samples=samples), out, spec_path, model_config=ModelConfig(**{**SMALL_MODEL, **model_options}),
                     train_config=TrainConfig(epochs=epochs, batch_size=batch_size, progress=False))
    return out


@pytest.fixture(scope="session")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DIN bundle trained on the built-in data."""
    return build_bundle(tmp_path_factory.mktemp("bundles") / "din")


@pytest.fixture(scope="module")
def predictor(bundle: Path):
    """The bundle's Predictor on the CPU (modules that need another override this)."""
    from din_runtime import Predictor

    return Predictor.load(bundle, providers="cpu")


@pytest.fixture(scope="module")
def keys(predictor) -> dict[str, list]:
    """The vocabulary keys of each categorical feature of the predictor's bundle."""
    return {f["name"]: f["keys"] for f in predictor.manifest["encoding"] if f["kind"] == "categorical"}



@pytest.fixture(scope="session")
def reference_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DIN at the reference sizes (embedding 18 per field, attention 80-40, MLP 200-80) on the built-in data, with
    histories kept up to 200 behaviours, for latency benchmarks. Latency does not depend on how well the weights
    are trained; one short epoch gives real weights."""
    from din_export.synthetic import SPEC_PATH

    folder = tmp_path_factory.mktemp("bench")
    spec = folder / "spec.toml"
    spec.write_text(SPEC_PATH.read_text().replace("max_len = 50", f"max_len = {REFERENCE_MAX_LEN}"))
    return build_bundle(folder / "din", samples=2000, epochs=1, spec_path=spec, embedding_dim=18, attention_hidden=(80, 40),
                        mlp_hidden=(200, 80), mlp_activation="prelu")  # the activation the README's latency tables were measured with


ML100K = Path(__file__).resolve().parent.parent / "shared" / "data" / "ml-100k"
ML100K_RECIPE = Path(__file__).resolve().parent / "examples" / "movielens-100k.toml"


@pytest.fixture(scope="session")
def ml100k_samples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MovieLens-100k prepared with the committed recipe (read from ../shared, never copied)."""
    from din_export.prepare import Sources, prepare

    if not ML100K.is_dir():
        pytest.fail(f"MovieLens-100k is expected at {ML100K}, beside the project root")
    out = tmp_path_factory.mktemp("ml100k") / "samples"
    prepare(ML100K_RECIPE, Sources(ML100K / "ml-100k.inter", ML100K / "ml-100k.item", ML100K / "ml-100k.user"), out)
    return out


@pytest.fixture(scope="session")
def ml100k_bundle(ml100k_samples: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small DIN trained one epoch on the prepared MovieLens-100k samples."""
    from din_export.model import ModelConfig
    from din_export.pipeline import DataSource, train_and_export
    from din_export.train import TrainConfig

    out = tmp_path_factory.mktemp("ml100k-bundle") / "ml-100k-din"
    source = DataSource(ml100k_samples / "train.parquet", ml100k_samples / "valid.parquet", ml100k_samples / "test.parquet")
    train_and_export(source, out, ml100k_samples / "spec.toml", ModelConfig(**SMALL_MODEL),
                     TrainConfig(epochs=1, batch_size=512, progress=False))
    return out


USER_SIDE = ("user_id", "hist_item_id", "hist_cate_id")  # the built-in data's user-side features; the rest describe the item


def rank_against_predict(predictor, rows: dict, user: int, top_k: int | None = None) -> tuple:
    """Rank every row's item for the user of row `user`, and predict on the replicated rows: (ranking, predict's
    probabilities of the replicated rows). The built-in data's columns, as lists."""
    count = len(rows["item_id"])
    user_row = {name: rows[name][user] for name in USER_SIDE}
    candidates = {name: column for name, column in rows.items() if name not in USER_SIDE}
    ranking = predictor.rank(user_row, candidates, top_k=top_k)
    return ranking, predictor.predict({**candidates, **{name: [value] * count for name, value in user_row.items()}})
