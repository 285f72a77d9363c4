"""Training throughput at the default settings on MovieLens-100k (the ids+genre recipe): samples per second of
the training step with the attention unit in its folded form (how din-export trains) and in the plain form
[q, k, q-k, q*k], run interleaved (folded, plain, folded, plain, ...) in one process so that the machine's drift
hits both alike. Each pass is 80 batches of the default batch size from the first training rows, histories as the
data has them (up to 50), after a warm-up pass.

    .venv/bin/python -m pytest benchmarks/test_training_speed.py --benchmark-min-rounds=5 -s

The benchmark times one interleaved round (both forms); extra_info holds each form's samples/s (median over the
rounds) and their ratio."""

import statistics
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from din_export.model import DIN, ModelConfig, ModelInputs
from din_export.pipeline import DataSource, load_data
from din_export.prepare import SPEC_FILE, Sources, prepare
from din_export.spec import load_spec
from din_export.train import TrainConfig

ROOT = Path(__file__).resolve().parent.parent
ML100K = ROOT.parent / "shared" / "data" / "ml-100k"
RECIPE = ROOT / "examples" / "movielens-100k-ids-genre.toml"
BATCHES = 80


@pytest.fixture(scope="module")
def ids_genre(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("ids-genre") / "samples"
    prepare(RECIPE, Sources(ML100K / "ml-100k.inter", ML100K / "ml-100k.item"), out)
    return load_data(DataSource(out / "train.parquet", out / "valid.parquet", out / "test.parquet"), load_spec(out / SPEC_FILE), seed=0)


def one_pass(din: DIN, optimizer: torch.optim.Optimizer, split, batches: list[np.ndarray]) -> float:
    """Seconds for the training steps over these batches (input slicing included, as in train())."""
    loss_function = torch.nn.BCEWithLogitsLoss()
    din.train()
    started = time.perf_counter()
    for rows in batches:
        optimizer.zero_grad()
        loss = loss_function(din(*split.tensors(rows)), torch.from_numpy(split.labels[rows]))
        loss.backward()
        optimizer.step()
    return time.perf_counter() - started


def test_training_throughput_folded_against_plain(benchmark, ids_genre) -> None:
    config, training = ModelConfig(), TrainConfig()
    split = ids_genre.splits["train"]
    order = np.random.default_rng(0).permutation(len(split))
    batches = [order[i * training.batch_size:(i + 1) * training.batch_size] for i in range(BATCHES)]
    models = {}
    for form in ("folded", "plain"):
        torch.manual_seed(0)
        din = DIN(ModelInputs.from_encoding(ids_genre.encoding), config)
        din.pooling.form = form
        models[form] = (din, torch.optim.Adam(din.parameters(), lr=training.learning_rate, fused=True))
        one_pass(*models[form], split, batches[:10])  # warm-up
    seconds: dict[str, list[float]] = {"folded": [], "plain": []}

    def interleaved() -> None:
        for form in ("folded", "plain"):
            seconds[form].append(one_pass(*models[form], split, batches))

    benchmark.pedantic(interleaved, rounds=3, iterations=1)
    rate = {form: len(batches) * training.batch_size / statistics.median(values) for form, values in seconds.items()}
    benchmark.extra_info.update({f"{form} samples/s": round(value) for form, value in rate.items()})
    benchmark.extra_info["folded / plain"] = round(rate["folded"] / rate["plain"], 3)
    print(f"training samples/s at the defaults: {benchmark.extra_info}")
