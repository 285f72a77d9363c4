"""What every behaviour store shares: the fields it holds, checked events, a history, the interface, its error."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import InputError

KEEP = 1000  # behaviours kept per user (`--keep`): at least the largest max_len served
ID, TIME = "id", "time"  # an event's identity and when it happened; its user and item keys are the bundle's feature names


class StoreError(RuntimeError):
    """The store cannot be opened, reached or written; the message says which store and why (HTTP 503)."""


@dataclass(frozen=True)
class StoreFields:
    """What a store holds, by the bundle's feature names: the user and the item, the values a behaviour carries
    besides its item (attributes its histories need that the bundle cannot look up), and the user's attributes."""

    user: str
    item: str
    behaviour_values: tuple[str, ...] = ()
    user_values: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"user": self.user, "item": self.item, "behaviour_values": list(self.behaviour_values), "user_values": list(self.user_values)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StoreFields:
        return cls(data["user"], data["item"], tuple(data.get("behaviour_values", ())), tuple(data.get("user_values", ())))


@dataclass(frozen=True)
class Event:
    """One behaviour, checked: its identity, user, item, time, and the values its histories need."""

    id: str
    user: Any
    item: Any
    time: float
    values: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class History:
    """A user's behaviours as of a time, oldest first: the items, their times, and per behaviour value its list."""

    items: list[Any]
    times: list[float]
    values: dict[str, list[Any]]

    def __len__(self) -> int:
        return len(self.items)


def _key(value: Any, where: str, name: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or value == "":
        raise InputError(name, f"{where}: must be an integer or a non-empty string, not {value!r}")
    return value


def checked_events(raw: Sequence[Any], fields: StoreFields) -> list[Event]:
    """Events as the store takes them, every one checked before any is stored: an error names the event's index
    and the field (`id`, the user and item feature names, `time`)."""
    if not isinstance(raw, (list, tuple)):
        raise InputError("events", "must be a list of events")
    events, seen = [], set()
    for index, entry in enumerate(raw):
        where = f"event {index}"
        if not isinstance(entry, Mapping):
            raise InputError("events", f"{where}: must be an object with {ID}, {fields.user}, {fields.item} and {TIME}")
        for name in (ID, fields.user, fields.item, TIME):
            if name not in entry or entry[name] is None:
                raise InputError(name, f"{where}: missing")
        identity = str(_key(entry[ID], where, ID))
        time = entry[TIME]
        if isinstance(time, bool) or not isinstance(time, (int, float)) or not math.isfinite(time):
            raise InputError(TIME, f"{where}: must be a finite number (in the log's time units), not {time!r}")
        if identity in seen:
            raise InputError(ID, f"{where}: {identity!r} is given twice in this batch")
        seen.add(identity)
        values = {name: entry.get(name) for name in fields.behaviour_values}
        events.append(Event(identity, _key(entry[fields.user], where, fields.user), _key(entry[fields.item], where, fields.item),
                            float(time), values))
    return events


class BehaviourStore(Protocol):
    """The interface every backend speaks."""

    fields: StoreFields
    keep: int

    def add(self, events: Sequence[Event]) -> tuple[int, int]:
        """Store the events, all or nothing; (accepted, duplicates: ids already stored)."""

    def load(self, users: Sequence[Any], times: Sequence[float], items: Sequence[Any], values: Sequence[dict[str, Any] | None]) -> int:
        """Bulk load a log's behaviours as columns, in log order (no identities, so no duplicate check); the caller keeps
        each user's most recent `keep`. How many were stored."""

    def set_users(self, users: Mapping[Any, Mapping[str, Any]]) -> None:
        """Each user's attribute values (replacing what the store held for them)."""

    def histories(self, users: Sequence[Any], as_of: Sequence[float | None], limit: int) -> list[History]:
        """For each (user, time) pair, the user's most recent `limit` behaviours strictly before the time (all with
        None), oldest first."""

    def user_values(self, users: Sequence[Any]) -> list[dict[str, Any]]:
        """For each user, the attribute values held (an empty dict for an unknown user)."""

    def user_side(self, users: Sequence[Any], as_of: Sequence[float | None], limit: int,
                  attribute_users: Sequence[Any]) -> tuple[list[History], list[dict[str, Any]]]:
        """histories(users, as_of, limit) and user_values(attribute_users) in one read (one round trip to a
        server): what a request's completion needs."""

    def count(self) -> int:
        """Behaviours held."""

    def ping(self) -> bool:
        """Whether the store answers now (readiness)."""

    def close(self) -> None: ...
