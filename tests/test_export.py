"""The exported graph: symbolic axes, a single file, parity on unseen shapes, finite output for empty histories."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from din_export.bundle import load_bundle
from din_export.config import ModelConfig
from din_export.export.errors import ExportError
from din_export.export.graphs import BATCH, TOLERANCE, export_graph, random_feed
from din_export.export.parity import verify_file
from din_export.model.din import DIN
from din_runtime.manifest import read_manifest
from din_runtime.schema import FeatureSchema
from helpers import build_bundle


def test_inputs_have_named_batch_and_sequence_dimensions(bundle: Path) -> None:
    model = onnx.load(str(bundle / "model.onnx"))
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    assert dims == {"user_id": ["batch"], "item_id": ["batch"], "cate_id": ["batch"], "price": ["batch"],
                    "hist_item_id": ["batch", "seq_len"], "hist_cate_id": ["batch", "seq_len"]}
    assert sorted(p.name for p in bundle.iterdir()) == ["explain.onnx", "manifest.json", "model.onnx", "rank.onnx", "reliability.png",
                                                        "training.png", "weights.pt"]
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    ranking = onnx.load(str(bundle / "rank.onnx"))
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in ranking.graph.input}
    assert dims == {"user_id": ["candidates"], "item_id": ["candidates"], "cate_id": ["candidates"], "price": ["candidates"],
                    "hist_item_id": [1, "seq_len"], "hist_cate_id": [1, "seq_len"]}
    explain = onnx.load(str(bundle / "explain.onnx"))
    outputs = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in explain.graph.output}
    assert outputs == {"probability": ["batch"], "attention_weights": ["batch", "seq_len"]}


def test_manifest_records_what_serving_needs(bundle: Path) -> None:
    manifest = read_manifest(bundle)
    assert manifest["onnx"]["parity"]["max_abs_diff"] <= manifest["onnx"]["parity"]["atol"]
    assert {"auc", "gauc", "accuracy", "logloss"} <= set(manifest["metrics"]["test"])
    sequences = [f for f in manifest["encoding"] if f["kind"] == "sequence"]
    assert [s["max_len"] for s in sequences] == [50, 50]
    assert set(manifest["versions"]) >= {"torch", "onnx", "onnxruntime", "numpy"}


@pytest.mark.parametrize(("batch", "sequence"), [(1, 1), (1, 50), (9, 17), (1000, 50), (3, 200)])
def test_onnx_runtime_agrees_with_pytorch_on_unseen_shapes(bundle: Path, batch: int, sequence: int) -> None:
    din = load_bundle(bundle).din
    session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    feed = random_feed(din.schema, batch, sequence, np.random.default_rng(batch * 1000 + sequence))
    (onnx_out,) = session.run(None, feed)
    with torch.inference_mode():
        torch_out = din.probability(din(*(torch.from_numpy(feed[n]) for n in din.schema.names))).numpy()
    assert onnx_out.shape == (batch,)
    assert np.all(np.isfinite(onnx_out))
    assert np.max(np.abs(onnx_out - torch_out)) <= 1e-5


@pytest.mark.slow
def test_all_padding_rows_are_finite_for_every_weighting(tmp_path: Path) -> None:
    for weighting in ("raw", "softmax"):
        out = build_bundle(tmp_path / weighting, samples=600, epochs=1, attention_weighting=weighting, mlp_activation="dice")
        din = load_bundle(out).din
        session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
        feed = random_feed(din.schema, 4, 6, np.random.default_rng(0))
        for name in ("hist_item_id", "hist_cate_id"):
            feed[name][:] = 0
        (probabilities,) = session.run(None, feed)
        assert np.all(np.isfinite(probabilities)), weighting


def test_parity_failure_stops_the_export(tmp_path: Path) -> None:
    encoding = [{"name": "item", "kind": "categorical", "key_type": "int", "keys": [1, 2, 3]},
                {"name": "hist", "kind": "sequence", "shares": "item", "max_len": 4}]
    din = DIN(FeatureSchema.from_manifest(encoding), ModelConfig(embedding_dim=4, attention_hidden=(8,), mlp_hidden=(8,))).eval()
    path = tmp_path / "model.onnx"
    export_graph(din, BATCH, path)
    assert verify_file(din, path, BATCH, TOLERANCE["fp32"])["max_abs_diff"] <= 1e-5
    with torch.no_grad():
        din.mlp[-1].bias += 1.0  # the PyTorch model no longer matches the file
    with pytest.raises(ExportError, match="ONNX Runtime and PyTorch differ"):
        verify_file(din, path, BATCH, TOLERANCE["fp32"])


def test_exports_share_one_decomposition_registry_and_torch_is_left_as_it_was() -> None:
    """torch.onnx builds its registry on every export (0.9 s of 3.3 s); inside cached_registry each export gets the
    same one, outside the exporter is untouched. (Bundles' graphs are byte for byte what they were: the golden
    bundle and the determinism tests.)"""
    from torch.onnx._internal.exporter import _registration

    from din_export.export.registry import cached_registry

    original = _registration.ONNXRegistry.__dict__["from_torchlib"]
    with cached_registry():
        first = _registration.ONNXRegistry().from_torchlib(opset_version=18)
        assert _registration.ONNXRegistry().from_torchlib(opset_version=18) is first
    assert _registration.ONNXRegistry.__dict__["from_torchlib"] is original
