"""`train-and-export --warm-start BUNDLE`: vocabularies that extend the parent's (every known key keeps its row and
its embedding bit for bit), weights copied, new keys learnt, an exact zero-step continuation, the growth cap, the
lineage, and one-line errors for a spec or architecture that is not the parent's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner

from din_export.bundle import load_bundle
from din_export.cli import main
from din_export.config import ModelConfig, TrainConfig
from din_export.data.source import DataSource
from din_export.data.spec import load_spec, spec_to_toml
from din_export.data.synthetic import SPEC_PATH, generate
from din_export.pipeline import train_and_export
from din_runtime import Predictor
from din_runtime.manifest import read_manifest

FIXTURE = Path(__file__).parent / "fixtures" / "bundle-0.1.0"
PRICE = '[features."price"]\nkind = "numeric"\nfill = "mean"\nnormalize = "zscore"'  # as spec_to_toml writes it
# The warm start's mechanics, on a model this small and 1,500 rows: it barely learns the synthetic data (test AUC
# about 0.5 with or without recency), so whether a continuation's first epoch validates better than the parent is
# noise under a fixed seed; with recency the noise keeps the parent (epoch 0) and no row moves. Pinned to the form
# these tests were written with; recency's own tests are in test_variants.py.
SMALL = ModelConfig(embedding_dim=4, attention_hidden=(8,), mlp_hidden=(8,), recency="none")


def _table(folder: Path, name: str, seed: int, samples: int = 1500) -> Path:
    path = folder / f"{name}.parquet"
    pq.write_table(generate(samples, seed=seed), path)
    return path


def _train(data: Path, out: Path, epochs: int = 1, warm_start: Path | None = None, spec=None) -> dict:
    return train_and_export(DataSource(data=data), out, spec or (None if warm_start else load_spec(SPEC_PATH)),
                            None if warm_start else SMALL, TrainConfig(epochs=epochs, batch_size=128, progress=False),
                            warm_start=warm_start)


@pytest.fixture(scope="module")
def days(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Yesterday's bundle and today's data (another draw of the built-in generator: new users and items)."""
    folder = tmp_path_factory.mktemp("warm")
    yesterday, today = _table(folder, "yesterday", 0), _table(folder, "today", 1)
    _train(yesterday, folder / "parent", epochs=2)
    return {"folder": folder, "yesterday": yesterday, "today": today, "parent": folder / "parent"}


def _embeddings(bundle: Path) -> dict[str, np.ndarray]:
    loaded = load_bundle(bundle)
    return {name: table.weight.detach().numpy().copy() for name, table in loaded.din.tables()}


def test_known_keys_keep_rows_and_embeddings_exactly_and_new_keys_are_learnt(days: dict[str, Path]) -> None:
    parent, folder = days["parent"], days["folder"]
    copied = _train(days["today"], folder / "copied", epochs=0, warm_start=parent)
    trained = _train(days["today"], folder / "trained", epochs=1, warm_start=parent)
    before, after = load_bundle(parent).schema, load_bundle(folder / "copied").schema
    parent_rows, copied_rows, trained_rows = _embeddings(parent), _embeddings(folder / "copied"), _embeddings(folder / "trained")
    for old in before.categoricals:
        new = after[old.name]
        assert list(new.keys[:len(old.keys)]) == list(old.keys) and new.missing_row == old.missing_row
        assert np.array_equal(copied_rows[old.name][:old.size], parent_rows[old.name])  # bit for bit
    gained = copied["lineage"]["vocabularies"]["item_id"]["gained"]
    assert gained > 0 and len(after["item_id"].keys) == len(before["item_id"].keys) + gained
    # A key new today: its row was initialised (as a fresh model's are), then moved by training on today's data.
    new_rows = slice(before["item_id"].size, after["item_id"].size)
    assert np.abs(copied_rows["item_id"][new_rows]).sum() > 0
    moved = np.abs(trained_rows["item_id"][new_rows] - copied_rows["item_id"][new_rows]).max(axis=1)
    assert (moved > 1e-4).mean() > 0.5
    assert trained["metrics"]["history"][0]["epoch"] == 0  # the parent as it was, scored on today's validation first
    # A new key is served through its own row, a key never seen still goes to out-of-vocabulary.
    first_new = after["item_id"].keys[len(before["item_id"].keys)]
    feed = Predictor.load(folder / "trained").encoder.encode({"item_id": [first_new, 10**12]}, only=["item_id"])
    assert feed["item_id"].tolist() == [before["item_id"].size, 1]


@pytest.mark.slow
def test_a_continuation_for_zero_steps_predicts_exactly_as_the_parent(days: dict[str, Path]) -> None:
    out = days["folder"] / "zero"
    manifest = _train(days["yesterday"], out, epochs=0, warm_start=days["parent"])
    rows = generate(300, seed=7).to_pydict()
    assert np.array_equal(Predictor.load(out).predict(rows), Predictor.load(days["parent"]).predict(rows))
    assert all(v["gained"] == 0 for v in manifest["lineage"]["vocabularies"].values())
    lineage, parent = manifest["lineage"], read_manifest(days["parent"])
    assert lineage["generation"] == 1 and lineage["parent"]["model_sha256"] == parent["onnx"]["sha256"]
    assert lineage["parent"]["created"] == parent["created"] and parent["lineage"]["generation"] == 0
    grandchild = _train(days["today"], days["folder"] / "grandchild", epochs=0, warm_start=out)
    assert grandchild["lineage"]["generation"] == 2


@pytest.mark.slow
def test_max_vocabulary_caps_growth_and_a_fresh_fit(days: dict[str, Path]) -> None:
    folder = days["folder"]
    known = len(load_bundle(days["parent"]).schema["item_id"].keys)
    out = folder / "capped"
    result = CliRunner().invoke(main, ["train-and-export", "--data", str(days["today"]), "--warm-start", str(days["parent"]), "--out", str(out),
                                       "--epochs", "0", "--quiet", "--max-vocabulary", f"item_id={known + 5}"])
    assert result.exit_code == 0, result.output
    counts = read_manifest(out)["lineage"]["vocabularies"]["item_id"]
    assert counts["keys"] == known + 5 and counts["gained"] == 5 and counts["over_cap"] > 0
    fresh = folder / "fresh-capped"
    held_out = [_table(folder, name, seed, 200) for name, seed in (("valid", 5), ("test", 6))]  # so all of today trains
    result = CliRunner().invoke(main, ["train-and-export", "--data", str(days["today"]), "--valid", str(held_out[0]), "--test", str(held_out[1]),
                                       "--spec", str(SPEC_PATH), "--out", str(fresh), "--epochs", "1", "--quiet", "--max-vocabulary", "50",
                                       "--embedding-dim", "4"])
    assert result.exit_code == 0, result.output
    schema = load_bundle(fresh).schema
    assert all(len(f.keys) <= 50 for f in schema.categoricals) and len(schema["item_id"].keys) == 50
    # the 50 kept are the most frequent: none left out was seen more often than the rarest kept
    table = pq.read_table(days["today"])
    histories = table["hist_item_id"].to_pylist()  # counted whole, as fitting counts them
    ids, counts = np.unique(np.concatenate([table["item_id"].to_numpy(), *map(np.asarray, histories)]), return_counts=True)
    seen = dict(zip(ids.tolist(), counts.tolist(), strict=True))
    kept = set(schema["item_id"].keys)
    assert min(seen[k] for k in kept) >= max(c for k, c in seen.items() if k not in kept)


@pytest.mark.parametrize(("change", "message"), [
    (lambda text: text.replace(PRICE, '[features."price"]\nkind = "categorical"'), "feature 'price': kind is 'categorical' here but 'numeric'"),
    (lambda text: text.replace(PRICE + "\n", ""),
     "feature 'price' of the --warm-start bundle's spec is missing from this spec"),
    (lambda text: text + '\n[features.region]\nkind = "categorical"\n', "feature 'region' is not in the --warm-start bundle's spec"),
    (lambda text: text.replace('shares = "cate_id"', 'shares = "item_id"'), "feature 'hist_cate_id': shares is 'item_id' here but 'cate_id'"),
])
def test_a_spec_that_is_not_the_parents_is_one_line_naming_the_feature(days: dict[str, Path], tmp_path: Path, change, message: str) -> None:
    spec = tmp_path / "spec.toml"
    original = spec_to_toml(load_spec(SPEC_PATH))
    spec.write_text(change(original))
    assert spec.read_text() != original
    table = tmp_path / "today.parquet"
    pq.write_table(generate(300, seed=2).append_column("region", generate(300, seed=2)["user_id"]), table)
    result = CliRunner().invoke(main, ["train-and-export", "--data", str(table), "--spec", str(spec), "--warm-start", str(days["parent"]),
                                       "--out", str(tmp_path / "out"), "--quiet"])
    assert result.exit_code == 2 and message in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_flag_that_would_change_the_architecture_is_refused(days: dict[str, Path], tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["train-and-export", "--data", str(days["today"]), "--warm-start", str(days["parent"]),
                                       "--embedding-dim", "16", "--out", str(tmp_path / "out"), "--quiet"])
    assert result.exit_code == 2 and "embedding_dim = 16 differs from the --warm-start bundle's 4" in result.output, result.output
    zero = CliRunner().invoke(main, ["train-and-export", "--data", str(days["today"]), "--spec", str(SPEC_PATH), "--epochs", "0",
                                     "--out", str(tmp_path / "zero"), "--quiet"])
    assert zero.exit_code == 2 and "only a --warm-start continuation" in zero.output


@pytest.mark.slow
def test_a_bundle_of_release_0_1_0_can_be_continued(tmp_path: Path) -> None:
    """The fixture (format 1, schema inside weights.pt as well) continues on the built-in data it was trained on."""
    out = tmp_path / "continued"
    result = CliRunner().invoke(main, ["train-and-export", "--samples", "1500", "--seed", "3", "--warm-start", str(FIXTURE),
                                       "--out", str(out), "--epochs", "1", "--batch-size", "128", "--quiet"])
    assert result.exit_code == 0, result.output
    old, new = load_bundle(FIXTURE), load_bundle(out)
    assert read_manifest(out)["format_version"] == 2 and new.din.config == old.din.config
    for feature in old.schema.categoricals:
        assert list(new.schema[feature.name].keys[:len(feature.keys)]) == list(feature.keys)
    assert torch.equal(new.din.embeddings["user_id"].weight[0], old.din.embeddings["user_id"].weight[0])  # padding stays zero


@pytest.mark.slow
def test_the_raw_input_graph_of_a_continuation_looks_keys_up_as_predict_does(days: dict[str, Path], tmp_path: Path) -> None:
    """Its vocabularies are unsorted (new keys after the parent's): the in-graph lookup must give the same rows."""
    from test_raw_inputs import raw_feed, raw_session

    child = days["folder"] / "trained"
    if not child.exists():
        _train(days["today"], child, epochs=1, warm_start=days["parent"])
    predictor = Predictor.load(child, providers="cpu")
    rows = generate(80, seed=1).to_pydict()
    known = len(load_bundle(days["parent"]).schema["item_id"].keys)
    gained = list(predictor.schema["item_id"].keys[known:known + 3])
    assert gained
    rows["item_id"][:len(gained)] = gained  # candidates new today, and behaviours new today
    rows["hist_item_id"][5] = rows["hist_item_id"][5] + gained
    rows["hist_cate_id"][5] = rows["hist_cate_id"][5] + [rows["cate_id"][0]] * len(gained)
    session = raw_session(child, tmp_path)
    (probabilities,) = session.run(["probability"], raw_feed(predictor, rows, max(map(len, rows["hist_item_id"])) + 2))
    np.testing.assert_allclose(probabilities, predictor.predict(rows), rtol=0, atol=1e-5)
