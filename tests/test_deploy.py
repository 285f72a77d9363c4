"""export, verify, inspect and triton on real bundles: the built-in data's and MovieLens-100k's."""

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from din_export.cli import main
from din_export.export.errors import DimensionError, OutputNameError, ParityError
from din_export.export.graphs import TOLERANCE, random_feed
from din_export.export.precision import PrecisionRejected
from din_export.export.rebuild import export_bundle
from din_export.export.verify import verify_bundle
from din_runtime import Predictor
from din_runtime.manifest import sha256_of

TRITON_TYPES = {"int64": model_config_pb2.TYPE_INT64, "float32": model_config_pb2.TYPE_FP32}


def invoke(*args: str):
    result = CliRunner().invoke(main, list(map(str, args)))
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(params=["synthetic", "movielens"])
def source_bundle(request, bundle: Path, ml100k_bundle: Path) -> Path:
    return bundle if request.param == "synthetic" else ml100k_bundle


@pytest.mark.parametrize(("data", "graph"), [("synthetic", "plain"), ("movielens", "folded")])
def test_export_graphs_then_verify_and_inspect(request, data: str, tmp_path: Path, graph: str) -> None:
    """Each graph on one of the two bundles (training itself exports and verifies the folded graph of both)."""
    source_bundle = request.getfixturevalue("bundle" if data == "synthetic" else "ml100k_bundle")
    out = tmp_path / graph
    invoke("export", source_bundle, "--out", out, "--attention-form", graph)
    result = invoke("verify", out)
    assert "verified" in result.output and "reference evaluator" in result.output
    result = invoke("inspect", out)
    assert f"attention form {graph}" in result.output and "matches the manifest" in result.output and "seq_len" in result.output


@pytest.mark.slow
def test_folded_graph_matches_plain_graph(bundle: Path, tmp_path: Path) -> None:
    for graph in ("folded", "plain"):
        export_bundle(bundle, tmp_path / graph, attention_form=graph)
    rows = json.loads((bundle / "manifest.json").read_text())  # raw rows from the vocabularies, 40 long histories
    keys = {e["name"]: e["keys"] for e in rows["encoding"] if e["kind"] == "categorical"}
    rng = np.random.default_rng(0)
    raw = {"user_id": rng.choice(keys["user_id"], 64), "item_id": rng.choice(keys["item_id"], 64), "cate_id": rng.choice(keys["cate_id"], 64),
           "price": rng.random(64) * 30, "hist_item_id": list(rng.choice(keys["item_id"], (64, 40))),
           "hist_cate_id": list(rng.choice(keys["cate_id"], (64, 40)))}
    folded, plain = (Predictor.load(tmp_path / g, providers="cpu").predict(raw) for g in ("folded", "plain"))
    assert np.max(np.abs(folded - plain)) <= 1e-5


@pytest.mark.parametrize("precision", ["int8", "fp16"])
@pytest.mark.slow
def test_precision_variants_verify_and_record_validation_metrics(source_bundle: Path, tmp_path: Path, precision: str) -> None:
    out = tmp_path / precision
    manifest = export_bundle(source_bundle, out, precision=precision, force=True)
    precisions = manifest["onnx"]["precisions"]
    assert {"fp32", precision} <= set(precisions) and precisions["fp32"]["rows"] == precisions[precision]["rows"]
    report = verify_bundle(out)
    assert report["parity"]["atol"] == {"int8": 0.05, "fp16": 0.01}[precision]
    drop = precisions["auc_drop"]
    if drop > 0:
        with pytest.raises(PrecisionRejected, match="validation AUC"):
            export_bundle(source_bundle, tmp_path / "refused", precision=precision, max_auc_drop=drop / 2)
        assert not (tmp_path / "refused").exists()
    else:
        export_bundle(source_bundle, tmp_path / "kept", precision=precision, max_auc_drop=0.0)
    assert Predictor.load(out, providers="cpu").manifest["onnx"]["precision"] == precision


@pytest.mark.slow
def test_int8_computes_the_per_behaviour_products_in_integers_and_stays_near_float32(ml100k_bundle: Path, tmp_path: Path) -> None:
    """On MovieLens-100k's bundle (its behaviours carry times too); the built-in data's converts in the test above."""
    tables_only = export_bundle(ml100k_bundle, tmp_path / "tables", precision="int8", force=True)["onnx"]["precisions"]["converted"]
    assert all(not r["products"]["nodes"] and r["products"]["calibration_rows"] == 0 for r in tables_only.values())  # the default
    manifest = export_bundle(ml100k_bundle, tmp_path / "int8", precision="int8", force=True, int8_products="per-behaviour")
    converted = manifest["onnx"]["precisions"]["converted"]
    assert set(converted) == {"onnx", "ranking", "explain"}
    for record in converted.values():  # the attention unit in int8, the MLP on the pooled interest in float32
        assert record["products"]["nodes"] and record["float32"]["products"] and record["products"]["calibration_rows"] > 0
        assert record["embeddings"]["tables"]
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(tmp_path / "int8" / "model.onnx"), options, providers=["CPUExecutionProvider"])
    kernels = {node.op_type for node in onnx.load(str(tmp_path / "optimized.onnx")).graph.node}
    assert kernels & {"QLinearMatMul", "QGemm"}, kernels  # ONNX Runtime fused the QDQ pairs into integer kernels
    full, reduced = (Predictor.load(b, providers="cpu") for b in (ml100k_bundle, tmp_path / "int8"))
    max_len = full.schema.max_len
    for length in (0, 1, 2, max_len):  # every row of a feed with histories of this length
        feed = random_feed(full.schema, 64, max(length, 1), np.random.default_rng(length))
        for name in full.schema.history_names:
            feed[name][:, length:] = 0
        expected, got = (p.session.run(["probability"], feed)[0] for p in (full, reduced))
        assert np.max(np.abs(got - expected)) <= TOLERANCE["int8"], length
    result = invoke("inspect", tmp_path / "int8")
    assert "int8 products" in result.output and "validation AUC: float32" in result.output


def test_export_from_a_checkpoint_file(bundle: Path, tmp_path: Path) -> None:
    invoke("export", bundle / "weights.pt", "--out", tmp_path / "from-checkpoint")
    verify_bundle(tmp_path / "from-checkpoint")
    # the calibration is the manifest's, so a re-export serves what the bundle served
    again, before = (json.loads((folder / "manifest.json").read_text()) for folder in (tmp_path / "from-checkpoint", bundle))
    assert again["calibration"] == before["calibration"] and before["calibration"]["method"] == "platt"
    assert again["reliability_plot"] == "reliability.png" and (tmp_path / "from-checkpoint" / "reliability.png").is_file()


def test_the_checkpoint_refers_to_the_manifest_for_spec_and_schema(bundle: Path, tmp_path: Path) -> None:
    checkpoint = torch.load(bundle / "weights.pt", weights_only=True)
    assert set(checkpoint) == {"model_config", "state_dict", "manifest"} and checkpoint["manifest"] == "manifest.json"
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy2(bundle / "weights.pt", alone / "weights.pt")  # without its manifest it describes no inputs
    result = CliRunner().invoke(main, ["export", str(alone / "weights.pt"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "no manifest.json beside the checkpoint" in result.output


@pytest.mark.slow
def test_offline_optimisation_is_saved_and_verifies(bundle: Path, tmp_path: Path) -> None:
    manifest = export_bundle(bundle, tmp_path / "optimized", optimize=True)
    assert manifest["onnx"]["optimization"] == "basic"
    verify_bundle(tmp_path / "optimized")


def tamper(bundle: Path, tmp_path: Path, change) -> Path:
    copy = tmp_path / "tampered"
    shutil.copytree(bundle, copy)
    model = onnx.load(str(copy / "model.onnx"))
    change(model)
    onnx.save(model, str(copy / "model.onnx"))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["onnx"]["sha256"] = sha256_of(copy / "model.onnx")
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def test_verify_raises_typed_errors(bundle: Path, tmp_path: Path) -> None:
    def rename_output(model: onnx.ModelProto) -> None:
        old = model.graph.output[0].name
        model.graph.output[0].name = "score"
        for node in model.graph.node:
            node.output[:] = ["score" if o == old else o for o in node.output]

    with pytest.raises(OutputNameError):
        verify_bundle(tamper(bundle, tmp_path / "a", rename_output))

    def fix_sequence_length(model: onnx.ModelProto) -> None:
        dim = model.graph.input[4].type.tensor_type.shape.dim[1]
        dim.dim_value = 50

    with pytest.raises(DimensionError, match="hist_item_id"):
        verify_bundle(tamper(bundle, tmp_path / "b", fix_sequence_length))

    def nudge_weights(model: onnx.ModelProto) -> None:
        for initializer in model.graph.initializer:
            array = onnx.numpy_helper.to_array(initializer)
            if array.dtype == np.float32 and array.ndim == 2:
                initializer.CopyFrom(onnx.numpy_helper.from_array(array * 1.5, initializer.name))

    with pytest.raises(ParityError, match="differ"):
        verify_bundle(tamper(bundle, tmp_path / "c", nudge_weights))


def test_triton_repository_parses_with_tritons_schema(source_bundle: Path, tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    (repository / "other-model" / "1").mkdir(parents=True)
    (repository / "other-model" / "config.pbtxt").write_text('name: "other-model"\n')
    invoke("triton", source_bundle, "--repository", repository, "--name", "din")
    invoke("triton", source_bundle, "--repository", repository, "--name", "din-gpu", "--gpu")
    assert (repository / "other-model" / "config.pbtxt").read_text() == 'name: "other-model"\n'
    onnx_inputs = {i.name: i for i in onnx.load(str(source_bundle / "model.onnx")).graph.input}
    for name, kind in (("din", model_config_pb2.ModelInstanceGroup.KIND_CPU), ("din-gpu", model_config_pb2.ModelInstanceGroup.KIND_GPU)):
        config = text_format.Parse((repository / name / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
        assert config.name == name and config.backend == "onnxruntime" and config.max_batch_size > 0
        assert config.instance_group[0].kind == kind and config.dynamic_batching is not None
        assert (repository / name / "1" / "model.onnx").read_bytes() == (source_bundle / "model.onnx").read_bytes()
        assert [i.name for i in config.input] == list(onnx_inputs)
        for entry in config.input:
            dims = onnx_inputs[entry.name].type.tensor_type.shape.dim
            element = onnx.helper.tensor_dtype_to_np_dtype(onnx_inputs[entry.name].type.tensor_type.elem_type).name
            assert entry.data_type == TRITON_TYPES[element]
            if len(dims) == 2:
                assert list(entry.dims) == [-1]
            else:
                assert list(entry.dims) == [1] and list(entry.reshape.shape) == []
        assert [o.name for o in config.output] == ["probability"]
