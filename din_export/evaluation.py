"""`din-export evaluate`: a bundle scored on any table through din_runtime (the code that serves it): AUC, GAUC,
logloss, accuracy and calibration; with `rank`, how it ranks each positive among N sampled negatives (HR@K, NDCG@K
and MRR).

The negatives of a positive row are drawn without replacement from a pool (the bundle's item vocabulary, or the
rows of an item table), never the positive item and never an item of the row's history, by one generator seeded
once and consumed row by row in table order: the same table and seed give the same negatives and the same numbers
on every run (the sampled test negatives are not redrawn per evaluation). A positive tied with negatives ranks below
them (the pessimistic count), so a model that scores everything alike is not credited.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from din_runtime.encoding import Ragged

from .config import RANK_CUTOFFS
from .data.spec import Spec
from .errors import SpecError
from .scoring import bundle_table
from .training.metrics import evaluate


@dataclass(frozen=True)
class ItemPool:
    """What negatives are drawn from: the item feature's keys and, per candidate-side feature, its column."""

    item: str
    columns: dict[str, np.ndarray]  # feature -> one value per pool item (the item feature's keys among them)
    source: str  # where the pool came from, for the report

    def __len__(self) -> int:
        return len(self.columns[self.item])


def item_feature(predictor: Any) -> str:
    """The categorical the behaviours share that is no attribute of another: what a candidate is."""
    derived = predictor.encoder.derived
    plain = [name for name in predictor.shared if name not in derived]
    return sorted(plain, key=predictor.feature_names.index)[0]


def item_attributes(predictor: Any, item: str) -> set[str]:
    """The item feature and every candidate-side feature the bundle looks up from it (an item's category)."""
    return {item} | {name for name, (source, _) in predictor.encoder.derived.items() if source == item and name not in predictor.sequences}


def candidate_features(predictor: Any) -> list[str]:
    """The features a candidate brings, in input order: those the behaviours share and the item's attributes."""
    side = set(predictor.shared) | item_attributes(predictor, item_feature(predictor))
    return [name for name in predictor.feature_names if name in side]


def row_value(column: Any, row: int) -> Any:
    """One row's raw value of a column raw_columns gave: a history as a list, a scalar as a Python value."""
    if isinstance(column, Ragged):
        return column.values[column.offsets[row]:column.offsets[row + 1]].tolist()
    value = column[row]
    return value.item() if isinstance(value, np.generic) else value


def item_pool(predictor: Any, spec: Spec, items: Path | None) -> ItemPool:
    """The bundle's item vocabulary (its attributes looked up by the bundle), or the rows of an item table."""
    item = item_feature(predictor)
    if items is not None:
        table = read_table_of_items(items, spec, item)
        columns = {name: np.asarray(table[name]) for name in table}
        _, first = np.unique(columns[item].astype(str), return_index=True)
        first.sort()
        return ItemPool(item, {name: values[first] for name, values in columns.items()}, f"{len(first):,} items of {items}")
    lacking = [name for name in predictor.shared if name not in item_attributes(predictor, item)]
    if lacking:
        raise SpecError(f"--rank: the candidate feature(s) {lacking} are not attributes of '{item}' in this bundle, so a "
                        "sampled item's values are unknown; pass --items TABLE with a column per candidate feature")
    keys = np.asarray(predictor.schema[item].keys)
    return ItemPool(item, {item: keys}, f"the {len(keys):,} keys of the bundle's '{item}' vocabulary")


def read_table_of_items(path: Path, spec: Spec, item: str) -> dict[str, np.ndarray]:
    """An item table's columns that are non-sequence features of the spec; it must hold the item feature."""
    from .data.readers import read_source

    table = read_source(Path(path))
    if item not in table.column_names:
        raise SpecError(f"--items {path}: no column '{item}' (the item feature); found {table.column_names}")
    names = [f.name for f in spec.features if not f.per_behaviour and f.name in table.column_names]
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in names}


def ranking_metrics(ranks: np.ndarray, cutoffs: tuple[int, ...] = RANK_CUTOFFS) -> dict[str, float]:
    """HR@K, NDCG@K (one relevant item: 1 / log2(rank + 1) within K) and MRR of the positives' 1-based ranks."""
    ranks = np.asarray(ranks, dtype=np.float64)
    metrics: dict[str, float] = {}
    for k in cutoffs:
        hit = ranks <= k
        metrics[f"hr@{k}"] = float(np.mean(hit))
        metrics[f"ndcg@{k}"] = float(np.mean(np.where(hit, 1.0 / np.log2(ranks + 1.0), 0.0)))
    metrics["mrr"] = float(np.mean(1.0 / ranks))
    return metrics


def draw_negatives(rng: np.random.Generator, keys: np.ndarray, excluded: set[str], count: int) -> np.ndarray:
    """`count` distinct positions of `keys` (as text) whose key is not in `excluded`, uniformly at random: a draw of
    count + |excluded in the pool| without replacement, the excluded dropped, the first `count` kept."""
    excluded_in_pool = int(np.isin(keys, list(excluded)).sum())
    if len(keys) - excluded_in_pool < count:
        raise ValueError(f"only {len(keys) - excluded_in_pool} items are left to draw {count} negatives from")
    drawn = rng.choice(len(keys), size=min(len(keys), count + excluded_in_pool), replace=False)
    return drawn[~np.isin(keys[drawn], list(excluded))][:count]


def rank_positives(predictor: Any, columns: dict[str, Any], truth: np.ndarray, negatives: int, pool: ItemPool,
                   seed: int) -> np.ndarray:
    """The 1-based rank of each positive row's item among `negatives` sampled items, all scored by Predictor.rank."""
    rng = np.random.default_rng(seed)
    history = next(s.name for s in predictor.schema.sequences if s.shares == pool.item)
    keys = pool.columns[pool.item]
    key_text = keys.astype(str)
    per_candidate = [name for name in pool.columns if name in columns or name == pool.item]
    user_side = [name for name in predictor.request_names if name not in pool.columns and name in columns
                 and not (name in predictor.encoder.derived and predictor.encoder.derived[name][0] == pool.item)]
    ranks = []
    for row in np.flatnonzero(truth > 0.5):
        positive = row_value(columns[pool.item], row)
        excluded = {str(positive), *map(str, row_value(columns[history], row))}
        try:
            drawn = draw_negatives(rng, key_text, excluded, negatives)
        except ValueError as error:
            raise ValueError(f"--rank {negatives}: row {row}: {error} ({pool.source}, less the positive and the history)") from None
        candidates = {name: [row_value(columns[name], row), *pool.columns[name][drawn].tolist()] for name in per_candidate
                      if name in pool.columns}
        user_row = {name: row_value(columns[name], row) for name in user_side}
        ranking = predictor.rank(user_row, candidates)
        probabilities = np.empty(len(ranking.order), dtype=np.float64)
        probabilities[ranking.order] = ranking.probabilities
        ranks.append(1 + int(np.sum(probabilities[1:] >= probabilities[0])))
    return np.asarray(ranks, dtype=np.int64)


def evaluate_bundle(bundle: Path, data: Path, rank: int | None = None, items: Path | None = None, seed: int = 0,
                    plot: Path | None = None, providers: str = "cpu") -> dict[str, Any]:
    """Every metric of `data` scored by the bundle; with `rank`, the ranking evaluation; with `plot`, the
    reliability diagram written there."""
    scored = bundle_table(bundle, data, providers)
    probabilities, truth = scored.probabilities, scored.labels
    metrics = evaluate(truth, probabilities, scored.groups)
    result: dict[str, Any] = {"bundle": str(bundle), "data": str(data), **metrics}
    if plot is not None:
        from .files import write_atomic
        from .training.plots import plot_reliability

        write_atomic(Path(plot), lambda temporary: plot_reliability(truth, probabilities, temporary, f"{Path(bundle).name} on {Path(data).name}"))
    if rank is not None:
        if rank < 1:
            raise ValueError(f"--rank must be at least 1, not {rank}")
        pool = item_pool(scored.predictor, scored.spec, items)
        ranks = rank_positives(scored.predictor, scored.columns, truth, rank, pool, seed)
        if len(ranks) == 0:
            raise ValueError(f"{data}: no positive rows to rank")
        result["ranking"] = {"negatives": rank, "pool": pool.source, "seed": seed, "positives": int(len(ranks)),
                             **ranking_metrics(ranks)}
    return result
