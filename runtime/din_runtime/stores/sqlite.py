"""The behaviour store in one SQLite file (the standard library's sqlite3, WAL mode): embedded, nothing to run,
durable (every add is committed, with a full sync, before it is acknowledged).

Tables: `behaviours` (arrival order is the row id, so ties in time keep it; an index on user, time and row id
serves every history), `users` (each user's attribute values as JSON), `meta` (the store's fields). Users are
keyed by their text form, so 17 and "17" are one user, as the encoder takes them; items keep the type they came
with. One connection, guarded by a lock: a history is one indexed range read.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .base import Event, History, StoreError, StoreFields

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS behaviours (seq INTEGER PRIMARY KEY, user TEXT NOT NULL, time REAL NOT NULL, id TEXT, item NOT NULL, vals TEXT);
CREATE UNIQUE INDEX IF NOT EXISTS behaviours_by_id ON behaviours(id) WHERE id IS NOT NULL;
CREATE INDEX IF NOT EXISTS behaviours_by_user ON behaviours(user, time, seq);
CREATE TABLE IF NOT EXISTS users (user TEXT PRIMARY KEY, vals TEXT NOT NULL);
"""
INSERT = "INSERT INTO behaviours (user, time, id, item, vals) VALUES (?, ?, ?, ?, ?)"
RECENT = "SELECT item, time, vals FROM behaviours WHERE user = ? AND time < ? ORDER BY time DESC, seq DESC LIMIT ?"
TRIM = ("DELETE FROM behaviours WHERE seq IN (SELECT seq FROM behaviours WHERE user = ? ORDER BY time DESC, seq DESC "
        "LIMIT -1 OFFSET ?)")


class SQLiteStore:
    """A BehaviourStore in one SQLite file."""

    def __init__(self, path: str | Path, fields: StoreFields | None, keep: int, new_fields: StoreFields | None = None) -> None:
        self.path, self.keep = Path(path), keep
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.connection = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
            self.connection.execute("PRAGMA journal_mode=WAL")
            self.connection.execute("PRAGMA synchronous=FULL")
            self.connection.executescript(SCHEMA)
        except (sqlite3.Error, OSError) as error:
            raise StoreError(f"sqlite store {self.path}: cannot be opened ({error})") from None
        self.lock = threading.Lock()
        self.fields = self._fields(fields, new_fields)

    def _fields(self, fields: StoreFields | None, new_fields: StoreFields | None) -> StoreFields:
        row = self.connection.execute("SELECT value FROM meta WHERE key = 'fields'").fetchone()
        if row is None:
            fields = fields or new_fields
            if fields is None:
                raise StoreError(f"sqlite store {self.path} is empty and no fields were given (the bundle's user and item features)")
            self.connection.execute("INSERT INTO meta VALUES ('fields', ?)", (json.dumps(fields.to_dict()),))
            return fields
        stored = StoreFields.from_dict(json.loads(row[0]))
        if fields is not None and fields != stored:
            raise StoreError(f"sqlite store {self.path} holds {stored.to_dict()}, not {fields.to_dict()}: another model's behaviours")
        return stored

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self.lock:
            try:
                self.connection.execute("BEGIN IMMEDIATE")
                try:
                    yield self.connection
                except BaseException:
                    self.connection.execute("ROLLBACK")
                    raise
                self.connection.execute("COMMIT")
            except sqlite3.Error as error:
                raise StoreError(f"sqlite store {self.path}: {error}") from None

    def _rows(self, events: Sequence[Event], with_ids: bool) -> list[tuple[Any, ...]]:
        return [(str(e.user), e.time, e.id if with_ids else None, e.item, json.dumps(e.values) if e.values else None) for e in events]

    def add(self, events: Sequence[Event]) -> tuple[int, int]:
        with self._transaction() as connection:
            ids = [e.id for e in events]
            known: set[str] = set()
            for start in range(0, len(ids), 500):  # SQLite's bound on host parameters
                part = ids[start:start + 500]
                known |= {row[0] for row in connection.execute(f"SELECT id FROM behaviours WHERE id IN ({','.join('?' * len(part))})", part)}
            fresh = [e for e in events if e.id not in known]
            connection.executemany(INSERT, self._rows(fresh, with_ids=True))
            for user in {str(e.user) for e in fresh}:
                connection.execute(TRIM, (user, self.keep))
        return len(fresh), len(events) - len(fresh)

    def load(self, users: Sequence[Any], times: Sequence[float], items: Sequence[Any], values: Sequence[dict[str, Any] | None]) -> int:
        rows = [(str(user), time, None, item, json.dumps(value) if value else None)
                for user, time, item, value in zip(users, times, items, values, strict=True)]
        with self._transaction() as connection:
            connection.executemany(INSERT, rows)
        return len(rows)

    def set_users(self, users: Mapping[Any, Mapping[str, Any]]) -> None:
        with self._transaction() as connection:
            connection.executemany("INSERT OR REPLACE INTO users VALUES (?, ?)",
                                   [(str(user), json.dumps(dict(values))) for user, values in users.items()])

    def histories(self, users: Sequence[Any], as_of: Sequence[float | None], limit: int) -> list[History]:
        found = []
        with self.lock:
            try:
                for user, time in zip(users, as_of, strict=True):
                    rows = self.connection.execute(RECENT, (str(user), float("inf") if time is None else time, limit)).fetchall()[::-1]
                    values = [json.loads(row[2]) if row[2] else {} for row in rows]
                    found.append(History([row[0] for row in rows], [row[1] for row in rows],
                                         {name: [v.get(name) for v in values] for name in self.fields.behaviour_values}))
            except sqlite3.Error as error:
                raise StoreError(f"sqlite store {self.path}: {error}") from None
        return found

    def user_values(self, users: Sequence[Any]) -> list[dict[str, Any]]:
        with self.lock:
            try:
                rows = [self.connection.execute("SELECT vals FROM users WHERE user = ?", (str(user),)).fetchone() for user in users]
            except sqlite3.Error as error:
                raise StoreError(f"sqlite store {self.path}: {error}") from None
        return [json.loads(row[0]) if row else {} for row in rows]

    def user_side(self, users: Sequence[Any], as_of: Sequence[float | None], limit: int,
                  attribute_users: Sequence[Any]) -> tuple[list[History], list[dict[str, Any]]]:
        return self.histories(users, as_of, limit), self.user_values(attribute_users)  # in process: no round trip to save

    def ping(self) -> bool:
        """A file is always there to read; a failing disk shows in the calls themselves."""
        return True

    def count(self) -> int:
        with self.lock:
            return int(self.connection.execute("SELECT count(*) FROM behaviours").fetchone()[0])

    def close(self) -> None:
        with self.lock:
            self.connection.close()
