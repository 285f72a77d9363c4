"""Training throughput at the default settings on MovieLens-100k (the ids+genre recipe): samples per second of
train() itself (the real step: forward, BCE, mini-batch aware L2, backward, fused Adam, schedule) with the
attention unit in its folded form (how din-export trains) and in the plain form [q, k, q-k, q*k], run
interleaved (folded, plain, folded, plain, ...) in one process so that the machine's drift hits both alike. Each
round is one epoch over the first 80 batches of the training split (histories as the data has them, up to 50),
after a warm-up round; at the default batch size and at 256.

    .venv/bin/python -m pytest -n 0 benchmarks/test_training_speed.py -s

The benchmark times one interleaved round (both forms); extra_info holds each form's samples/s (median over the
rounds, as train() reports it: the batch loop only, not the validation pass) and their ratio."""

import statistics
from pathlib import Path

import numpy as np
import pytest
import torch

from din_export.config import ModelConfig, TrainConfig
from din_export.data.prepare import prepare
from din_export.data.prepared import SPEC_FILE
from din_export.data.rules import Sources
from din_export.data.source import DataSource
from din_export.data.spec import load_spec
from din_export.data.splits import EncodedSplit, load_data
from din_export.model.din import DIN
from din_export.training.train import train
from helpers import ML100K, need_ml100k

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "examples" / "movielens-100k-ids-genre.toml"
BATCHES = 80
pytestmark = pytest.mark.slow  # trains on MovieLens-100k; the inner loop (-m "not slow") skips it


@pytest.fixture(scope="module")
def ids_genre(tmp_path_factory: pytest.TempPathFactory):
    need_ml100k()
    out = tmp_path_factory.mktemp("ids-genre") / "samples"
    prepare(RECIPE, Sources(ML100K / "ml-100k.inter", ML100K / "ml-100k.item"), out)
    return load_data(DataSource(out / "train.parquet", out / "valid.parquet", out / "test.parquet"), load_spec(out / SPEC_FILE), seed=0)


def head(split: EncodedSplit, rows: int) -> EncodedSplit:
    return EncodedSplit({name: array[:rows] for name, array in split.feed.items()}, split.labels[:rows],
                        None if split.groups is None else split.groups[:rows], split.sequences)


@pytest.mark.parametrize("batch_size", sorted({256, TrainConfig().batch_size}))
def test_training_throughput_folded_against_plain(benchmark, ids_genre, batch_size: int) -> None:
    training = TrainConfig(epochs=1, batch_size=batch_size, progress=False, device="cpu")
    subset, valid = head(ids_genre.splits["train"], BATCHES * batch_size), head(ids_genre.splits["valid"], 2000)
    models = {}
    for form in ("folded", "plain"):
        torch.manual_seed(0)
        models[form] = DIN(ids_genre.schema, ModelConfig())
        models[form].pooling.form = form
        train(models[form], head(subset, 10 * batch_size), valid, training)  # warm-up
    rates: dict[str, list[float]] = {"folded": [], "plain": []}

    def interleaved() -> None:
        for form, din in models.items():
            rates[form].append(train(din, subset, valid, training).samples_per_second)

    benchmark.pedantic(interleaved, rounds=3, iterations=1)
    rate = {form: statistics.median(values) for form, values in rates.items()}
    benchmark.extra_info.update({f"{form} samples/s": round(value) for form, value in rate.items()})
    benchmark.extra_info["folded / plain"] = round(rate["folded"] / rate["plain"], 3)
    print(f"batch {batch_size}: {benchmark.extra_info}")
    assert np.isfinite(list(rate.values())).all()
