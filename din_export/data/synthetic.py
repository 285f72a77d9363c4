"""The built-in default data: behaviour samples whose clicks depend on which past behaviours relate to the candidate.

Each user has a few latent interests over item categories; items belong to a category and, inside it, to a
topic. A sample's click probability rises with how many history items share the candidate's category and
whether one shares its topic, so attention over the history has something to find that the history's mean
pooled embedding blurs (a mean loses the count and dilutes a single relevant behaviour in a long history).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from ..config import SYNTHETIC_SAMPLES

SPEC_PATH = Path(__file__).parent / "synthetic.toml"


def _list_column(values: np.ndarray, offsets: np.ndarray) -> pa.ListArray:
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values))


def generate(num_samples: int = SYNTHETIC_SAMPLES, seed: int = 0, num_users: int | None = None, num_items: int = 3_000,
             num_categories: int = 60, topics_per_category: int = 5, max_history: int = 60,
             missing_price_rate: float = 0.05) -> pa.Table:
    """A deterministic sample table (same arguments, same table) with the columns of data/synthetic.toml."""
    if num_samples < 1:
        raise ValueError("num_samples must be at least 1")
    rng = np.random.default_rng(seed)
    num_users = num_users or max(10, num_samples // 50)

    item_category = rng.integers(0, num_categories, num_items)
    item_topic = item_category * topics_per_category + rng.integers(0, topics_per_category, num_items)
    item_price = np.round(rng.lognormal(3.0, 0.6, num_items), 2)
    items_by_category = [np.flatnonzero(item_category == c) for c in range(num_categories)]
    items_by_category = [items if len(items) else np.arange(num_items) for items in items_by_category]
    category_sizes = np.array([len(items) for items in items_by_category])
    category_starts = np.concatenate([[0], np.cumsum(category_sizes)[:-1]])
    items_sorted_by_category = np.concatenate(items_by_category)

    def item_of_category(categories: np.ndarray) -> np.ndarray:
        pick = (rng.random(len(categories)) * category_sizes[categories]).astype(np.int64)
        return items_sorted_by_category[category_starts[categories] + pick]

    interests = rng.integers(0, num_categories, (num_users, 3))

    user = rng.integers(0, num_users, num_samples)
    lengths = rng.integers(0, max_history + 1, num_samples)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    owner = np.repeat(np.arange(num_samples), lengths)
    from_interest = rng.random(len(owner)) < 0.8
    interest_category = interests[user[owner], rng.integers(0, 3, len(owner))]
    history = np.where(from_interest, item_of_category(interest_category), rng.integers(0, num_items, len(owner)))

    candidate_from_interest = rng.random(num_samples) < 0.5
    candidate = np.where(candidate_from_interest, item_of_category(interests[user, rng.integers(0, 3, num_samples)]),
                         rng.integers(0, num_items, num_samples))

    same_category = item_category[history] == item_category[candidate[owner]]
    same_topic = item_topic[history] == item_topic[candidate[owner]]
    category_matches = np.bincount(owner, weights=same_category, minlength=num_samples)
    topic_matches = np.bincount(owner, weights=same_topic, minlength=num_samples)
    price_z = (np.log(item_price[candidate]) - 3.0) / 0.6
    logit = -2.2 + 0.9 * np.log1p(category_matches) + 1.2 * (topic_matches > 0) - 0.3 * price_z
    label = (rng.random(num_samples) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int8)

    price = item_price[candidate].astype(np.float64)
    price_missing = rng.random(num_samples) < missing_price_rate
    return pa.table({
        "user_id": pa.array(user + 1),
        "item_id": pa.array(candidate + 1),
        "cate_id": pa.array(item_category[candidate] + 1),
        "price": pa.array(price, mask=price_missing),
        "hist_item_id": _list_column(history + 1, offsets),
        "hist_cate_id": _list_column(item_category[history] + 1, offsets),
        "label": pa.array(label),
    })


LOG_SPEC_PATH = Path(__file__).parent / "synthetic-log.toml"


def generate_log(num_events: int = 100_000, seed: int = 0, num_users: int | None = None, num_items: int = 5_000,
                 num_categories: int = 60, missing_rate: float = 0.05, zipf: float | None = None,
                 drift: float = 0.0) -> tuple[pa.Table, pa.Table, pa.Table]:
    """A behaviour log of positive events (user, item, timestamp, session_depth: a context value recorded with
    the event) with item and user attribute tables, deterministic for a seed. Users act mostly within a few
    interest categories; timestamps repeat (seconds), so ties occur; session_depth and attributes have gaps.
    With `zipf`, items are drawn by popularity instead: the item of rank r with weight r ** -zipf (a few items
    take most events, as in public logs). With `drift` in (0, 1), the catalogue slides over the 30 days: an event
    at fraction f of the time range draws its item from the items ranked f * drift .. f * drift + 1 - drift in
    index order (within its category too), so items appear and fade as in a live catalogue, and a model trained
    on early days meets new items later."""
    rng = np.random.default_rng(seed)
    num_users = num_users or max(10, num_events // 100)
    item_category = rng.integers(0, num_categories, num_items)
    order = np.argsort(item_category, kind="stable")
    sizes = np.bincount(item_category, minlength=num_categories)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    interests = rng.integers(0, num_categories, (num_users, 3))
    interests = np.where(sizes[interests] > 0, interests, item_category[0])

    user = rng.integers(0, num_users, num_events)
    category = interests[user, rng.integers(0, 3, num_events)]
    if drift:  # where in its catalogue an event draws: a window sliding with the event's time
        offset = rng.integers(0, 30 * 86_400, num_events)
        start, width = (offset / (30 * 86_400)) * drift, 1.0 - drift
        position = start + width * rng.random(num_events)
        in_interest = order[starts[category] + np.minimum((position * sizes[category]).astype(np.int64), np.maximum(sizes[category] - 1, 0))]
        anywhere = np.minimum(((start + width * rng.random(num_events)) * num_items).astype(np.int64), num_items - 1)
        within = rng.random(num_events) < 0.8
    else:  # the draws in the order of every release before `drift`, so a seed's log stays what it was
        in_interest = order[starts[category] + (rng.random(num_events) * sizes[category]).astype(np.int64)]
        within = rng.random(num_events) < 0.8
        anywhere = rng.integers(0, num_items, num_events)
    item = np.where(within, in_interest, anywhere)
    if zipf is not None:
        popularity = np.cumsum(np.arange(1, num_items + 1, dtype=np.float64) ** -zipf)
        item = rng.permutation(num_items)[np.searchsorted(popularity, rng.random(num_events) * popularity[-1], side="right")]
    timestamp = 1_600_000_000 + (offset if drift else rng.integers(0, 30 * 86_400, num_events))
    session_depth = rng.integers(1, 20, num_events).astype(np.float64)

    log = pa.table({
        "user_id": pa.array(user + 1),
        "item_id": pa.array(item + 1),
        "timestamp": pa.array(timestamp),
        "session_depth": pa.array(session_depth, mask=rng.random(num_events) < missing_rate),
    })
    items = pa.table({
        "item_id": pa.array(np.arange(1, num_items + 1)),
        "category": pa.array([f"c{c}" for c in item_category], mask=rng.random(num_items) < missing_rate),
        "price": pa.array(np.round(rng.lognormal(3.0, 0.6, num_items), 2), mask=rng.random(num_items) < missing_rate),
    })
    users = pa.table({
        "user_id": pa.array(np.arange(1, num_users + 1)),
        "age": pa.array(rng.integers(16, 70, num_users), mask=rng.random(num_users) < missing_rate),
        "gender": pa.array(rng.choice(["F", "M"], num_users)),
    })
    return log, items, users


IMPRESSIONS_SPEC_PATH = Path(__file__).parent / "synthetic-impressions.toml"


def generate_impressions(num_events: int = 500_000, seed: int = 0, num_users: int | None = None, num_items: int = 5_000,
                         num_categories: int = 60, click_rate: float = 0.05) -> tuple[pa.Table, pa.Table]:
    """An impression log as an ad or feed server records it (user, item, timestamp, click 0/1) and its item table,
    deterministic for a seed, with a click rate near `click_rate`. A third of the impressions show an item of one
    of the user's three interest categories, and those are clicked far more often; every item has a quality that
    moves its rate too. A user's clicks are the behaviours, so the history says which categories to expect."""
    rng = np.random.default_rng(seed)
    num_users = num_users or max(10, num_events // 200)
    item_category = rng.integers(0, num_categories, num_items)
    quality = rng.normal(0.0, 0.6, num_items)
    by_category = [np.flatnonzero(item_category == c) for c in range(num_categories)]
    by_category = [items if len(items) else np.arange(num_items) for items in by_category]
    interests = rng.integers(0, num_categories, (num_users, 3))

    user = rng.integers(0, num_users, num_events)
    shown_interest = rng.random(num_events) < 1 / 3
    category = interests[user, rng.integers(0, 3, num_events)]
    pick = rng.random(num_events)
    in_interest = np.array([by_category[c][int(p * len(by_category[c]))] for c, p in zip(category, pick, strict=True)])
    item = np.where(shown_interest, in_interest, rng.integers(0, num_items, num_events))
    interested = (item_category[item][:, None] == interests[user]).any(axis=1)
    logit = 2.4 * interested + quality[item]
    # the base rate found by bisection so that the expected click rate is `click_rate`
    low, high = -12.0, 4.0
    for _ in range(60):
        base = (low + high) / 2
        low, high = (base, high) if np.mean(1 / (1 + np.exp(-(base + logit)))) < click_rate else (low, base)
    click = (rng.random(num_events) < 1 / (1 + np.exp(-(base + logit)))).astype(np.int8)
    log = pa.table({
        "user_id": pa.array(user + 1),
        "item_id": pa.array(item + 1),
        "timestamp": pa.array(1_600_000_000 + rng.integers(0, 30 * 86_400, num_events)),
        "click": pa.array(click),
    })
    items = pa.table({"item_id": pa.array(np.arange(1, num_items + 1)), "category": pa.array([f"c{c}" for c in item_category])})
    return log, items
