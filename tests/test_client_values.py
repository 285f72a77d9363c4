"""Values as clients send them: every value may arrive typed, as a string (a CSV reader, a JSON client) or missing
(None, NaN, ''); numeric strings are numbers, integer strings are IDs, '' is missing. predict, rank and
din-runtime predict agree on the same rows in any of these forms, and errors name the feature, the right row and
the offending value."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from din_runtime import InputError, Predictor


def typed_rows(keys: dict) -> dict:
    item, cate, user = keys["item_id"], keys["cate_id"], keys["user_id"]
    return {"user_id": user[:3], "item_id": [item[0], None, item[2]], "cate_id": cate[:3], "price": [8.23, 3.1, None],
            "hist_item_id": [[item[0], item[1]], [], [item[2]]], "hist_cate_id": [[cate[0], cate[1]], [], [cate[2]]]}


def as_text(rows: dict) -> dict:
    """The CSV reader's form: every value a string, '' for an empty cell, histories space-separated."""
    def cell(value) -> str:
        return "" if value is None or (isinstance(value, float) and value != value) else repr(value) if isinstance(value, float) else str(value)
    return {name: [" ".join(map(str, v)) if isinstance(v, list) else cell(v) for v in values] for name, values in rows.items()}


def test_strings_and_empty_cells_score_like_typed_values(predictor: Predictor, keys: dict) -> None:
    typed = typed_rows(keys)
    text = as_text(typed)
    assert text["price"] == ["8.23", "3.1", ""] and text["item_id"][1] == ""
    expected = predictor.predict(typed)
    assert np.array_equal(predictor.predict(text), expected)
    arrays = {name: np.asarray(values) for name, values in text.items() if not name.startswith("hist")}  # numpy str_ arrays
    assert np.array_equal(predictor.predict({**text, **arrays}), expected)
    mixed = {**typed, "price": [8.23, "3.1", float("nan")], "item_id": [str(typed["item_id"][0]), "", typed["item_id"][2]],
             "hist_item_id": [[str(i) for i in typed["hist_item_id"][0]], None, np.asarray(typed["hist_item_id"][2])]}
    assert np.array_equal(predictor.predict(mixed), expected)
    assert np.array_equal(predictor.predict({**text, "price": [" 8.23 ", "3.1", "  "]}), expected)  # blanks around and blank


@pytest.mark.parametrize(("feature", "values", "row", "shown"), [
    ("price", ["8.23", "abc", "3.1"], 1, "'abc'"),
    ("price", [8.23, 3.1, "1,5"], 2, "'1,5'"),
    ("item_id", ["2222", "x1", "918"], 1, "'x1'"),
    ("item_id", ["2222", "918", "1.5"], 2, "'1.5'"),
    ("user_id", [1, "2", [3]], 2, "[3]"),
])
def test_errors_name_the_right_row_and_value(predictor: Predictor, keys: dict, feature: str, values: list, row: int, shown: str) -> None:
    rows = {**as_text(typed_rows(keys)), feature: values}
    with pytest.raises(InputError) as error:
        predictor.predict(rows)
    assert error.value.feature == feature and error.value.row == row and shown in str(error.value)


def test_rank_takes_the_same_string_forms(predictor: Predictor, keys: dict) -> None:
    typed, text = typed_rows(keys), as_text(typed_rows(keys))
    user = ("user_id", "hist_item_id", "hist_cate_id")
    ranked = [predictor.rank({n: rows[n][0] for n in user}, {n: v for n, v in rows.items() if n not in user}) for rows in (typed, text)]
    assert np.array_equal(ranked[0].order, ranked[1].order) and np.array_equal(ranked[0].probabilities, ranked[1].probabilities)


def test_cli_scores_a_csv_with_empty_cells_like_predict_and_writes_a_normal_file(predictor: Predictor, bundle: Path, keys: dict,
                                                                                 tmp_path: Path) -> None:
    text = as_text(typed_rows(keys))
    with open(tmp_path / "in.csv", "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(list(text))
        writer.writerows(zip(*text.values(), strict=True))
    result = subprocess.run([sys.executable, "-m", "din_runtime", "predict", str(bundle), str(tmp_path / "in.csv"), str(tmp_path / "out.csv"),
                             "--quiet", "--providers", "cpu"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    with open(tmp_path / "out.csv", newline="") as stream:
        scores = np.array([float(r[1]) for r in list(csv.reader(stream))[1:]], dtype=np.float32)
    assert np.max(np.abs(scores - predictor.predict(typed_rows(keys)))) <= 1e-6
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "out.csv").stat().st_mode & 0o777 == 0o666 & ~umask  # not the temporary file's private 0600


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_the_string_form_of_any_row_scores_exactly_like_its_typed_form(predictor: Predictor, keys: dict, data) -> None:
    n = data.draw(st.integers(1, 5))
    ids = st.one_of(st.none(), st.sampled_from(keys["item_id"]), st.integers(-(2**63), 2**63 - 1))
    lengths = data.draw(st.lists(st.integers(0, 60), min_size=n, max_size=n))
    rows = {
        "user_id": data.draw(st.lists(st.one_of(st.none(), st.sampled_from(keys["user_id"]), st.integers(-1000, 10**9)), min_size=n, max_size=n)),
        "item_id": data.draw(st.lists(ids, min_size=n, max_size=n)),
        "cate_id": data.draw(st.lists(st.one_of(st.none(), st.sampled_from(keys["cate_id"])), min_size=n, max_size=n)),
        "price": data.draw(st.lists(st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)), min_size=n, max_size=n)),
        "hist_item_id": [data.draw(st.lists(st.sampled_from(keys["item_id"]) | st.integers(0, 10**6), min_size=k, max_size=k)) for k in lengths],
        "hist_cate_id": [data.draw(st.lists(st.sampled_from(keys["cate_id"]), min_size=k, max_size=k)) for k in lengths],
    }
    assert np.array_equal(predictor.predict(as_text(rows)), predictor.predict(rows))


def test_cli_scores_parquet_with_nulls_like_predict(predictor: Predictor, bundle: Path, keys: dict, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    typed = typed_rows(keys)
    table = pa.table({**typed, "hist_item_id": pa.array([*typed["hist_item_id"][:1], None, *typed["hist_item_id"][2:]], pa.list_(pa.int64()))})
    pq.write_table(table, tmp_path / "in.parquet")
    result = subprocess.run([sys.executable, "-m", "din_runtime", "predict", str(bundle), str(tmp_path / "in.parquet"),
                             str(tmp_path / "out.csv"), "--quiet", "--providers", "cpu", "--id-column", "user_id"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    with open(tmp_path / "out.csv", newline="") as stream:
        rows = list(csv.reader(stream))
    assert [r[0] for r in rows[1:]] == [str(u) for u in typed["user_id"]]
    assert np.max(np.abs(np.array([float(r[1]) for r in rows[1:]], dtype=np.float32) - predictor.predict(typed))) <= 1e-6
