"""`din-export events load`: a behaviour log into a behaviour store, read as `prepare` reads it (the same recipe,
columns and rules: data/rules.py, DuckDB's out-of-core sort, prepare's blocks of whole users), so the histories
the server fills from the store are the ones training saw.

Each block's behaviours (a labelled log's positives; every event of a log of positives), before `--until` where
given, each user's most recent `keep` of them, go to the store as columns in one transaction per block; the users
table's attributes the recipe reads go in once. Memory is DuckDB's limit plus one block, as for `prepare`.
"""

from __future__ import annotations

import tempfile
import time as clock
from pathlib import Path
from typing import Any

import numpy as np

from din_runtime.stores import KEEP, StoreFields, open_store

from .config import PREPARE_BLOCK_EVENTS, PREPARE_MEMORY_LIMIT
from .data.recipe import LogConfig
from .data.rules import Sources, check_sources, log_columns, read_recipe, training_spec
from .data.spec import Spec


def store_fields(spec: Spec, config: LogConfig) -> StoreFields:
    """What the store keeps for a recipe, by the training spec's feature names (din_runtime.completion.fields_of
    asks the same of a bundle): the user and the item, the values of shared features a bundle cannot look up from
    the item, and the users table's features."""
    training = training_spec(spec, config)
    item = next(f.name for f in spec.of_kind("categorical") if f.source == "log" and f.column == config.item)
    by_name = {f.name: f for f in training.features}
    values = tuple(dict.fromkeys(s.shares for s in training.of_kind("sequence") if s.shares != item and by_name[s.shares].attribute_of is None))
    users = tuple(f.name for f in spec.features if not f.per_behaviour and f.source == "users")
    assert training.user is not None, "a recipe names its user feature"
    return StoreFields(training.user, item, values, users)


def _most_recent(user_codes: np.ndarray, keep: int) -> np.ndarray:
    """Of behaviours sorted by user and time, which are among their user's most recent `keep`."""
    starts = np.flatnonzero(np.r_[True, user_codes[1:] != user_codes[:-1]])
    ends = np.r_[starts[1:], len(user_codes)]
    from_end = np.repeat(ends, ends - starts) - np.arange(len(user_codes))
    return from_end <= keep


def load_log(recipe: Path, sources: Sources, url: str, until: float | str | None = None, keep: int = KEEP,
             memory_limit: str = PREPARE_MEMORY_LIMIT, block_events: int = PREPARE_BLOCK_EVENTS) -> dict[str, Any]:
    """Load the log's behaviours (and the users table's attributes) into the store at `url`; returns a summary."""
    from .data.prepare import EventBlock, LogContext
    from .data.scan import LogScan

    started = clock.perf_counter()
    spec, config = read_recipe(recipe)
    check_sources(spec, config, sources)
    fields = store_fields(spec, config)
    store = open_store(url, fields, keep)
    stored = events = 0
    sequence_of = {s.shares: s for s in spec.of_kind("sequence")}  # a sequence whose histories hold each value
    try:
        with tempfile.TemporaryDirectory(prefix="din-export-events-") as spill:
            scan = LogScan(sources.log, config.user, config.item, config.time, log_columns(spec, config), Path(spill), memory_limit,
                           label=config.label)
            try:
                context = LogContext(spec, config, sources, scan)
                cutoff = None if until is None else scan.time_number(until)
                for log in scan.blocks(block_events):
                    block = EventBlock(context, log, 0, 0)
                    events += len(block.user)
                    chosen = block.behaviours if cutoff is None else block.behaviours[block.time[block.behaviours] < cutoff]
                    recent = _most_recent(block.user[chosen], keep)
                    rows = chosen[recent]
                    per_row: list[dict[str, Any] | None] = [None] * len(rows)
                    if fields.behaviour_values:  # each chosen behaviour's values, by its place among the block's behaviours
                        values = {name: block.history_values(sequence_of[name]).to_pylist() for name in fields.behaviour_values}
                        positions = np.flatnonzero(np.isin(block.behaviours, rows)).tolist()
                        per_row = [{name: values[name][p] for name in fields.behaviour_values} for p in positions]
                    stored += store.load(context.users.keys[block.user[rows]].tolist(), block.time[rows].tolist(),
                                         context.items.keys[block.item[rows]].tolist(), per_row)
                users = _user_values(context, fields)
            finally:
                scan.close()
        if users:
            store.set_users(users)
        held = store.count()
    finally:
        store.close()
    seconds = clock.perf_counter() - started
    return {"events": events, "behaviours_stored": stored, "users_with_attributes": len(users), "store_behaviours": held,
            "seconds": round(seconds, 3), "events_per_second": round(events / seconds) if seconds else None, "store": url,
            "until": until, "keep": keep}


def _user_values(context: Any, fields: StoreFields) -> dict[Any, dict[str, Any]]:
    """Every user of the log with the users table's values of the recipe's user features (None where missing)."""
    if not fields.user_values:
        return {}
    codes = np.arange(len(context.users.keys))
    columns = {name: context.users.attribute(context.attribute_values[name], codes).to_pylist() for name in fields.user_values}
    return {user: {name: columns[name][i] for name in fields.user_values} for i, user in enumerate(context.users.keys.tolist())}
