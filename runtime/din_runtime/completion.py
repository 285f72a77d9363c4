"""A request's user side completed from the behaviour store: the histories a request leaves out (and the user's
attributes the store holds) are filled for each row's user, as of a time, exactly as `prepare` builds a sample at
that time (the most recent `max_len` behaviours strictly before it), with the behaviours' stored times where the
model reads them. A request that sends a history is left as it is. The store is read once per (user, time) in the
request, never per candidate or per row of that user.

The time a row is scored at (its behaviours' ages are taken there): the row's own time (`event_time`) where it
sends one, else `as_of`, else now by the server's clock in Unix seconds (a log kept in other units sends one of
the two).
"""

from __future__ import annotations

import time as clock
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .errors import InputError
from .schema import FeatureSchema
from .stores import BehaviourStore, StoreError, StoreFields


def item_feature(schema: FeatureSchema) -> str:
    """The categorical the behaviours share that is no attribute of another: what a candidate is."""
    attributes = {f.name for f in schema.categoricals if f.attribute_of is not None}
    return next(name for name in schema.shared if name not in attributes)


def fields_of(schema: FeatureSchema, user: str) -> StoreFields:
    """What a store must hold to serve this schema: its user and item, and the values of the shared features its
    histories need that the bundle cannot look up from the item (attributes that are not `attribute_of` it)."""
    item = item_feature(schema)
    derived = schema.derivations()
    values = tuple(dict.fromkeys(s.shares for s in schema.sequences if s.shares != item and s.name not in derived))
    return StoreFields(user, item, values)


def check_fields(schema: FeatureSchema, user: str, fields: StoreFields) -> None:
    """The store holds what this schema reads: the same user and item features, every history's values."""
    needed = fields_of(schema, user)
    if (needed.user, needed.item) != (fields.user, fields.item):
        raise StoreError(f"the store holds behaviours of '{fields.user}' and '{fields.item}'; this model's user and item are "
                         f"'{needed.user}' and '{needed.item}'")
    lacking = [name for name in needed.behaviour_values if name not in fields.behaviour_values]
    if lacking:
        raise StoreError(f"the store does not hold {lacking} per behaviour, which this model's histories need")


def _times(as_of: Any, rows: int) -> list[float | None]:
    if as_of is None:
        return [None] * rows
    if np.isscalar(as_of):
        as_of = [as_of] * rows
    times = list(as_of)
    if len(times) != rows:
        raise InputError("as_of", f"gives {len(times)} times for {rows} rows (one time, or one per row)")
    bad = next((t for t in times if isinstance(t, bool) or not isinstance(t, (int, float, np.number)) or not np.isfinite(t)), None)
    if bad is not None:
        raise InputError("as_of", f"must be a finite number (in the log's time units), not {bad!r}")
    return [float(t) for t in times]


def complete(columns: Mapping[str, Any], schema: FeatureSchema, store: BehaviourStore, as_of: Any = None) -> dict[str, Any]:
    """`columns` with each history it lacks, and each user attribute the store holds that it lacks, filled from
    the store for each row's user. `as_of`: one time for every row, one per row, or None (everything stored)."""
    fields = store.fields
    derived = schema.derivations()
    histories = [s for s in schema.sequences if s.name not in columns and s.name not in derived]  # the encoder derives the rest
    ages = [t for t in schema.times if t.name not in columns and histories]  # times come with the histories they belong to
    attributes = [name for name in fields.user_values if name in schema.names and name not in columns]
    if not histories and not ages and not attributes:
        return dict(columns)
    if fields.user not in columns:
        raise InputError(fields.user, "missing from the input: the histories are filled from the store by the user")
    users = list(columns[fields.user])
    row_time = schema.times[0].at if schema.times else None
    if as_of is None and row_time is not None and row_time in columns:
        as_of = list(columns[row_time])  # a row's own time is when its history ends
    times = _times(as_of, len(users))
    pairs = list(dict.fromkeys((str(u), t) for u, t in zip(users, times, strict=True))) if histories or ages else []  # one read per user and time
    distinct = list(dict.fromkeys(str(u) for u in users)) if attributes else []
    longest = schema.max_len if ages else max((s.max_len for s in histories), default=0)
    read, held = store.user_side([u for u, _ in pairs], [t for _, t in pairs], longest, distinct)
    found = dict(zip(pairs, read, strict=True))
    filled = dict(columns)
    for sequence in histories:
        kept = sequence.max_len
        if sequence.shares == fields.item:
            filled[sequence.name] = [found[str(u), t].items[-kept:] for u, t in zip(users, times, strict=True)]
        elif sequence.shares in fields.behaviour_values:
            filled[sequence.name] = [found[str(u), t].values[sequence.shares][-kept:] for u, t in zip(users, times, strict=True)]
        else:
            raise InputError(sequence.name, "missing from the input, and the store does not hold its values")
    for feature in ages:  # each behaviour's time as stored; the row's own time: its own, else as_of, else now
        filled[feature.name] = [found[str(u), t].times[-schema.max_len:] for u, t in zip(users, times, strict=True)]
        now = clock.time()
        filled.setdefault(feature.at, [now if t is None else t for t in times])
    by_user = dict(zip(distinct, held, strict=True))
    for name in attributes:
        filled[name] = [by_user[str(u)].get(name) for u in users]
    return filled


def complete_user(user_row: Mapping[str, Any], schema: FeatureSchema, store: BehaviourStore, as_of: float | None,
                  per_candidate: Sequence[str] = ()) -> dict[str, Any]:
    """One user's row (as `Predictor.rank` takes it) completed from the store: one read for the user."""
    row = {name: [value] for name, value in user_row.items()}
    filled = complete(row, schema, store, as_of)
    return {name: values[0] for name, values in filled.items() if name not in per_candidate}
