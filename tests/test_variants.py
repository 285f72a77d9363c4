"""Every model variant trains, exports with a dynamic sequence length and passes parity, all-padding rows included."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow.parquet as pq
import pytest
import torch

from din_export.bundle import load_bundle
from din_export.data.synthetic import generate
from din_export.export.graphs import random_feed
from din_export.model.layers import RECENCY_BUCKETS, Recency
from din_runtime import BundleError, Predictor
from din_runtime.manifest import read_manifest
from helpers import build_bundle, rank_against_predict

VARIANTS = {
    "base-mean": {"variant": "base"},
    "base-sum": {"variant": "base", "base_pooling": "sum"},
    "din-prelu": {"variant": "din", "mlp_activation": "prelu"},
    "din-dice": {"variant": "din", "mlp_activation": "dice", "attention_activation": "dice"},
    "din-seq": {"variant": "din-seq", "dropout": 0.1, "batch_norm": True},
    "din-no-recency": {"variant": "din", "recency": "none"},
}


def test_recency_buckets_count_back_from_the_most_recent_in_log2_steps() -> None:
    """Bucket b holds distances 2^b - 1 .. 2^(b+1) - 2 back from the most recent behaviour (0: the latest), the last
    bucket everything beyond; padded positions are 0 and get no recency at all."""
    recency = Recency(4)
    lengths = [0, 1, 2, 7, 8, 40, 70000]
    width = max(lengths)
    mask = torch.arange(width).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    buckets = recency.buckets(mask).numpy()
    for row, length in enumerate(lengths):
        back = length - 1 - np.arange(length)
        expected = np.minimum(np.floor(np.log2(back + 1)).astype(int), RECENCY_BUCKETS - 1)
        assert np.array_equal(buckets[row, :length], expected) and not buckets[row, length:].any()
    keys = torch.randn(len(lengths), width, 4)
    added = recency(keys, mask) - keys
    assert torch.equal(added[~mask], torch.zeros_like(added[~mask]))


@pytest.mark.parametrize("name", list(VARIANTS))
@pytest.mark.slow
def test_variant_exports_with_parity(tmp_path: Path, name: str) -> None:
    bundle = build_bundle(tmp_path / name, samples=800, epochs=1, **VARIANTS[name])
    manifest = read_manifest(bundle)
    assert manifest["model"]["variant"] == VARIANTS[name]["variant"]
    assert manifest["model"]["recency"] == VARIANTS[name].get("recency", "position")
    assert manifest["onnx"]["parity"]["max_abs_diff"] <= manifest["onnx"]["parity"]["atol"]
    din = load_bundle(bundle).din
    session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    for batch, length in ((1, 1), (6, 50), (3, 13)):
        feed = random_feed(din.schema, batch, length, np.random.default_rng(length))
        for sequence in ("hist_item_id", "hist_cate_id"):
            feed[sequence][0] = 0  # an all-padding row
        (probabilities,) = session.run(None, feed)
        with torch.inference_mode():
            expected = din.probability(din(*(torch.from_numpy(feed[n]) for n in din.schema.names))).numpy()
        assert np.all(np.isfinite(probabilities))
        assert np.max(np.abs(probabilities - expected)) <= 1e-5
    table = generate(30, seed=4, max_history=60)
    rows = {name: table.column(name).to_pylist() for name in table.column_names}
    longest = int(np.argmax([len(h) for h in rows["hist_item_id"]]))
    predictor = Predictor.load(bundle, providers="cpu")
    ranking, replicated = rank_against_predict(predictor, rows, user=longest)
    assert np.max(np.abs(ranking.probabilities - replicated[ranking.order])) <= 1e-5
    rows.pop("label")
    if VARIANTS[name]["variant"] == "base":  # no attention, no explanation: said in one line, by the predictor and report
        assert manifest["explain"] is None and not (bundle / "explain.onnx").exists()
        with pytest.raises(BundleError, match="the base model pools its behaviours without attention"):
            predictor.explain(rows)
        if name == "base-mean":
            table = tmp_path / "rows.parquet"
            pq.write_table(generate(10, seed=1), table)
            refused = subprocess.run([str(Path(sys.executable).parent / "din-export"), "report", str(bundle), "--explain", str(table)],
                                     capture_output=True, text=True)
            assert refused.returncode != 0 and "without attention" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    else:  # explain.onnx: predict's probabilities, one weight per behaviour used (its parity checked at export)
        explanation = predictor.explain(rows)
        assert np.array_equal(explanation.probabilities, predictor.predict(rows))
        assert [len(w) for w in explanation.weights] == [min(len(h), 50) for h in rows["hist_item_id"]]


@pytest.mark.slow
def test_dice_and_batch_norm_use_running_statistics_in_inference(tmp_path: Path) -> None:
    din = load_bundle(build_bundle(tmp_path / "dice", samples=800, epochs=1, mlp_activation="dice", batch_norm=True)).din
    feed = random_feed(din.schema, 8, 5, np.random.default_rng(0))
    tensors = [torch.from_numpy(feed[n]) for n in din.schema.names]
    with torch.inference_mode():
        together = din(*tensors)
        alone = torch.cat([din(*(t[i:i + 1] for t in tensors)) for i in range(8)])
    assert torch.allclose(together, alone, atol=1e-6)  # a row's score does not depend on its batch
