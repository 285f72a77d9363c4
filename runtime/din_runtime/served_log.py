"""The served log (`din-runtime serve --log-requests DIR`): every scored row, with the features exactly as the model
received them (histories filled from the store included, cut to the most recent max_len the model read) and its
probability, written as Parquet for tomorrow's training (`din-export prepare --served DIR --clicks LOG`).

Requests never wait for it: a request hands its rows to a bounded queue and returns; a writer thread turns them
into Arrow tables and writes a file per model version when it holds `max_rows` rows or its oldest row is
`max_seconds` old. Where the queue is full the rows are dropped and counted (the metric
din_served_rows_total{result="dropped"}), never waited for. Each file is written beside its place and renamed
into it, so a reader sees it whole or not at all. Needs pyarrow (the `parquet` extra).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import SERVED_LOG_MAX_ROWS, SERVED_LOG_MAX_SECONDS, SERVED_LOG_QUEUE_ROWS
from .encoding import FeatureEncoder, coerce_keys, to_ragged
from .files import write_atomic
from .schema import CategoricalFeature, FeatureSchema, NumericFeature, SequenceFeature, TimesFeature

log = logging.getLogger("din_runtime.served_log")
REQUEST_ID, ROW, TIME, MODEL, VERSION, PROBABILITY = "request_id", "row", "time", "model", "version", "probability"
RESERVED = (REQUEST_ID, ROW, TIME, MODEL, VERSION, PROBABILITY)  # the log's own columns; the rest are features
FILE_PREFIX = "served-"
WAKE: Any = object()


@dataclass(frozen=True)
class Served:
    """One request's scored rows: its id, its time (the request's as_of, else the server's clock in Unix seconds),
    the model version, the raw columns the model was fed (user-side values given once are repeated per row by the
    caller) and each row's probability."""

    request_id: str
    time: float
    model: str
    version: int
    encoder: FeatureEncoder
    columns: Mapping[str, Any]
    probabilities: np.ndarray
    taken: float = field(default_factory=time.monotonic)

    @property
    def rows(self) -> int:
        return len(self.probabilities)


def new_request_id() -> str:
    """An id for a request that brings none, so its rows (and the clicks a client reports for it) can be joined."""
    return uuid.uuid4().hex


def served_table(served: Served) -> Any:
    """The rows as an Arrow table: the log's columns, then every feature of the model in its input order (raw keys,
    numbers with missing as null, histories as lists of their most recent max_len keys), then the probability.
    Attributes the bundle looked up from the item (left out by the client) are recovered from its tables."""
    import pyarrow as pa

    encoder, rows = served.encoder, served.rows
    schema = encoder.schema
    columns: dict[str, Any] = {
        REQUEST_ID: pa.array([served.request_id] * rows, pa.string()), ROW: pa.array(np.arange(rows, dtype=np.int32)),
        TIME: pa.array(np.full(rows, served.time, dtype=np.float64)), MODEL: pa.array([served.model] * rows, pa.string()),
        VERSION: pa.array(np.full(rows, served.version, dtype=np.int64)),
    }
    for feature in schema.features:
        if feature.name in served.columns:
            columns[feature.name] = _raw(feature, served.columns[feature.name], schema)
        else:
            columns[feature.name] = _looked_up(feature, served, schema)
    for times in schema.times:  # each row's own time, which its behaviours' ages were taken from
        columns[times.at] = pa.array(np.asarray(served.columns[times.at], dtype=np.float64))
    columns[PROBABILITY] = pa.array(np.asarray(served.probabilities, dtype=np.float32))
    return pa.table(columns)


def _keys(feature: str, values: Any, key_type: str) -> Any:
    import pyarrow as pa

    keys, missing = coerce_keys(feature, values, key_type)
    return pa.array(keys, mask=missing if missing.any() else None)


def _raw(feature: Any, values: Any, schema: FeatureSchema) -> Any:
    import pyarrow as pa

    if isinstance(feature, CategoricalFeature):
        return _keys(feature.name, values, feature.key_type)
    if isinstance(feature, NumericFeature):
        numbers = values if isinstance(values, np.ndarray) else [np.nan if v is None else v for v in values]
        return pa.array(np.asarray(numbers, dtype=np.float64), from_pandas=True)  # NaN: missing, a null
    assert isinstance(feature, (SequenceFeature, TimesFeature))
    ragged = to_ragged(feature.name, values)
    kept_len = feature.max_len if isinstance(feature, SequenceFeature) else schema.max_len
    starts = np.maximum(ragged.offsets[:-1], ragged.offsets[1:] - kept_len)  # the most recent max_len
    kept = ragged.offsets[1:] - starts
    offsets = np.zeros(len(kept) + 1, dtype=np.int32)
    np.cumsum(kept, out=offsets[1:])
    take = np.repeat(starts - offsets[:-1], kept) + np.arange(int(offsets[-1]))
    chosen = np.asarray(ragged.values)[take] if len(take) else ragged.values[:0]
    if isinstance(feature, TimesFeature):
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(np.asarray(chosen, dtype=np.float64)))
    items = _keys(feature.name, chosen, schema[feature.shares].key_type)
    return pa.ListArray.from_arrays(pa.array(offsets), items)


def _looked_up(feature: Any, served: Served, schema: FeatureSchema) -> Any:
    """A feature the bundle looked up from the item (or the item history): its raw keys from the bundle's tables."""
    import pyarrow as pa

    derivation = schema.derivations().get(feature.name)
    if derivation is None or derivation[0] not in served.columns:
        raise KeyError(f"the model was fed no '{feature.name}'")
    source, attribute = derivation
    table = served.encoder.derived[feature.name][1]
    attribute_feature = schema[attribute]
    key_rows = attribute_feature.key_rows()
    keys_by_row = np.zeros(attribute_feature.size, dtype=np.int64 if attribute_feature.key_type == "int" else object)
    known = np.zeros(attribute_feature.size, dtype=bool)
    keys_by_row[key_rows], known[key_rows] = attribute_feature.keys, True
    indices = served.encoder.encode({source: served.columns[source]}, only=[source])[source]
    rows = table.take(indices)
    if rows.ndim == 1:
        return pa.array(keys_by_row[rows], mask=~known[rows])
    history = _raw(schema[source], served.columns[source], schema)  # its lengths: how many positions were read
    lengths = np.diff(np.asarray(history.offsets))
    flat = rows[np.arange(rows.shape[1]) < lengths[:, None]]  # left-aligned: each row's first `length` positions
    return pa.ListArray.from_arrays(history.offsets, pa.array(keys_by_row[flat], mask=~known[flat]))


class ServedLog:
    """The writer: a bounded queue of requests' rows and one thread that writes them as Parquet files under
    FOLDER/MODEL/VERSION/. `on_rows(result, count)` reports rows "logged" (written) and "dropped"."""

    def __init__(self, folder: Path, max_rows: int = SERVED_LOG_MAX_ROWS, max_seconds: float = SERVED_LOG_MAX_SECONDS,
                 queue_rows: int = SERVED_LOG_QUEUE_ROWS, on_rows: Callable[[str, int], None] | None = None) -> None:
        try:
            import pyarrow  # noqa: F401 - checked at start, not at the first request
        except ImportError:
            raise RuntimeError("the served log needs pyarrow: pip install 'din-runtime[parquet]'") from None
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.max_rows, self.max_seconds, self.queue_rows = max_rows, max_seconds, queue_rows
        self.on_rows = on_rows or (lambda result, count: None)
        self._queue: queue.SimpleQueue[Served | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._queued = 0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="served-log", daemon=True)
        self._thread.start()

    def record(self, served: Served) -> bool:
        """Queue a request's rows; False (and the rows counted as dropped) where the queue holds too many already."""
        with self._lock:
            if self._closed or self._queued + served.rows > self.queue_rows:
                accepted = False
            else:
                self._queued += served.rows
                accepted = True
        if not accepted:
            self.on_rows("dropped", served.rows)
            return False
        self._queue.put(served)
        return True

    def close(self) -> None:
        """Write everything queued and held, then stop the thread (the server's shutdown calls it)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        held: dict[tuple[str, int], list[Any]] = {}
        counts: dict[tuple[str, int], int] = {}
        oldest: dict[tuple[str, int], float] = {}
        while True:
            due = min(oldest.values(), default=None)
            wait = None if due is None else max(0.0, due + self.max_seconds - time.monotonic())
            try:
                served: Served | None = self._queue.get(timeout=wait)
            except queue.Empty:
                served = WAKE  # no rows: a wake-up to roll files by age
            if served is None:
                for key in list(held):
                    self._write(key, held.pop(key))
                return
            if served is not WAKE:
                with self._lock:
                    self._queued -= served.rows
                key = (served.model, served.version)
                try:
                    table = served_table(served)
                except Exception:  # noqa: BLE001 - a row the log cannot hold must not stop the writer
                    log.exception("a request's rows could not be logged")
                    self.on_rows("dropped", served.rows)
                    continue
                held.setdefault(key, []).append(table)
                counts[key] = counts.get(key, 0) + table.num_rows
                oldest.setdefault(key, served.taken)
            now = time.monotonic()
            for key in [k for k in held if counts[k] >= self.max_rows or now - oldest[k] >= self.max_seconds]:
                counts.pop(key), oldest.pop(key)
                self._write(key, held.pop(key))

    def _write(self, key: tuple[str, int], tables: list[Any]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = sum(t.num_rows for t in tables)
        try:
            table = pa.concat_tables(tables, promote_options="permissive")
            folder = self.folder / key[0] / str(key[1])
            folder.mkdir(parents=True, exist_ok=True)
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            write_atomic(folder / f"{FILE_PREFIX}{stamp}-{uuid.uuid4().hex[:8]}.parquet", lambda path: pq.write_table(table, path))
        except Exception:  # noqa: BLE001 - a full disk drops these rows (counted), it does not stop serving
            log.exception("served rows could not be written under %s", self.folder)
            self.on_rows("dropped", rows)
            return
        self.on_rows("logged", rows)
