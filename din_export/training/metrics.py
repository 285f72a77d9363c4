"""Evaluation metrics: AUC (tie-aware), GAUC (per-user AUC weighted by the user's rows), accuracy, logloss, and
calibration (expected calibration error over equal-mass bins, mean predicted over observed click rate)."""

from __future__ import annotations

import numpy as np

from ..config import CALIBRATION_BINS


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve by the rank-sum formula, with tied scores sharing their average rank."""
    labels = np.asarray(labels) > 0.5
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    _, inverse, counts = np.unique(np.asarray(scores)[order], return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2.0
    ranks = np.empty(len(order))
    ranks[order] = average_rank[inverse]
    return float((ranks[labels].sum() - positives * (positives + 1) / 2.0) / (positives * negatives))


# Below this many users holding both labels, GAUC is an average of a handful of per-user AUCs (a 200-row table
# gave 1.0 from one user) and is reported as undefined, with the count beside it.
MIN_GAUC_USERS = 10


def gauc(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> tuple[float, int]:
    """Per-group AUC weighted by the group's rows, over groups that hold both classes (as in the DIN paper), and
    how many groups it averaged over."""
    order = np.argsort(groups, kind="mergesort")
    bounds = np.flatnonzero(np.diff(groups[order])) + 1
    total, weight, counted = 0.0, 0, 0
    for rows in np.split(order, bounds):
        value = auc(labels[rows], scores[rows])
        if value == value:
            total += value * len(rows)
            weight += len(rows)
            counted += 1
    return (total / weight if weight else float("nan")), counted


def logloss(labels: np.ndarray, probabilities: np.ndarray, eps: float = 1e-7) -> float:
    p = np.clip(np.asarray(probabilities, dtype=np.float64), eps, 1 - eps)
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))


def accuracy(labels: np.ndarray, probabilities: np.ndarray) -> float:
    return float(np.mean((probabilities >= 0.5) == (labels > 0.5)))


def reliability(labels: np.ndarray, probabilities: np.ndarray, bins: int = CALIBRATION_BINS) -> list[dict[str, float]]:
    """Rows sorted by probability and cut into `bins` bins of equal size (equal mass: each bin's observed rate is
    as well measured as the next, where equal-width bins leave most bins of a 5% click rate empty): per bin its
    mean predicted probability, observed click rate and rows."""
    order = np.argsort(np.asarray(probabilities), kind="stable")
    return [{"predicted": float(np.mean(probabilities[rows])), "observed": float(np.mean(labels[rows] > 0.5)), "rows": int(len(rows))}
            for rows in np.array_split(order, min(bins, len(order))) if len(rows)]


def expected_calibration_error(labels: np.ndarray, probabilities: np.ndarray, bins: int = CALIBRATION_BINS) -> float:
    """The rows-weighted mean |predicted - observed| over the equal-mass bins of `reliability`."""
    table = reliability(labels, probabilities, bins)
    total = sum(b["rows"] for b in table)
    return float(sum(b["rows"] * abs(b["predicted"] - b["observed"]) for b in table) / total) if total else float("nan")


def calibration_ratio(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean predicted probability over the observed click rate: 1 for a model right in level."""
    observed = float(np.mean(np.asarray(labels) > 0.5)) if len(labels) else 0.0
    return float(np.mean(probabilities)) / observed if observed > 0 else float("nan")


def evaluate(labels: np.ndarray, probabilities: np.ndarray, groups: np.ndarray | None) -> dict[str, float | None]:
    metrics = {
        "auc": auc(labels, probabilities),
        "accuracy": accuracy(labels, probabilities),
        "logloss": logloss(labels, probabilities),
        "ece": expected_calibration_error(labels, probabilities),
        "calibration_ratio": calibration_ratio(labels, probabilities),
        "rows": int(len(labels)),
    }
    if groups is not None:
        value, users = gauc(labels, probabilities, groups)
        metrics["gauc"] = value if users >= MIN_GAUC_USERS else float("nan")
        metrics["gauc_users"] = users
    return {k: None if v != v else v for k, v in metrics.items()}  # undefined (one class only) is None, not NaN
