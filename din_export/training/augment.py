"""Augmentation of behaviour sequences in training: each history is seen a little differently every epoch.

Histories are left-aligned, oldest first, padded with 0; the i-th entries of every sequence feature describe the
same behaviour, so one choice of positions applies to all of them. Two kinds:
- crop: with probability `rate`, keep only the most recent k behaviours of a history, k uniform in 1..length;
- mask: drop each behaviour independently with probability `rate`.
The kept behaviours stay in order and are moved back to the left, so a row is always a valid encoded history.
"""

from __future__ import annotations

import numpy as np

from ..config import AUGMENTATIONS


def keep_positions(kind: str, rate: float, lengths: np.ndarray, width: int, rng: np.random.Generator) -> np.ndarray | None:
    """A (rows, width) boolean array of the behaviours to keep, or None when nothing changes."""
    if kind == "none" or rate <= 0:
        return None
    steps = np.arange(width)[None, :]
    if kind == "mask":
        return (rng.random((len(lengths), width)) >= rate) & (steps < lengths[:, None])
    if kind == "crop":
        cropped = rng.random(len(lengths)) < rate
        kept = np.where(cropped, rng.integers(1, np.maximum(lengths, 1) + 1), lengths)
        return (steps >= (lengths - kept)[:, None]) & (steps < lengths[:, None])
    raise ValueError(f"augmentation must be one of {AUGMENTATIONS}, not {kind!r}")


def apply(histories: dict[str, np.ndarray], keep: np.ndarray) -> dict[str, np.ndarray]:
    """The histories with only the kept behaviours, moved to the left (stable, so order is preserved)."""
    order = np.argsort(~keep, axis=1, kind="stable")
    kept = np.take_along_axis(keep, order, axis=1)
    return {name: np.where(kept, np.take_along_axis(ids, order, axis=1), 0) for name, ids in histories.items()}
