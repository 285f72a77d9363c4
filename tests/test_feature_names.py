"""Any feature name a spec accepts works end to end: train, export (both graphs), predict, rank, serve over HTTP
with Triton's client, a Triton repository entry (raw-input graph too). Names that the project uses itself are
refused before training starts, with a one-line error naming the feature."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tritonclient.http as httpclient
from click.testing import CliRunner
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from din_export.cli import main
from din_export.data.reserved import RESERVED_NAMES
from din_export.data.spec import SpecError, spec_from_dict, spec_to_toml
from din_export.data.synthetic import generate
from din_runtime import Predictor
from din_runtime.providers import cpu_session
from helpers import start_server

# Names a user might pick that were never identifiers: dots, spaces, other scripts, leading digits, quotes,
# the exporter's own placeholders and torch's module attributes.
AWKWARD = ["user.id", "user id", "ïtem", "商品", "1st", "a\"quote", "back\\slash", "input.0", "input.1", "training", "forward",
           "weight", "din.embeddings", "feature~61", "raw.x", "  padded  ", "probability.1", "type", "-"]
# Operator names of din-seq and base graphs, which the din graph of the session's bundle does not emit.
OTHER_VARIANTS = ["softmax", "layer_norm", "scaled_dot_product_attention", "mean", "sum", "where", "masked_fill", "transpose",
                  "permute", "reshape", "expand", "clamp", "div", "relu", "gelu", "Concat", "Gemm"]


def exporter_names(bundle: Path) -> list[str]:
    """Every value name the exporter gave inside the session bundle's two graphs, with and without its number, and
    every operator type in lower and original case."""
    found: set[str] = set()
    for file in ("model.onnx", "rank.onnx"):
        graph = onnx.load(str(bundle / file)).graph
        for node in graph.node:
            found.update(node.output)
            found.update(re.sub(r"_\d+$", "", output) for output in node.output)
            found.update((node.op_type, node.op_type.lower()))
        found.update(i.name for i in graph.initializer)
    return sorted(found - set(RESERVED_NAMES) - {"user_id", "item_id", "cate_id", "price", "hist_item_id", "hist_cate_id"})


@pytest.fixture(scope="module")
def awkward_bundle(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], pa.Table]:
    """A DIN on the built-in data with every feature renamed (the core ones to operator names), plus one extra
    categorical feature for each other name to try: (bundle, built-in name -> new name, the renamed test rows)."""
    folder = tmp_path_factory.mktemp("awkward")
    core = {"user_id": "user.id", "item_id": "cat", "cate_id": "sigmoid", "price": "1st price",
            "hist_item_id": "hist item.ïd", "hist_cate_id": "val_0"}
    extras = [n for n in dict.fromkeys(exporter_names(bundle) + AWKWARD + OTHER_VARIANTS) if n not in core.values()]
    table = generate(1500, seed=4)
    renamed = table.rename_columns([core.get(c, c) for c in table.column_names])
    for index, name in enumerate(extras):  # each extra: a small categorical drawn from the item, so it carries signal
        renamed = renamed.append_column(name, pa.array(np.asarray(table.column("item_id")) % (3 + index % 5)))
    features = {core["user_id"]: {"kind": "categorical"}, core["item_id"]: {"kind": "categorical"},
                core["cate_id"]: {"kind": "categorical", "attribute_of": core["item_id"]},
                core["price"]: {"kind": "numeric"},
                core["hist_item_id"]: {"kind": "sequence", "shares": core["item_id"], "max_len": 20},
                core["hist_cate_id"]: {"kind": "sequence", "shares": core["cate_id"], "max_len": 20},
                **{name: {"kind": "categorical"} for name in extras}}
    spec = spec_from_dict({"label": "label", "user": core["user_id"], "features": features})

    (folder / "spec.toml").write_text(spec_to_toml(spec), encoding="utf-8")
    train, test = renamed.slice(0, 1200), renamed.slice(1200)
    pq.write_table(train, folder / "train.parquet")
    pq.write_table(test, folder / "test.parquet")
    result = CliRunner().invoke(main, ["train-and-export", "--data", str(folder / "train.parquet"), "--spec", str(folder / "spec.toml"),
                                       "--out", str(folder / "bundle"), "--epochs", "1", "--embedding-dim", "4",
                                       "--attention-hidden", "8", "--mlp-hidden", "16", "--quiet"])
    assert result.exit_code == 0, result.output
    return folder / "bundle", core, test


@pytest.mark.slow
def test_every_name_is_an_input_of_both_graphs_and_predicts(awkward_bundle) -> None:
    bundle, core, test = awkward_bundle
    predictor = Predictor.load(bundle, providers="cpu")
    names = predictor.schema.names
    for file in ("model.onnx", "rank.onnx"):
        graph = onnx.load(str(bundle / file)).graph
        assert [i.name for i in graph.input] == names
        produced = [o for node in graph.node for o in node.output]
        assert len(produced) == len(set(produced)) and not set(produced) & set(names)  # one producer per value, none an input
    rows = test.slice(0, 50).to_pydict()
    probabilities = predictor.predict(rows)
    assert probabilities.shape == (50,) and np.isfinite(probabilities).all()
    # the session fed by name gives the same numbers: the names reach the right inputs
    session = cpu_session(bundle / "model.onnx")
    (direct,) = session.run(["probability"], predictor.encode(rows))
    np.testing.assert_array_equal(direct, probabilities)
    user_side = {core["user_id"], core["hist_item_id"], core["hist_cate_id"]}
    ranking = predictor.rank({n: rows[n][0] for n in user_side}, {n: v for n, v in rows.items() if n not in user_side})
    replicated = predictor.predict({**{n: v for n, v in rows.items() if n not in user_side}, **{n: [rows[n][0]] * 50 for n in user_side}})
    np.testing.assert_allclose(ranking.probabilities, replicated[ranking.order], rtol=0, atol=1e-5)


@pytest.mark.slow
def test_served_over_http_with_tritons_client(awkward_bundle) -> None:
    bundle, core, test = awkward_bundle
    predictor = Predictor.load(bundle, providers="cpu")
    rows = test.slice(0, 20).to_pydict()
    process, url = start_server(bundle, "awkward")
    try:
        client = httpclient.InferenceServerClient(url)
        assert [i["name"] for i in client.get_model_metadata("awkward")["inputs"]] == predictor.schema.names
        inputs = []
        for feature in predictor.schema.features:
            values = rows[feature.name]
            if feature.kind == "sequence":
                array, datatype = np.array([" ".join(map(str, v)).encode() for v in values], dtype=np.object_), "BYTES"
            elif feature.kind == "numeric":
                array, datatype = np.asarray(values, dtype=np.float32), "FP32"
            else:
                array, datatype = np.asarray(values, dtype=np.int64), "INT64"
            tensor = httpclient.InferInput(feature.name, [len(array)], datatype)
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        served = client.infer("awkward", inputs).as_numpy("probability")
        np.testing.assert_allclose(served, predictor.predict(rows), rtol=0, atol=1e-6)
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.parametrize("raw_inputs", [False, True])
def test_a_triton_repository_entry_names_every_input(awkward_bundle, tmp_path: Path, raw_inputs: bool) -> None:
    bundle, core, test = awkward_bundle
    args = ["triton", str(bundle), "--repository", str(tmp_path), "--name", "awkward"] + (["--raw-inputs"] if raw_inputs else [])
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    config = text_format.Parse((tmp_path / "awkward" / "config.pbtxt").read_text(encoding="utf-8"), model_config_pb2.ModelConfig())
    predictor = Predictor.load(bundle, providers="cpu")
    expected = predictor.schema.names + (["history_length"] if raw_inputs else [])
    assert [i.name for i in config.input] == expected and [o.name for o in config.output] == ["probability"]
    session = cpu_session(tmp_path / "awkward" / "1" / "model.onnx")
    assert [i.name for i in session.get_inputs()] == expected
    if raw_inputs:  # raw values in, the bundle's probabilities out
        rows = test.slice(0, 20).to_pydict()
        width = max(len(h) for h in rows[core["hist_item_id"]]) or 1
        feed = {}
        for feature in predictor.schema.features:
            values = rows[feature.name]
            if feature.kind == "sequence":
                feed[feature.name] = np.array([list(v) + [0] * (width - len(v)) for v in values], dtype=np.int64)
            else:
                feed[feature.name] = np.asarray(values, dtype=np.float32 if feature.kind == "numeric" else np.int64)
        feed["history_length"] = np.array([len(v) for v in rows[core["hist_item_id"]]], dtype=np.int64)
        (served,) = session.run(["probability"], feed)
        np.testing.assert_allclose(served, predictor.predict(rows), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", [*RESERVED_NAMES, "", "   ", "tab\there", "new\nline"])
def test_names_the_project_uses_or_cannot_carry_are_refused_before_training(name: str, tmp_path: Path) -> None:
    features = {"item": {"kind": "categorical"}, "hist": {"kind": "sequence", "shares": "item", "max_len": 5}, name: {"kind": "numeric"}}
    with pytest.raises(SpecError, match="feature") as caught:
        spec_from_dict({"label": "label", "features": features})
    assert "\n" not in str(caught.value).replace(repr(name), "")

    spec = tmp_path / "spec.toml"
    spec.write_text(spec_to_toml(spec_from_dict({"label": "label", "features": {k: v for k, v in features.items() if k != name}}))
                    + f'\n[features.{json.dumps(name)}]\nkind = "numeric"\n', encoding="utf-8")
    (tmp_path / "train.csv").write_text("label\n1\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["train-and-export", "--data", str(tmp_path / "train.csv"), "--spec", str(spec)])
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "feature" in result.output
