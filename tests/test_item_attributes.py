"""Item attributes in the bundle: a categorical declared `attribute_of` an item (the built-in data's cate_id,
a `prepare` recipe's item-table columns) carries its item-to-attribute table, so a client may send item IDs alone,
for the candidates and the histories; values a client does send still work as before."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from din_export.data.fitting import _attribute_table
from din_export.data.spec import SpecError, load_spec, spec_from_dict
from din_export.data.synthetic import generate
from din_runtime import FeatureEncoder, FeatureSchema, InputError, Predictor
from din_runtime.encoding import OOV_INDEX

ATTRIBUTES = ("cate_id", "hist_cate_id")


@pytest.fixture(scope="module")
def rows() -> dict:
    return generate(200, seed=0).to_pydict()  # the item-to-category mapping of the bundle's own training data


def without(rows: dict, names=ATTRIBUTES) -> dict:
    return {name: column for name, column in rows.items() if name not in names}


def test_the_bundle_carries_the_table_and_ids_alone_score_like_full_rows(predictor: Predictor, rows: dict) -> None:
    cate = predictor.schema["cate_id"]
    assert cate.attribute_of == "item_id" and len(cate.attribute_table) == predictor.schema["item_id"].size
    np.testing.assert_array_equal(predictor.predict(without(rows)), predictor.predict(rows))
    full, ids_only = predictor.encode(rows), predictor.encode(without(rows))
    assert list(ids_only) == list(full)  # the input order of the graph
    for name in ATTRIBUTES:
        np.testing.assert_array_equal(ids_only[name], full[name])


def test_rank_takes_item_ids_alone_for_candidates_and_history(predictor: Predictor, rows: dict) -> None:
    user_row = {name: rows[name][3] for name in ("user_id", "hist_item_id", "hist_cate_id")}
    candidates = {name: rows[name] for name in ("item_id", "cate_id", "price")}
    full = predictor.rank(user_row, candidates)
    ids_only = predictor.rank(without(user_row), without(candidates))
    assert ids_only.order.tolist() == full.order.tolist()
    np.testing.assert_array_equal(ids_only.probabilities, full.probabilities)
    with pytest.raises(InputError, match="'cate_id': missing from candidates"):  # no item ID to look it up from
        predictor.rank(user_row, {"price": rows["price"]})


def test_values_a_client_sends_are_used_as_before(predictor: Predictor, rows: dict) -> None:
    other = dict(rows, cate_id=[rows["cate_id"][(i + 1) % len(rows["cate_id"])] for i in range(len(rows["cate_id"]))])
    assert not np.array_equal(predictor.predict(other), predictor.predict(rows))
    np.testing.assert_array_equal(predictor.encode(other)["cate_id"], predictor.encode({**without(rows), "cate_id": other["cate_id"]})["cate_id"])


SCHEMA = FeatureSchema.from_manifest([
    {"name": "item", "kind": "categorical", "key_type": "int", "keys": [10, 20, 30]},
    {"name": "cate", "kind": "categorical", "key_type": "str", "keys": ["a", "b"], "attribute_of": "item",
     "attribute_table": [0, 1, 2, 3, 1]},  # padding, OOV item, 10 -> a, 20 -> b, 30 never seen -> OOV
    {"name": "hist_item", "kind": "sequence", "shares": "item", "max_len": 4},
    {"name": "hist_cate", "kind": "sequence", "shares": "cate", "max_len": 4},
])


def test_lookup_keeps_padding_and_sends_unknown_items_to_out_of_vocabulary() -> None:
    feed = FeatureEncoder(SCHEMA).encode({"item": [10, 99, 30], "hist_item": [[20, 10], [], [99]]})
    assert feed["cate"].tolist() == [2, OOV_INDEX, OOV_INDEX]
    assert feed["hist_cate"].tolist() == [[3, 2], [0, 0], [OOV_INDEX, 0]]
    with pytest.raises(InputError, match="feature 'item': missing from the input"):  # nothing to look 'cate' up from
        FeatureEncoder(SCHEMA).encode({"hist_item": [[10]], "hist_cate": [["a"]]})


def test_a_table_of_the_wrong_size_is_refused() -> None:
    entries = SCHEMA.to_manifest()
    entries[1]["attribute_table"] = [0, 1, 2]
    with pytest.raises(ValueError, match="one entry per row"):
        FeatureSchema.from_manifest(entries)


def test_the_table_takes_each_items_most_frequent_attribute() -> None:
    items = np.array([2, 2, 2, 3, 3, 4, 4, 0, 1])
    attributes = np.array([5, 6, 6, 7, 8, 9, 0, 4, 4])  # item 3 ties (the lower index wins); pairs with padding are ignored
    assert _attribute_table(items, attributes, item_size=6, attribute_size=10).tolist() == [0, 1, 6, 7, 9, OOV_INDEX]


def test_spec_checks_what_an_attribute_is_of() -> None:
    base = {"label": "y", "features": {"item": {"kind": "categorical"}, "hist": {"kind": "sequence", "shares": "item", "max_len": 5}}}
    for target in ("hist", "cate", "missing"):
        features = {**base["features"], "cate": {"kind": "categorical", "attribute_of": target}}
        with pytest.raises(SpecError, match="attribute_of"):
            spec_from_dict({**base, "features": features})


def test_prepare_marks_item_table_columns_as_attributes_and_movielens_scores_ids_alone(ml100k_samples: Path, ml100k_bundle: Path) -> None:
    spec = load_spec(ml100k_samples / "spec.toml")
    assert {f.name: f.attribute_of for f in spec.features if f.attribute_of} == {"genre": "item_id"}
    predictor = Predictor.load(ml100k_bundle, providers="cpu")
    rows = pq.read_table(ml100k_samples / "test.parquet").slice(0, 500).to_pydict()
    full, ids_only = predictor.encode(rows), predictor.encode(without(rows, ("genre", "hist_genre")))
    known = full["item_id"] >= 2
    np.testing.assert_array_equal(ids_only["genre"][known], full["genre"][known])
    known_history = full["hist_item_id"] >= 2
    np.testing.assert_array_equal(ids_only["hist_genre"][known_history], full["hist_genre"][known_history])
