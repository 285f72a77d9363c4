from pathlib import Path

import pytest

from din_export.data.spec import SpecError, load_spec, spec_from_dict
from din_export.data.synthetic import SPEC_PATH

ISSUE_FORM = """
label = "label"
[features.user_id]
kind = "categorical"
[features.item_id]
kind = "categorical"
[features.cate_id]
kind = "categorical"
[features.price]
kind = "numeric"
fill = "mean"          # or "median", "zero"
normalize = "zscore"   # or "minmax", "none"
[features.hist_item_id]
kind = "sequence"
shares = "item_id"
max_len = 50
[features.hist_cate_id]
kind = "sequence"
shares = "cate_id"
max_len = 50
"""


def test_documented_form_loads(tmp_path: Path) -> None:
    path = tmp_path / "spec.toml"
    path.write_text(ISSUE_FORM)
    spec = load_spec(path)
    assert spec.label == "label"
    assert spec.names == ["user_id", "item_id", "cate_id", "price", "hist_item_id", "hist_cate_id"]
    assert [f.shares for f in spec.of_kind("sequence")] == ["item_id", "cate_id"]
    assert spec.user == "user_id"
    assert spec_from_dict(spec.to_dict()) == spec


def test_builtin_spec_loads() -> None:
    assert load_spec(SPEC_PATH).of_kind("numeric")[0].name == "price"


@pytest.mark.parametrize(
    ("features", "message"),
    [
        ({"a": {"kind": "vector"}}, "feature 'a': kind must be one of"),
        ({"a": {"kind": "categorical", "size": 3}}, "feature 'a': unknown key 'size' for kind 'categorical'"),
        ({"a": {"kind": "categorical"}, "h": {"kind": "sequence", "shares": "b", "max_len": 5}}, "feature 'h': shares 'b'"),
        ({"a": {"kind": "categorical"}, "h": {"kind": "sequence", "shares": "a", "max_len": 0}}, "feature 'h': max_len"),
        ({"a": {"kind": "categorical"}, "x": {"kind": "numeric", "fill": "mode"}}, "feature 'x': fill"),
        ({"a": {"kind": "categorical"}}, "at least one sequence"),
    ],
)
def test_malformed_spec_names_the_feature(features: dict, message: str) -> None:
    with pytest.raises(SpecError) as error:
        spec_from_dict({"label": "y", "features": features})
    assert message in str(error.value)


def test_bad_toml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("label = \n")
    with pytest.raises(SpecError, match="broken.toml: not valid TOML"):
        load_spec(path)
