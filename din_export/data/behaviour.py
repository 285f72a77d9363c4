"""The vectorised core of `prepare`: event order, histories, negative sampling and leakage-free splits.

Every function works on whole numpy arrays (integer user and item codes, float times); none loops over rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .recipe import SamplingConfig, SplitConfig

TRAIN, VALID, TEST = 0, 1, 2
MAX_DRAW_ROUNDS = 200
DOWNSAMPLE_ROUND = 7919  # the hash round of the non-click downsampling: apart from the negatives' rounds 0..200


def event_order(user: np.ndarray, time: np.ndarray) -> np.ndarray:
    """Indices that sort events by user, then time; ties keep their order in the log (stable, deterministic)."""
    return np.lexsort((np.arange(len(user)), time, user))


def group_starts(user: np.ndarray) -> np.ndarray:
    """For events sorted by user: the index of the first event of each event's user."""
    new_group = np.ones(len(user), dtype=bool)
    new_group[1:] = user[1:] != user[:-1]
    return np.maximum.accumulate(np.where(new_group, np.arange(len(user)), 0))


def history_bounds(user: np.ndarray, time: np.ndarray, behaviour: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For events sorted by (user, time): the range [first, end) in the sorted behaviour events (where
    `behaviour` is True) of the same user's behaviours strictly earlier in time. Events at the same time as the
    sample are never in its history, so no history holds anything at or after its own time."""
    time_rank = np.unique(time, return_inverse=True)[1].astype(np.int64)
    stride = int(time_rank.max(initial=0)) + 2
    key = user.astype(np.int64) * stride + time_rank
    behaviour_key = key[behaviour]
    end = np.searchsorted(behaviour_key, key, side="left")
    first = np.searchsorted(behaviour_key, user.astype(np.int64) * stride, side="left")
    return first, end


def gather_recent(values: np.ndarray, first: np.ndarray, end: np.ndarray, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """The last max_len entries of values[first:end] per row, flattened: (flat indices into values, offsets)."""
    start = np.maximum(first, end - max_len)
    lengths = end - start
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.repeat(start - offsets[:-1], lengths) + np.arange(offsets[-1])
    return flat, offsets


def forward_fill(values: np.ndarray, user: np.ndarray) -> np.ndarray:
    """Missing values take the user's previous value (events sorted by user and time); a user's leading gaps stay NaN."""
    present = ~np.isnan(values)
    last = np.maximum.accumulate(np.where(present, np.arange(len(values)), -1))
    usable = last >= group_starts(user)
    return np.where(usable, values[np.maximum(last, 0)], np.nan)


def hashed_uniform(keys: np.ndarray, seed: int, round_: int) -> np.ndarray:
    """Uniform floats in [0, 1), one per key, from (seed, key, round) by the SplitMix64 finaliser: a negative's
    draw depends on its own index in the whole log only, so the log may be processed in blocks of any size."""
    with np.errstate(over="ignore"):
        z = keys.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64((seed * 0x2545F491 + round_ * 0x632BE5AB) % 2**64)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


def kept_events(user: np.ndarray, label: np.ndarray, split: np.ndarray, keep_negatives: float, seed: int) -> np.ndarray:
    """Which events (sorted by user and time) stay samples under negative downsampling: every click, every event
    outside the training split, and each training non-click with probability keep_negatives, drawn by the hash of
    (user code, the event's place among the user's events), so the same events stay whatever the blocks."""
    if keep_negatives >= 1.0:
        return np.ones(len(user), dtype=bool)
    within = (np.arange(len(user)) - group_starts(user)).astype(np.uint64)
    keys = (user.astype(np.uint64) << np.uint64(32)) | within
    dropped = (label == 0) & (split == TRAIN) & (hashed_uniform(keys, seed, DOWNSAMPLE_ROUND) >= keep_negatives)
    return ~dropped


@dataclass(frozen=True)
class NegativeDraw:
    """How negatives are drawn over the whole log: `negatives` per positive, items uniform or weighted by their
    number of events (+1, so unseen items keep a chance), deterministic under `seed`."""

    num_items: int
    negatives: int
    seed: int
    cumulative: np.ndarray | None = None  # cumulative item weights; None: uniform

    @classmethod
    def of(cls, config: SamplingConfig, item_events: np.ndarray) -> NegativeDraw:
        weights = np.cumsum(item_events + 1.0) if config.strategy == "popularity" else None
        return cls(len(item_events), config.negatives, config.seed, weights)

    def items(self, keys: np.ndarray, round_: int) -> np.ndarray:
        uniform = hashed_uniform(keys, self.seed, round_)
        if self.cumulative is None:
            return np.minimum((uniform * self.num_items).astype(np.int64), self.num_items - 1)
        return np.minimum(np.searchsorted(self.cumulative, uniform * self.cumulative[-1], side="right"), self.num_items - 1)


def sample_negatives(user: np.ndarray, item: np.ndarray, positives: np.ndarray, draw: NegativeDraw,
                     first_key: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`draw.negatives` items per positive event that its user never interacts with anywhere in `user`/`item`
    (all of each user's events: so never an item the user touches later). Negative j of the i-th positive has key
    first_key + i * negatives + j. Returns (event index per negative, item code)."""
    touched = np.unique(user.astype(np.int64) * draw.num_items + item)
    owners = np.repeat(positives, draw.negatives)
    owner_users = user[owners].astype(np.int64)
    keys = first_key + np.arange(len(owners), dtype=np.int64)
    drawn = draw.items(keys, 0)
    for round_ in range(1, MAX_DRAW_ROUNDS + 1):
        key = owner_users * draw.num_items + drawn
        position = np.minimum(np.searchsorted(touched, key), len(touched) - 1)
        clash = touched[position] == key
        if not clash.any():
            return owners, drawn
        drawn[clash] = draw.items(keys[clash], round_)
    stuck = np.unique(owner_users[clash])
    raise ValueError(f"cannot draw negatives for {len(stuck)} user(s) who touched (almost) every item, e.g. user code {stuck[0]}")


def numpy_quantile(sorted_pair: tuple[float, float], count: int, q: float) -> float:
    """numpy's default (linear) quantile of `count` values from the two order statistics it interpolates (the
    floor((count - 1) q)-th and the next), computed as numpy computes it (equal to np.quantile bit for bit, tested):
    so an engine that finds the two out of core cuts the time range exactly where numpy would."""
    position = (count - 1) * q
    below = math.floor(position)
    gamma = position - below
    a, b = sorted_pair
    difference = b - a
    return float(b - difference * (1 - gamma)) if gamma >= 0.5 else float(a + difference * gamma)


def assign_splits(user: np.ndarray, time: np.ndarray, config: SplitConfig) -> np.ndarray:
    """TRAIN, VALID or TEST per event (sorted by user and time), without looking at anything after the event."""
    if config.mode == "global_time":
        test_from = config.test_from if config.test_from is not None else np.quantile(time, 1 - config.test)
        valid_from = config.valid_from if config.valid_from is not None else np.quantile(time, 1 - config.test - config.valid)
        return np.where(time >= test_from, TEST, np.where(time >= valid_from, VALID, TRAIN)).astype(np.int8)
    starts = group_starts(user)
    size = np.bincount(user, minlength=int(user.max(initial=0)) + 1)[user]
    from_end = size - 1 - (np.arange(len(user)) - starts)

    def amount(value: float) -> np.ndarray:
        return np.full(len(user), value) if isinstance(value, int) else np.floor(value * size)

    n_test, n_valid = amount(config.test), amount(config.valid)
    return np.where(from_end < n_test, TEST, np.where(from_end < n_test + n_valid, VALID, TRAIN)).astype(np.int8)

