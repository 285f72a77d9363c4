"""Two bundles scored on the same rows through din_runtime (the code that will serve them), their metrics side by
side, and the AUC difference with a 95% interval from a paired bootstrap over users: the gate a rollout script
asks before a new model replaces the old one (`din-export compare`).

Why a bootstrap over users rather than DeLong's interval: a user's rows are not independent of each other (one
history, one taste, often one candidate list), and DeLong's variance assumes independent rows, so it comes out too
narrow on recommendation data. Resampling whole users keeps each user's rows together, and pairing (the same
resampled users for both models) cancels the variation both models share, which is most of it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .config import COMPARE_MAX_AUC_DROP, COMPARE_MIN_RESAMPLES, COMPARE_RESAMPLES
from .errors import SpecError
from .scoring import bundle_table
from .training.metrics import evaluate

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Comparison:
    """The outcome of comparing NEW against OLD on one table."""

    rows: int
    users: int  # the units the bootstrap resampled (rows, where the spec names no user column)
    old: dict[str, Any]
    new: dict[str, Any]
    auc_difference: float  # NEW - OLD
    interval: tuple[float, float]  # the 95% interval of the difference
    resamples: int
    max_auc_drop: float

    @property
    def worse(self) -> bool:
        """NEW is worse than OLD by more than max_auc_drop with 95% confidence: the whole interval lies below -drop."""
        return self.interval[1] < -self.max_auc_drop

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "interval": list(self.interval), "worse": self.worse, "confidence": CONFIDENCE}


class TiedOrder:
    """One model's scores sorted once, with their tie groups, so a weighted AUC of any resample is two bincounts."""

    def __init__(self, scores: np.ndarray, labels: np.ndarray) -> None:
        self.order = np.argsort(scores, kind="mergesort")
        ordered = scores[self.order]
        self.tie_group = np.concatenate([[0], np.cumsum(ordered[1:] != ordered[:-1])]).astype(np.int64)
        self.positive = labels[self.order] > 0.5

    def auc(self, weights: np.ndarray) -> float:
        """AUC with each row counted `weights` times (ties count half), over rows in the original order."""
        w = weights[self.order]
        positives = np.bincount(self.tie_group, weights=np.where(self.positive, w, 0.0))
        negatives = np.bincount(self.tie_group, weights=np.where(self.positive, 0.0, w))
        below = np.cumsum(negatives) - negatives
        total_positive, total_negative = positives.sum(), negatives.sum()
        if total_positive == 0 or total_negative == 0:
            return float("nan")
        return float((positives * (below + negatives / 2)).sum() / (total_positive * total_negative))


def paired_bootstrap(old: np.ndarray, new: np.ndarray, truth: np.ndarray, units: np.ndarray, resamples: int,
                     seed: int) -> tuple[float, float]:
    """The 95% percentile interval of AUC(new) - AUC(old) over resamples of whole units (users), the same draw for
    both models."""
    old_order, new_order = TiedOrder(old, truth), TiedOrder(new, truth)
    count = int(units.max()) + 1
    rng = np.random.default_rng(seed)
    differences = []
    for _ in range(resamples):
        multiplicity = np.bincount(rng.integers(0, count, count), minlength=count).astype(np.float64)
        weights = multiplicity[units]
        differences.append(new_order.auc(weights) - old_order.auc(weights))
    finite = np.asarray(differences)[np.isfinite(differences)]
    if len(finite) == 0:
        raise ValueError("no resample held both labels: the table needs clicks and non-clicks to compare AUC")
    tail = (1 - CONFIDENCE) / 2
    low, high = np.quantile(finite, [tail, 1 - tail])
    return float(low), float(high)


def compare(old: Path, new: Path, data: Path, max_auc_drop: float = COMPARE_MAX_AUC_DROP, resamples: int = COMPARE_RESAMPLES,
            seed: int = 0, providers: str = "cpu") -> Comparison:
    """Score `data` with both bundles and compare them (see the module's docstring for the interval)."""
    if resamples < COMPARE_MIN_RESAMPLES:
        raise ValueError(f"resamples must be at least {COMPARE_MIN_RESAMPLES} for a 95% interval, not {resamples}")
    first = bundle_table(old, data, providers)
    second = bundle_table(new, first.table, providers)  # the table read once, with the old bundle's spec
    old_p, new_p, truth, groups = first.probabilities, second.probabilities, first.labels, first.groups
    if first.spec.label != second.spec.label or not np.array_equal(truth, second.labels):
        raise SpecError(f"the two bundles read different labels ('{first.spec.label}' and '{second.spec.label}'); compare models of one label")
    units = groups if groups is not None else np.arange(len(truth))
    interval = paired_bootstrap(old_p, new_p, truth, units, resamples, seed)
    old_metrics, new_metrics = evaluate(truth, old_p, groups), evaluate(truth, new_p, groups)
    if old_metrics["auc"] is None or new_metrics["auc"] is None:
        raise ValueError(f"{data}: the table holds one label only, so AUC is undefined")
    return Comparison(len(truth), int(units.max()) + 1 if len(units) else 0, old_metrics, new_metrics,
                      new_metrics["auc"] - old_metrics["auc"], interval, resamples, max_auc_drop)
