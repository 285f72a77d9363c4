"""The behaviour store: each user's behaviours (and attributes) held server-side, fed by events, read by requests
that name the user alone. One interface, `BehaviourStore`, and its backends by URL (`open_store`):
`sqlite:///PATH` (embedded, durable, the default for one machine; the standard library's sqlite3 in WAL mode) and
`redis://HOST:PORT/DB` (shared by several server replicas; the `redis` extra).

What is kept follows `din-export prepare`'s rules exactly, so a history served from the store is the history
training saw (tests/test_store.py checks every MovieLens-100k test sample): behaviours only (a labelled log's
positives), in time order with ties in arrival order, the most recent `keep` per user, each with its time and the
values its histories hold (the item; an attribute only where the bundle cannot look it up from the item); a
history as of time T holds the behaviours strictly before T.
"""

from __future__ import annotations

from .base import ID, KEEP, TIME, BehaviourStore, Event, History, StoreError, StoreFields, checked_events

__all__ = ["ID", "KEEP", "TIME", "BehaviourStore", "Event", "History", "StoreError", "StoreFields", "checked_events", "open_store"]


def open_store(url: str, fields: StoreFields | None = None, keep: int = KEEP, new_fields: StoreFields | None = None) -> BehaviourStore:
    """The store at `url` (`sqlite:///PATH`, or `redis://HOST:PORT/DB` with the `redis` extra). `fields`: what it
    must hold (a store holding other fields is refused in one line: its bundles would read other features);
    `new_fields`: what a new store holds, where `fields` is not given (an existing store keeps its own)."""
    if keep < 1:
        raise ValueError(f"keep must be at least 1, not {keep}")
    if url.startswith("sqlite:///"):
        from .sqlite import SQLiteStore

        return SQLiteStore(url.removeprefix("sqlite:///"), fields, keep, new_fields)
    if url.startswith("redis://"):
        from .redis import RedisStore

        return RedisStore(url, fields, keep, new_fields)
    raise StoreError(f"store URL {url!r}: expected sqlite:///PATH or redis://HOST:PORT/DB")
