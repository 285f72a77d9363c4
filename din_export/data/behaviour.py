"""The vectorised core of `prepare`: event order, histories, negative sampling and leakage-free splits.

Every function works on whole numpy arrays (integer user and item codes, float times); none loops over rows.
"""

from __future__ import annotations

import numpy as np

from .logs import SamplingConfig, SplitConfig

TRAIN, VALID, TEST = 0, 1, 2
MAX_DRAW_ROUNDS = 200


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


def sample_negatives(user: np.ndarray, item: np.ndarray, positives: np.ndarray, num_items: int,
                     config: SamplingConfig) -> tuple[np.ndarray, np.ndarray]:
    """`config.negatives` items per positive event that its user never interacts with anywhere in the log (so never
    an item the user touches later), uniformly or by popularity. Returns (event index per negative, item code)."""
    rng = np.random.default_rng(config.seed)
    touched = np.unique(user.astype(np.int64) * num_items + item)
    owners = np.repeat(positives, config.negatives)
    owner_users = user[owners].astype(np.int64)
    if config.strategy == "popularity":
        cumulative = np.cumsum(np.bincount(item, minlength=num_items) + 1.0)  # +1: unseen items keep a chance
        draw = lambda n: np.minimum(np.searchsorted(cumulative, rng.random(n) * cumulative[-1], side="right"), num_items - 1)  # noqa: E731
    else:
        draw = lambda n: rng.integers(0, num_items, n)  # noqa: E731
    drawn = draw(len(owners))
    for _ in range(MAX_DRAW_ROUNDS):
        key = owner_users * num_items + drawn
        position = np.minimum(np.searchsorted(touched, key), len(touched) - 1)
        clash = touched[position] == key
        if not clash.any():
            return owners, drawn
        drawn[clash] = draw(int(clash.sum()))
    stuck = np.unique(owner_users[clash])
    raise ValueError(f"cannot draw negatives for {len(stuck)} user(s) who touched (almost) every item, e.g. user code {stuck[0]}")


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

