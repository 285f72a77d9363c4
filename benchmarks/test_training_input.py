"""Training samples per second on MovieLens-100k: batches cut from pre-encoded contiguous arrays (what
din-export does) against a torch Dataset that builds each row in Python (the pattern of the original blog
code), each feeding the same DIN training step, and each alone (input only). Same machine, same run, same
first 20,000 training rows; samples per second = 20,000 / the time of one epoch."""

import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from din_export.config import ModelConfig
from din_export.data.fitting import fit_schema
from din_export.data.samples import labels, raw_columns
from din_export.data.spec import load_spec
from din_export.data.splits import EncodedSplit
from din_export.model.din import DIN
from din_export.training.train import batch_tensors
from din_runtime import FeatureEncoder
from din_runtime.schema import FeatureSchema

ROWS = 20_000
BATCH = 256


class PerRowDataset(Dataset):
    """Encodes one sample per __getitem__ with Python dictionaries, padding its history by hand."""

    def __init__(self, table: dict, encoding: list[dict]) -> None:
        self.table = table
        self.encoding = encoding
        self.index = {f["name"]: {k: i + 2 for i, k in enumerate(f["keys"])} for f in encoding if f["kind"] == "categorical"}
        self.numeric = {f["name"]: f for f in encoding if f["kind"] == "numeric"}
        self.max_len = max(f["max_len"] for f in encoding if f["kind"] == "sequence")

    def __len__(self) -> int:
        return len(self.table["label"])

    def __getitem__(self, i: int):
        row = []
        for feature in self.encoding:
            name, value = feature["name"], self.table[feature["name"]][i]
            if feature["kind"] == "categorical":
                row.append(torch.tensor(self.index[name].get(value, 1)))
            elif feature["kind"] == "numeric":
                f = self.numeric[name]
                x = f["fill"] if value is None else value
                row.append(torch.tensor((x - f["shift"]) / f["scale"], dtype=torch.float32))
            elif feature["kind"] == "times":  # each behaviour's age at the row's time, in whole units
                ages = [max(math.floor(self.table[feature["at"]][i] - t), 0) for t in value][-self.max_len:]
                row.append(torch.tensor(ages + [0] * (self.max_len - len(ages))))
            else:
                ids = [self.index[feature["shares"]].get(v, 1) for v in value][-feature["max_len"]:]
                row.append(torch.tensor(ids + [0] * (feature["max_len"] - len(ids))))
        return row, torch.tensor(float(self.table["label"][i]))


@pytest.fixture(scope="module")
def movielens(ml100k_samples: Path):
    spec = load_spec(ml100k_samples / "spec.toml")
    table = pq.read_table(ml100k_samples / "train.parquet").slice(0, ROWS)
    schema = fit_schema(raw_columns(table, spec), spec).schema
    encoding = schema.to_manifest()
    split = EncodedSplit(FeatureEncoder(schema).encode(raw_columns(table, spec)), labels(table, spec), None, schema.history_names)
    return table.to_pydict(), encoding, split


def train_epoch(batches, encoding) -> int:
    torch.manual_seed(0)
    model = DIN(FeatureSchema.from_manifest(encoding), ModelConfig())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    seen = 0
    for inputs, target in batches:
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(*inputs), target)
        loss.backward()
        optimizer.step()
        seen += len(target)
    return seen


def consume(batches, encoding) -> int:
    """Input only: build every batch, train nothing."""
    return sum(len(target) for _, target in batches)


@pytest.mark.parametrize("step", [train_epoch, consume], ids=["train-step", "input-only"])
def test_contiguous_arrays(benchmark, movielens, step) -> None:
    _, encoding, split = movielens
    order = np.random.default_rng(0).permutation(len(split))

    def batches():
        for start in range(0, len(split), BATCH):
            rows = order[start:start + BATCH]
            yield batch_tensors(split, rows), torch.from_numpy(split.labels[rows])

    seen = benchmark.pedantic(lambda: step(batches(), encoding), rounds=1, iterations=1)
    assert seen == ROWS


@pytest.mark.parametrize("step", [train_epoch, consume], ids=["train-step", "input-only"])
def test_per_row_dataset(benchmark, movielens, step) -> None:
    table, encoding, _ = movielens
    loader = DataLoader(PerRowDataset(table, encoding), batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(0))
    seen = benchmark.pedantic(lambda: step(loader, encoding), rounds=1, iterations=1)
    assert seen == ROWS
