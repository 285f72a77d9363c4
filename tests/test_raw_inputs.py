"""`din-export triton --raw-inputs`: the graph that encodes raw values itself gives Predictor.predict's
probabilities on the same raw rows (ONNX Runtime on the written file), unseen, missing and long inputs included."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from din_export.cli import main
from din_export.data.synthetic import generate
from din_runtime import Predictor
from din_runtime.manifest import LENGTH_INPUT

GARBAGE_ID, GARBAGE_TEXT = 987654321, "padding-is-positional"


def raw_feed(predictor: Predictor, rows: dict, width: int) -> dict[str, np.ndarray]:
    """The raw tensors: keys as int64 or text, numbers as float32 (None as NaN), histories padded to `width` with
    values that must be ignored, and their lengths."""
    schema, feed = predictor.schema, {}
    lengths = [len(history) for history in rows[schema.sequences[0].name]]
    for feature in schema.features:
        column = rows[feature.name]
        if feature.kind == "numeric":
            feed[feature.name] = np.array([np.nan if v is None else v for v in column], dtype=np.float32)
        elif feature.kind == "categorical":
            text = feature.key_type == "str"
            feed[feature.name] = np.array(["" if v is None else str(v) for v in column], dtype=object) if text else np.asarray(column, dtype=np.int64)
        elif feature.kind == "times":  # raw times, padded with a time that must be ignored; each row's own time
            feed[feature.name] = np.array([list(times) + [-1e18] * (width - len(times)) for times in column], dtype=np.float64)
            feed[feature.at] = np.asarray(rows[feature.at], dtype=np.float64)
        else:
            text = schema[feature.shares].key_type == "str"
            filler = GARBAGE_TEXT if text else GARBAGE_ID
            padded = [[("" if v is None else str(v)) if text else v for v in history] + [filler] * (width - len(history)) for history in column]
            feed[feature.name] = np.array(padded, dtype=object if text else np.int64)
    feed[LENGTH_INPUT] = np.asarray(lengths, dtype=np.int64)
    return feed


def raw_session(bundle: Path, tmp_path: Path) -> ort.InferenceSession:
    result = CliRunner().invoke(main, ["triton", str(bundle), "--repository", str(tmp_path / "repo"), "--name", "raw", "--raw-inputs"])
    assert result.exit_code == 0, result.output
    config = text_format.Parse((tmp_path / "repo" / "raw" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert config.input[-1].name == LENGTH_INPUT and config.HasField("dynamic_batching")
    assert {i.name: i.data_type for i in config.input}[LENGTH_INPUT] == model_config_pb2.TYPE_INT64
    return ort.InferenceSession(str(tmp_path / "repo" / "raw" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])


def test_raw_graph_equals_predict_on_the_built_in_data(bundle: Path, predictor: Predictor, tmp_path: Path) -> None:
    rows = generate(60, seed=4).to_pydict()
    rows["item_id"][0] = 10**15  # never seen
    rows["user_id"][1] = -7
    rows["price"][2] = None
    rows["hist_item_id"][3] = []  # an empty history
    rows["hist_cate_id"][3] = []
    rows["hist_item_id"][4] = rows["hist_item_id"][4] + [10**12]  # an unseen behaviour
    rows["hist_cate_id"][4] = rows["hist_cate_id"][4] + [3]
    longest = predictor.schema.max_len + 7
    rows["hist_item_id"][5] = list(range(1, longest + 1))  # longer than max_len: the most recent are kept
    rows["hist_cate_id"][5] = [i % 7 for i in range(longest)]
    session = raw_session(bundle, tmp_path)
    width = max(map(len, rows["hist_item_id"])) + 3
    (probabilities,) = session.run(["probability"], raw_feed(predictor, rows, width))
    np.testing.assert_allclose(probabilities, predictor.predict(rows), rtol=0, atol=1e-5)


@pytest.mark.slow
def test_raw_graph_equals_predict_on_movielens_text_keys(ml100k_bundle: Path, ml100k_samples: Path, tmp_path: Path) -> None:
    predictor = Predictor.load(ml100k_bundle, providers="cpu")
    assert any(f.kind == "categorical" and f.key_type == "str" for f in predictor.schema.features)
    rows = pq.read_table(ml100k_samples / "test.parquet").slice(0, 80).to_pylist()
    columns = {name: [row[name] for row in rows] for name in predictor.request_names}
    first_text = next(f.name for f in predictor.schema.categoricals if f.key_type == "str")
    columns[first_text][0] = None  # missing
    columns[first_text][1] = "never-seen"
    session = raw_session(ml100k_bundle, tmp_path)
    width = max(map(len, columns[predictor.schema.sequences[0].name])) + 2
    (probabilities,) = session.run(["probability"], raw_feed(predictor, columns, width))
    np.testing.assert_allclose(probabilities, predictor.predict(columns), rtol=0, atol=1e-5)
