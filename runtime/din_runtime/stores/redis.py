"""The behaviour store in Redis (`redis://HOST:PORT/DB`), shared by every server replica (the `redis` extra: the
`redis` client from the package index; the server is Debian's `redis-server` or any Redis 6+).

Each user's behaviours are one sorted set scored by time; a member is the arrival number (zero-padded, from one
counter, so ties in time keep arrival order) and the behaviour as JSON. An add is one Lua script, which Redis runs
atomically: every event of a batch is stored or none, an id already stored is counted once, and the user's oldest
behaviours past `keep` go. A request reads all its users in one pipelined round trip. Every call has a timeout, so
an unreachable Redis is a StoreError (HTTP 503) in about a second, never a hang.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from .base import Event, History, StoreError, StoreFields

PREFIX = "din:"
TIMEOUT_SECONDS = 1.0
LOAD_SLICE = 50_000  # behaviours per pipeline of a bulk load: bounds the loader's memory (20M events: 3.1 GB peak unsliced)
ADD = """
local added, duplicates, keep = 0, 0, tonumber(ARGV[1])
for i = 2, #ARGV, 4 do
  local id, user, time, body = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  if redis.call('SADD', KEYS[1], id) == 0 then
    duplicates = duplicates + 1
  else
    local seq = redis.call('INCR', KEYS[2])
    local key = KEYS[3] .. user
    redis.call('ZADD', key, time, string.format('%020d', seq) .. '|' .. body)
    local trimmed = redis.call('ZREMRANGEBYRANK', key, 0, -(keep + 1))
    redis.call('INCRBY', KEYS[4], 1 - trimmed)
    added = added + 1
  end
end
return {added, duplicates}
"""


class RedisStore:
    """A BehaviourStore in Redis."""

    def __init__(self, url: str, fields: StoreFields | None, keep: int, new_fields: StoreFields | None = None) -> None:
        try:
            import redis
        except ImportError:
            raise StoreError("a redis:// store needs the redis extra: pip install 'din-runtime[redis]'") from None
        self.url, self.keep, self.errors = url, keep, (redis.RedisError, OSError)
        self.client = redis.Redis.from_url(url, socket_timeout=TIMEOUT_SECONDS, socket_connect_timeout=TIMEOUT_SECONDS)
        self.keys = (f"{PREFIX}ids", f"{PREFIX}seq", f"{PREFIX}b:", f"{PREFIX}count")  # ids, arrival counter, a user's set, count
        self._add = self.client.register_script(ADD)
        stored = self._call(self.client.get, f"{PREFIX}fields")
        wanted = fields or new_fields
        if stored is None:
            if wanted is None:
                raise StoreError(f"redis store {url} is empty and no fields were given (the bundle's user and item features)")
            self._call(self.client.set, f"{PREFIX}fields", json.dumps(wanted.to_dict()))
            self.fields = wanted
        else:
            self.fields = StoreFields.from_dict(json.loads(stored))
            if fields is not None and fields != self.fields:
                raise StoreError(f"redis store {url} holds {self.fields.to_dict()}, not {fields.to_dict()}: another model's behaviours")

    def _call(self, work: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return work(*args, **kwargs)
        except self.errors as error:
            raise StoreError(f"redis store {self.url}: {error}") from None

    @staticmethod
    def _body(item: Any, values: Mapping[str, Any] | None) -> str:
        return json.dumps([item, dict(values)] if values else [item], separators=(",", ":"))

    def add(self, events: Sequence[Event]) -> tuple[int, int]:
        arguments: list[Any] = [self.keep]
        for event in events:
            arguments += [event.id, str(event.user), repr(event.time), self._body(event.item, event.values)]
        if len(arguments) == 1:
            return 0, 0
        added, duplicates = self._call(self._add, keys=list(self.keys), args=arguments)
        return int(added), int(duplicates)

    def load(self, users: Sequence[Any], times: Sequence[float], items: Sequence[Any], values: Sequence[dict[str, Any] | None]) -> int:
        """In pipelines of LOAD_SLICE behaviours each: a block's commands are never all in memory at once."""
        if not users:
            return 0
        first = int(self._call(self.client.incrby, self.keys[1], len(users))) - len(users) + 1
        for start in range(0, len(users), LOAD_SLICE):
            members: dict[str, dict[str, float]] = {}
            end = min(start + LOAD_SLICE, len(users))
            for offset in range(start, end):
                members.setdefault(str(users[offset]), {})[f"{first + offset:020d}|{self._body(items[offset], values[offset])}"] = times[offset]
            pipeline = self.client.pipeline(transaction=False)
            for user, scored in members.items():
                pipeline.zadd(self.keys[2] + user, scored)
            pipeline.incrby(self.keys[3], end - start)
            self._call(pipeline.execute)
        return len(users)

    def set_users(self, users: Mapping[Any, Mapping[str, Any]]) -> None:
        if users:
            self._call(self.client.hset, f"{PREFIX}users", mapping={str(u): json.dumps(dict(v)) for u, v in users.items()})

    def histories(self, users: Sequence[Any], as_of: Sequence[float | None], limit: int) -> list[History]:
        return self.user_side(users, as_of, limit, [])[0]

    def user_values(self, users: Sequence[Any]) -> list[dict[str, Any]]:
        return self.user_side([], [], 0, users)[1]

    def user_side(self, users: Sequence[Any], as_of: Sequence[float | None], limit: int,
                  attribute_users: Sequence[Any]) -> tuple[list[History], list[dict[str, Any]]]:
        """One pipelined round trip: each (user, time)'s range of its sorted set, and the users' attributes."""
        if not users and not attribute_users:
            return [], []
        pipeline = self.client.pipeline(transaction=False)
        for user, time in zip(users, as_of, strict=True):
            pipeline.zrevrangebyscore(self.keys[2] + str(user), "+inf" if time is None else f"({time!r}", "-inf", start=0, num=limit,
                                      withscores=True)
        if attribute_users:
            pipeline.hmget(f"{PREFIX}users", [str(u) for u in attribute_users])
        replies = self._call(pipeline.execute)
        found = [self._history(rows) for rows in replies[:len(users)]]
        return found, [json.loads(row) if row else {} for row in replies[len(users)]] if attribute_users else []

    def _history(self, rows: list[tuple[bytes, float]]) -> History:
        """A sorted-set range (newest first) as a History, oldest first; the bodies parsed as one JSON array."""
        rows = rows[::-1]
        bodies = json.loads(b"[" + b",".join(member.split(b"|", 1)[1] for member, _ in rows) + b"]")
        return History([body[0] for body in bodies], [score for _, score in rows],
                       {name: [(body[1] if len(body) > 1 else {}).get(name) for body in bodies] for name in self.fields.behaviour_values})

    def count(self) -> int:
        return int(self._call(self.client.get, self.keys[3]) or 0)

    def ping(self) -> bool:
        try:
            return bool(self.client.ping())
        except self.errors:
            return False

    def close(self) -> None:
        self.client.close()
