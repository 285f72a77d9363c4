"""Mini-batch training from pre-encoded arrays: BCE, Adam, early stopping on validation AUC."""

from __future__ import annotations

import copy
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from .metrics import evaluate
from .model import DIN


@dataclass
class EncodedSplit:
    """One split as contiguous arrays: the ONNX feed, labels, and group IDs (users) for GAUC."""

    feed: dict[str, np.ndarray]
    labels: np.ndarray
    groups: np.ndarray | None
    sequences: list[str]
    lengths: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.lengths = (self.feed[self.sequences[0]] != 0).sum(axis=1)

    def __len__(self) -> int:
        return len(self.labels)

    def tensors(self, rows: np.ndarray) -> list[torch.Tensor]:
        """Inputs for these rows, histories cut to the batch's longest (sequences are left-aligned)."""
        width = max(1, int(self.lengths[rows].max()))
        return [
            torch.from_numpy(array[rows][:, :width] if name in self.sequences else array[rows])
            for name, array in self.feed.items()
        ]


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 256
    learning_rate: float = 1e-3
    patience: int = 2
    seed: int = 0
    progress: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainResult:
    history: list[dict[str, float]]
    best_epoch: int


def predict(model: DIN, split: EncodedSplit, batch_size: int = 8192) -> np.ndarray:
    model.eval()
    out = np.empty(len(split), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(split), batch_size):
            rows = np.arange(start, min(start + batch_size, len(split)))
            out[rows] = torch.sigmoid(model(*split.tensors(rows))).numpy()
    return out


def _batches(rng: np.random.Generator, rows: int, batch_size: int) -> list[np.ndarray]:
    order = rng.permutation(rows)
    batches = [order[i:i + batch_size] for i in range(0, rows, batch_size)]
    return [b for b in batches if len(b) > 1]  # batch statistics (Dice) need two rows; the row returns next epoch


def train(model: DIN, train_split: EncodedSplit, valid_split: EncodedSplit, config: TrainConfig) -> TrainResult:
    """Train in place and leave the model at its best validation AUC."""
    rng = np.random.default_rng(config.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    loss_function = torch.nn.BCEWithLogitsLoss()
    history: list[dict[str, float]] = []
    best_auc, best_epoch, best_state, stale = -np.inf, 0, copy.deepcopy(model.state_dict()), 0
    for epoch in range(1, config.epochs + 1):
        model.train()
        batches = _batches(rng, len(train_split), config.batch_size)
        total_loss = 0.0
        bar = tqdm(batches, desc=f"epoch {epoch}/{config.epochs}", disable=not config.progress, file=sys.stderr, leave=False)
        for rows in bar:
            optimizer.zero_grad()
            logits = model(*train_split.tensors(rows))
            loss = loss_function(logits, torch.from_numpy(train_split.labels[rows]))
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(rows)
        valid = evaluate(valid_split.labels, predict(model, valid_split), valid_split.groups)
        record = {"epoch": epoch, "train_loss": total_loss / sum(map(len, batches)),
                  "valid_auc": valid["auc"], "valid_logloss": valid["logloss"]}
        history.append(record)
        if config.progress:
            print(f"epoch {epoch}: train loss {record['train_loss']:.4f}, valid AUC {valid['auc']:.4f}, "
                  f"valid logloss {valid['logloss']:.4f}", file=sys.stderr)
        if valid["auc"] > best_auc:
            best_auc, best_epoch, best_state, stale = valid["auc"], epoch, copy.deepcopy(model.state_dict()), 0
        else:
            stale += 1
            if stale >= config.patience:
                break
    model.load_state_dict(best_state)
    return TrainResult(history=history, best_epoch=best_epoch)
