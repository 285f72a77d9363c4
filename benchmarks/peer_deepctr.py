"""DeepCTR-Torch's DIN beside din-export's on the same split: the ids+genre MovieLens-100k samples, encoded once by
din-export (the same vocabularies, histories and padding feed both), trained as DeepCTR-Torch's README shows
(`compile("adam", "binary_crossentropy")`, `fit` with batch 256), one epoch at a time with early stopping on
validation AUC (patience 2, at most 10 epochs, the best epoch's weights kept), the settings of the comparison in
issue 11 (embedding 18, attention 64-16 with Dice, DNN 256-128, its other defaults). Test AUC, GAUC and logloss
by din-export's own metric functions; samples/s over `fit` alone. Rows go to --results in recipe_search.py's
format, so one table shows both. `--model dien`: DeepCTR-Torch's DIEN as its own example runs it (AUGRU, the
auxiliary loss with negative sampling, alpha 1.0), the same embedding, attention and DNN; each negative
behaviour is a real behaviour drawn from the training split (item and genre together, as ours draws them), never
the true next one where drawing can avoid it:

    .venv/bin/pip install deepctr-torch==0.3.0 scikit-learn requests    # benchmark-only, not a project dependency
    .venv/bin/python benchmarks/peer_deepctr.py --seeds 0 1 2 --results peer-runs.jsonl
    .venv/bin/python benchmarks/peer_deepctr.py --model dien --seeds 0 1 2 --results peer-runs.jsonl
    .venv/bin/python benchmarks/recipe_search.py --data ids-genre --candidates default --seeds 0 1 2 --results peer-runs.jsonl
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from deepctr_torch.inputs import SparseFeat, VarLenSparseFeat
from deepctr_torch.models import DIEN, DIN
from recipe_search import prepared

from din_export.data.splits import EncodedData
from din_export.training.metrics import evaluate

EMBEDDING, ATTENTION, DNN, BATCH, MAX_EPOCHS, PATIENCE = 18, (64, 16), (256, 128), 256, 10, 2


def columns(data: EncodedData) -> tuple[list, list[str]]:
    """DeepCTR feature columns for din-export's encoding: each categorical a SparseFeat of its vocabulary's size,
    each sequence a VarLenSparseFeat sharing its categorical's embedding, masked by its length."""
    features, histories = [], []
    for f in data.schema.features:
        if f.kind == "categorical":
            features.append(SparseFeat(f.name, f.size, embedding_dim=EMBEDDING))
        elif f.kind == "sequence":
            features.append(VarLenSparseFeat(SparseFeat(f.name, data.schema[f.shares].size, embedding_dim=EMBEDDING, embedding_name=f.shares),
                                             maxlen=f.max_len, length_name=f"{f.name}_length"))
            histories.append(f.shares)
    return features, histories


def inputs(data: EncodedData, split: str) -> dict[str, np.ndarray]:
    """The split's encoded arrays, histories padded to max_len, plus each history's length."""
    encoded = data.splits[split]
    x: dict[str, np.ndarray] = {}
    for f in data.schema.features:
        array = encoded.feed[f.name]
        if f.kind == "sequence":
            array = np.pad(array, ((0, 0), (0, f.max_len - array.shape[1])))
            x[f"{f.name}_length"] = (array != 0).sum(axis=1)
        x[f.name] = array
    return x


def with_negatives(data: EncodedData, x: dict[str, np.ndarray], seed: int) -> tuple[list, dict[str, np.ndarray]]:
    """DIEN's extra inputs: for each history a `neg_` history of the same length whose entries are behaviours drawn
    from the training split's real behaviours (one draw per position, shared by the item and genre histories)."""
    sequences = [f for f in data.schema.features if f.kind == "sequence"]
    train = data.splits["train"].feed
    pool = np.flatnonzero(train[sequences[0].name] != 0)
    rng = np.random.default_rng(seed)
    features, extra = [], {}
    first = x[sequences[0].name]
    draws = pool[rng.integers(0, len(pool), first.shape)]
    for f in sequences:
        rows, steps = np.divmod(draws, train[f.name].shape[1])
        drawn = train[f.name][rows, steps]
        extra[f"neg_{f.name}"] = np.where(x[f.name] != 0, drawn, 0)
        features.append(VarLenSparseFeat(SparseFeat(f"neg_{f.name}", data.schema[f.shares].size, embedding_dim=EMBEDDING,
                                                    embedding_name=f.shares), maxlen=f.max_len, length_name=f"{f.name}_length"))
    return features, {**x, **extra}


def peer_model(kind: str, data: EncodedData, seed: int):  # noqa: ANN201 - DeepCTR's own type
    features, histories = columns(data)
    if kind == "din":
        model = DIN(features, histories, att_hidden_size=ATTENTION, dnn_hidden_units=DNN, device="cpu", seed=seed)
    else:
        negatives, _ = with_negatives(data, inputs(data, "valid"), seed)
        model = DIEN(features + negatives, histories, gru_type="AUGRU", use_negsampling=True, alpha=1.0,
                     att_hidden_units=ATTENTION, dnn_hidden_units=DNN, device="cpu", seed=seed)
    model.compile("adam", "binary_crossentropy")
    return model


def peer_inputs(kind: str, data: EncodedData, split: str, seed: int) -> dict[str, np.ndarray]:
    x = inputs(data, split)
    return x if kind == "din" else with_negatives(data, x, seed + {"train": 0, "valid": 1, "test": 2}[split])[1]


def run(data: EncodedData, seed: int, kind: str = "din", patience: int = PATIENCE,
        on_epoch: Callable[[int, float], None] | None = None, epochs: int = MAX_EPOCHS) -> dict:
    """Train and test one peer model; `on_epoch(epoch, valid AUC)` after each epoch's validation (patience above
    `epochs` runs all of them)."""
    model = peer_model(kind, data, seed)
    train_x, valid_x, test_x = (peer_inputs(kind, data, s, seed) for s in ("train", "valid", "test"))
    labels = data.splits["train"].labels
    best_auc, best_epoch, best_state, stale, fit_seconds, epochs_run = -1.0, 0, None, 0, 0.0, 0
    for epoch in range(1, epochs + 1):
        np.random.seed(seed + epoch)  # DeepCTR shuffles with torch's DataLoader; numpy is seeded for completeness
        started = time.perf_counter()
        model.fit(train_x, labels, batch_size=BATCH, epochs=1, verbose=0)
        fit_seconds += time.perf_counter() - started
        epochs_run = epoch
        valid_auc = evaluate(data.splits["valid"].labels, model.predict(valid_x, 8192).reshape(-1), None)["auc"]
        if on_epoch is not None:
            on_epoch(epoch, valid_auc)
        if valid_auc > best_auc:
            best_auc, best_epoch, best_state, stale = valid_auc, epoch, copy.deepcopy(model.state_dict()), 0
        else:
            stale += 1
            if stale >= patience:
                break
    model.load_state_dict(best_state)
    test = evaluate(data.splits["test"].labels, model.predict(test_x, 8192).reshape(-1), data.splits["test"].groups)
    return {"data": "ids-genre", "candidate": "deepctr-torch-0.3.0", "variant": kind, "seed": seed, "auc": test["auc"],
            "description": f"DeepCTR-Torch's {kind.upper()}: embedding 18, attention 64-16, DNN 256-128, Adam 1e-3, batch 256",
            "gauc": test.get("gauc"), "logloss": test["logloss"], "best_epoch": best_epoch, "epochs_run": epochs_run,
            "samples_per_second": epochs_run * len(labels) / fit_seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--results", type=Path, default=Path("peer-runs.jsonl"))
    parser.add_argument("--model", choices=["din", "dien"], default="din")
    args = parser.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as scratch:
        data = prepared("ids-genre", Path(scratch))
        for seed in args.seeds:
            row = run(data, seed, args.model)
            with open(args.results, "a", encoding="utf-8") as stream:
                stream.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
