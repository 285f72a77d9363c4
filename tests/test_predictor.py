"""The runtime against the real bundle: parity with PyTorch on raw rows, integrity checks, providers, no torch."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from din_export.bundle import load_bundle
from din_export.data.synthetic import generate
from din_runtime import BundleError, Predictor, ProviderError
from din_runtime.providers import CUDA

ATOL = 1e-5


def raw_rows(rows: int, seed: int) -> dict:
    table = generate(rows, seed=seed, max_history=80)  # longer than max_len, and IDs the bundle never saw
    return {name: table.column(name).to_pylist() for name in table.column_names}


def test_predict_equals_pytorch_on_the_same_raw_rows(bundle: Path) -> None:
    predictor = Predictor.load(bundle, providers="cpu")
    rows = raw_rows(300, seed=7)
    rows["hist_item_id"][0], rows["hist_cate_id"][0] = [], []  # an all-padding history
    probabilities = predictor.predict(rows)
    feed = predictor.encode(rows)
    din = load_bundle(bundle).din
    with torch.inference_mode():
        expected = din.probability(din(*(torch.from_numpy(feed[n]) for n in predictor.feature_names))).numpy()
    assert probabilities.dtype == np.float32 and probabilities.shape == (300,)
    assert np.all(np.isfinite(probabilities)) and np.all((probabilities >= 0) & (probabilities <= 1))
    assert np.max(np.abs(probabilities - expected)) <= ATOL
    assert feed["hist_item_id"].shape[1] == 50  # histories of 80 keep their 50 most recent


def test_batch_of_one_and_empty_batch(bundle: Path) -> None:
    predictor = Predictor.load(bundle, providers="cpu")
    rows = raw_rows(5, seed=3)
    single = predictor.predict({k: v[:1] for k, v in rows.items()})
    assert single.shape == (1,) and abs(single[0] - predictor.predict(rows)[0]) <= ATOL
    assert predictor.predict({k: [] for k in rows}).shape == (0,)


def test_runtime_never_imports_torch(bundle: Path) -> None:
    script = f"""
import sys
from din_runtime import Predictor
p = Predictor.load({str(bundle)!r})
probs = p.predict({{"user_id": [1, 2], "item_id": [3, 999999], "cate_id": [4, 5], "price": [10.0, None],
                   "hist_item_id": [[1, 2, 3], []], "hist_cate_id": [[4, 5, 6], []]}})
assert probs.shape == (2,), probs
assert 'torch' not in sys.modules, 'torch was imported'
print(p.providers[0])
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() in ("CPUExecutionProvider", CUDA)


def test_providers_in_use_are_reported_and_cuda_is_never_silently_lost(bundle: Path) -> None:
    assert Predictor.load(bundle, providers="cpu").providers == ["CPUExecutionProvider"]
    assert Predictor.load(bundle, providers=["CPUExecutionProvider"]).providers == ["CPUExecutionProvider"]
    try:
        predictor = Predictor.load(bundle, providers="cuda")
    except ProviderError as error:
        assert "CUDA" in str(error)
    else:
        assert predictor.providers[0] == CUDA


def damaged_copy(bundle: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    return copy


def test_tampered_model_is_refused(bundle: Path, tmp_path: Path) -> None:
    copy = damaged_copy(bundle, tmp_path)
    data = bytearray((copy / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        Predictor.load(copy)


def test_unknown_format_version_and_missing_files_are_refused(bundle: Path, tmp_path: Path) -> None:
    copy = damaged_copy(bundle, tmp_path)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["format_version"] = 99
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="format version 99"):
        Predictor.load(copy)
    with pytest.raises(BundleError, match="no manifest.json"):
        Predictor.load(tmp_path / "nowhere")
    (copy / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        Predictor.load(copy)


def test_truncated_model_and_paths_outside_the_bundle_are_refused(bundle: Path, tmp_path: Path) -> None:
    copy = damaged_copy(bundle, tmp_path)
    data = (copy / "model.onnx").read_bytes()
    (copy / "model.onnx").write_bytes(data[: len(data) // 3])
    with pytest.raises(BundleError, match="sha256"):
        Predictor.load(copy)
    shutil.copy2(bundle / "model.onnx", copy / "model.onnx")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["onnx"]["file"] = "../elsewhere/model.onnx"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="onnx.file must be 'model.onnx'"):
        Predictor.load(copy)
