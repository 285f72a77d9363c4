import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from din_runtime import FeatureEncoder, InputError, Ragged
from din_runtime.encoding import OOV_INDEX, Vocabulary, pad_recent
from din_runtime.schema import CategoricalFeature, FeatureSchema

ENCODING = [
    {"name": "user_id", "kind": "categorical", "key_type": "str", "keys": ["alice", "bob"]},
    {"name": "item_id", "kind": "categorical", "key_type": "int", "keys": [10, 20, 30]},
    {"name": "price", "kind": "numeric", "fill": 5.0, "shift": 4.0, "scale": 2.0},
    {"name": "hist_item_id", "kind": "sequence", "shares": "item_id", "max_len": 3},
]


def test_vocabulary_maps_known_keys_and_sends_the_rest_to_oov() -> None:
    vocabulary = Vocabulary([10, 20, 30], "int")
    indices = vocabulary.encode("item_id", np.array([30, 10, 99, -5, 2**62]))
    assert indices.tolist() == [4, 2, OOV_INDEX, OOV_INDEX, OOV_INDEX]
    assert CategoricalFeature("item_id", "int", [10, 20, 30]).size == 5  # padding, out-of-vocabulary, three keys


def test_huge_unsigned_and_missing_ids_are_oov_not_errors() -> None:
    vocabulary = Vocabulary([10], "int")
    assert vocabulary.encode("f", np.array([2**64 - 1, 10], dtype=np.uint64)).tolist() == [OOV_INDEX, 2]
    assert vocabulary.encode("f", [10, None]).tolist() == [2, OOV_INDEX]
    assert vocabulary.encode("f", np.array([10.0, np.nan])).tolist() == [2, OOV_INDEX]


def test_non_integer_id_names_feature_and_row() -> None:
    with pytest.raises(InputError) as error:
        Vocabulary([10], "int").encode("item_id", np.array([10.0, 1.5]))
    assert error.value.feature == "item_id" and error.value.row == 1
    with pytest.raises(InputError, match="feature 'item_id', row 1: ID 'x' is not an integer"):
        Vocabulary([10], "int").encode("item_id", ["10", "x"])


def test_pad_recent_keeps_the_most_recent_items_left_aligned() -> None:
    offsets = np.array([0, 0, 2, 7])
    values = np.arange(1, 8)
    assert pad_recent(values, offsets, 3).tolist() == [[0, 0, 0], [1, 2, 0], [5, 6, 7]]
    assert pad_recent(values[:0], np.array([0, 0]), 3).tolist() == [[0]]


def test_feature_encoder_accepts_lists_strings_and_empty_histories() -> None:
    encoder = FeatureEncoder(FeatureSchema.from_manifest(ENCODING))
    feed = encoder.encode({
        "user_id": ["bob", "carol", None],
        "item_id": [20, 40, 10],
        "price": [6.0, None, float("inf")],
        "hist_item_id": [[10, 20, 30, 10], "30 20", None],
        "label": [1, 0, 1],
    })
    assert feed["user_id"].tolist() == [3, OOV_INDEX, OOV_INDEX]
    assert feed["item_id"].tolist() == [3, OOV_INDEX, 2]
    assert feed["price"].tolist() == [1.0, 0.5, 0.5]
    assert feed["hist_item_id"].tolist() == [[3, 4, 2], [4, 3, 0], [0, 0, 0]]
    assert feed["hist_item_id"].dtype == np.int64 and feed["price"].dtype == np.float32


def test_ragged_and_2d_inputs_encode_like_lists() -> None:
    encoder = FeatureEncoder(FeatureSchema.from_manifest(ENCODING[1:2] + ENCODING[3:]))
    from_lists = encoder.encode({"item_id": [10, 20], "hist_item_id": [[10, 20], [30, 30]]})
    from_array = encoder.encode({"item_id": np.array([10, 20]), "hist_item_id": np.array([[10, 20], [30, 30]])})
    from_ragged = encoder.encode({"item_id": [10, 20], "hist_item_id": Ragged(np.array([10, 20, 30, 30]), np.array([0, 2, 4]))})
    for feed in (from_array, from_ragged):
        assert all(np.array_equal(feed[k], from_lists[k]) for k in from_lists)


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ({"item_id": [10]}, "feature 'user_id': missing from the input"),
        ({"user_id": ["bob"], "item_id": [10, 20], "price": [1.0], "hist_item_id": [[10]]}, "feature 'item_id': has 2 rows"),
        ({"user_id": ["bob"], "item_id": [10], "price": ["cheap"], "hist_item_id": [[10]]}, "feature 'price', row 0: value 'cheap' is not a number"),
        ({"user_id": ["bob"], "item_id": [10], "price": [1.0], "hist_item_id": [7]}, "feature 'hist_item_id', row 0: a history must be a list"),
        ({"user_id": ["bob"], "item_id": [10], "price": [1.0], "hist_item_id": [[[10]]]}, "nested lists"),
    ],
)
def test_bad_input_raises_input_error_naming_the_feature(columns: dict, message: str) -> None:
    with pytest.raises(InputError) as error:
        FeatureEncoder(FeatureSchema.from_manifest(ENCODING)).encode(columns)
    assert message in str(error.value)
    assert isinstance(error.value, ValueError)


def test_misaligned_behaviour_sequences_are_rejected() -> None:
    encoding = ENCODING[1:2] + ENCODING[3:] + [{"name": "hist_b", "kind": "sequence", "shares": "item_id", "max_len": 3}]
    with pytest.raises(InputError, match="feature 'hist_b', row 1: history length differs from 'hist_item_id'"):
        FeatureEncoder(FeatureSchema.from_manifest(encoding)).encode({"item_id": [10, 20], "hist_item_id": [[10], [10, 20]], "hist_b": [[10], [20]]})


def test_dense_table_and_binary_search_agree() -> None:
    rng = np.random.default_rng(0)
    keys = np.unique(rng.integers(-50, 5000, 800))
    queries = np.concatenate([keys, rng.integers(-10_000, 10_000, 2000), [np.iinfo(np.int64).min, np.iinfo(np.int64).max]])
    dense = Vocabulary(keys.tolist(), "int")
    sparse = Vocabulary((keys * 10**12).tolist(), "int")  # span far beyond the dense-table limit
    assert dense.dense is not None and sparse.dense is None
    missing = np.zeros(len(queries), dtype=bool)
    expected = np.where(np.isin(queries, keys), np.searchsorted(keys, queries) + 2, OOV_INDEX)
    assert dense.lookup(queries, missing).tolist() == expected.tolist()
    scaled = np.where(np.isin(queries, keys), queries * 10**12, queries)
    assert sparse.lookup(scaled, missing).tolist() == expected.tolist()


def test_string_vocabulary_uses_the_same_lookup() -> None:
    vocabulary = Vocabulary(["a", "b", "zz"], "str")
    assert vocabulary.encode("user", ["zz", "a", "q", 7, None]).tolist() == [4, 2, OOV_INDEX, OOV_INDEX, OOV_INDEX]


def test_history_of_arrays_with_a_nested_row_is_rejected() -> None:
    encoder = FeatureEncoder(FeatureSchema.from_manifest(ENCODING[1:2] + ENCODING[3:]))
    with pytest.raises(InputError, match="nested lists"):
        encoder.encode({"item_id": [10, 20], "hist_item_id": [np.array([10, 20]), np.array([[10], [20]])]})


PLAIN = FeatureSchema.from_manifest([
    {"name": "user", "kind": "categorical", "key_type": "str", "keys": ["ann", "bob", "cy"]},
    {"name": "item", "kind": "categorical", "key_type": "int", "keys": [3, 10, 20, 2**40]},
    {"name": "price", "kind": "numeric", "fill": 5.0, "shift": 4.0, "scale": 2.0},
    {"name": "hist", "kind": "sequence", "shares": "item", "max_len": 3},
])
IDS = st.one_of(st.sampled_from([3, 10, 20, 2**40]), st.integers(-2**70, 2**70))


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_the_per_value_path_for_small_requests_equals_the_general_path(data) -> None:
    """Small lists of plain values (one request) are looked up one value at a time; tuples take the general path."""
    rows = data.draw(st.integers(1, 4))
    columns = {
        "user": data.draw(st.lists(st.sampled_from(["ann", "bob", "cy", "zed", " ann"]), min_size=rows, max_size=rows)),
        "item": data.draw(st.lists(IDS, min_size=rows, max_size=rows)),
        "price": data.draw(st.lists(st.one_of(st.floats(allow_nan=True), st.integers(-10**6, 10**6)), min_size=rows, max_size=rows)),
        "hist": data.draw(st.lists(st.lists(IDS, max_size=6), min_size=rows, max_size=rows)),
    }
    general = {name: tuple(tuple(v) for v in column) if name == "hist" else tuple(column) for name, column in columns.items()}
    encoder = FeatureEncoder(PLAIN)
    small, reference = encoder.encode(columns), encoder.encode(general)
    for name in reference:
        assert small[name].dtype == reference[name].dtype and np.array_equal(small[name], reference[name]), name


def test_keys_in_row_order_with_the_missing_token_between_keep_their_rows_on_every_path() -> None:
    """A warm-started vocabulary: the parent's keys (rows 2, 3), its missing token (row 4), then keys gained (5, 6),
    unsorted; the dense table, the binary search, the per-value path and text keys all give the same rows."""
    keys = [30, 10, 20, 5]
    for vocabulary in (Vocabulary(keys, "int", True, 4), Vocabulary([k * 10**12 for k in keys], "int", True, 4)):
        scale = 1 if vocabulary.dense is not None else 10**12
        values = [v * scale for v in (5, 10, 20, 30, 7)]
        assert vocabulary.encode("f", np.array(values)).tolist() == [6, 3, 5, 2, OOV_INDEX]
        assert vocabulary.encode("f", values[:3]).tolist() == [6, 3, 5]
        assert vocabulary.encode("f", [None, values[0]]).tolist() == [4, 6]
    text = Vocabulary(["b", "a", "c"], "str", True, 3)
    assert text.encode("f", ["a", "b", "c", "", "z"]).tolist() == [4, 2, 5, 3, OOV_INDEX]
    assert text.encode("f", np.array(["c", "a"])).tolist() == [5, 4]
    feature = CategoricalFeature("f", "int", keys, True, missing_index=4)
    assert feature.key_rows().tolist() == [2, 3, 5, 6] and feature.size == 7
    with pytest.raises(ValueError, match="distinct"):
        Vocabulary([1, 2, 1], "int")
    with pytest.raises(ValueError, match="missing_index 9"):
        CategoricalFeature("f", "int", keys, True, missing_index=9)
