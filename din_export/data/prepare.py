"""`din-export prepare`: a behaviour log plus item and user tables become train, valid and test sample tables.

Steps: read only the columns the recipe names; code users and items as integers; sort events by user and
time; split each event into train, valid or test; draw negatives for positive-only logs; find each sample's
history (the user's behaviours strictly earlier in time, the most recent max_len kept); then write samples
chunk by chunk into Parquet, so memory is bounded by the chunk, not by the log.
"""

from __future__ import annotations

import time as clock
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..files import staged_bundle, write_json
from .behaviour import TEST, TRAIN, VALID, assign_splits, event_order, forward_fill, gather_recent, history_bounds, sample_negatives
from .layout import HISTORY_END, HISTORY_FIRST, LAYOUTS, SEQUENCE_STORE
from .logs import LogConfig, log_config_from_dict, read_source
from .spec import PREVIOUS_FILL, Feature, Spec, SpecError, read_toml, spec_from_dict, spec_to_toml
from .tables import TableError

SPLIT_NAMES = {TRAIN: "train", VALID: "valid", TEST: "test"}
DEFAULT_CHUNK_ROWS = 200_000
TIME_COLUMN = "event_time"
SPEC_FILE = "spec.toml"
SUMMARY_FILE = "prepare.json"
NUMBER_PATTERN = r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$"


@dataclass(frozen=True)
class Sources:
    log: Path
    items: Path | None = None
    users: Path | None = None


def _numpy(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return array.to_numpy(zero_copy_only=False)


def _no_nulls(table: pa.Table, column: str, path: Path) -> None:
    nulls = table.column(column).null_count
    if nulls:
        row = int(np.flatnonzero(_numpy(pc.is_null(table.column(column))))[0])
        raise TableError(f"{path}: column '{column}' is empty in {nulls} row(s), first at row {row}")


def _shape(column: pa.ChunkedArray, feature: Feature) -> pa.Array:
    """A feature's raw values from its source column: first token of a token list, numbers parsed from text."""
    array = column.combine_chunks()
    if feature.first_token:
        array = pc.struct_field(pc.extract_regex(pc.cast(array, pa.string()), r"^\s*(?P<t>\S+)"), "t")
    if feature.kind == "numeric":
        if pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
            array = pc.if_else(pc.match_substring_regex(array, NUMBER_PATTERN), array, pa.scalar(None, array.type))
        array = pc.cast(array, pa.float64())
    return array


class _Catalogue:
    """Attribute rows aligned to integer codes (of items or users), so values are a pyarrow `take` away."""

    def __init__(self, keys: np.ndarray, table: pa.Table | None, key_column: str | None, path: Path | None) -> None:
        self.keys = keys
        self.row_of_code = np.full(len(keys), -1, dtype=np.int64)
        self.table = table
        if table is not None:
            table_keys = _numpy(table.column(key_column)).astype(keys.dtype)
            unique, counts = np.unique(table_keys, return_counts=True)
            if (counts > 1).any():
                raise TableError(f"{path}: key '{unique[counts > 1][0]}' appears {counts[counts > 1][0]} times in column '{key_column}'")
            self.row_of_code[np.searchsorted(keys, table_keys)] = np.arange(len(table_keys))

    def attribute(self, array: pa.Array, codes: np.ndarray) -> pa.Array:
        rows = self.row_of_code[codes]
        return array.take(pa.array(rows, mask=rows < 0))


class LogSamples:
    """A log read and ordered, with everything needed to emit samples in chunks."""

    def __init__(self, spec: Spec, config: LogConfig, sources: Sources) -> None:
        self.spec, self.config = spec, config
        self._check_sources(sources)
        log_columns = [config.user, config.item, config.time] + ([config.label] if config.label else [])
        log_columns += [f.column for f in self._event_features() if f.column not in log_columns]
        log = read_source(sources.log, log_columns)
        for column in (config.user, config.item, config.time):
            _no_nulls(log, column, sources.log)
        items = read_source(sources.items, self._columns("items", config.item_key)) if sources.items else None
        users = read_source(sources.users, self._columns("users", config.user_key)) if sources.users else None

        user_raw = _numpy(log.column(config.user))
        item_raw = _numpy(log.column(config.item))
        times = log.column(config.time)
        times = times.cast(pa.int64()) if pa.types.is_timestamp(times.type) else times
        time_raw = _numpy(times).astype(np.float64)

        user_keys, user_code = np.unique(user_raw, return_inverse=True)
        item_table_keys = _numpy(items.column(config.item_key)).astype(item_raw.dtype) if items is not None else item_raw[:0]
        item_keys = np.unique(np.concatenate([item_raw, item_table_keys]))
        order = event_order(user_code, time_raw)
        self.log = log.take(pa.array(order))
        self.user, self.time = user_code[order], time_raw[order]
        self.item = np.searchsorted(item_keys, item_raw[order])
        self.users = _Catalogue(user_keys, users, config.user_key, sources.users)
        self.items = _Catalogue(item_keys, items, config.item_key, sources.items)
        self.label = self._labels()
        self.split = assign_splits(self.user, self.time, config.split)
        self.first, self.end = history_bounds(self.user, self.time, self.label == 1)
        self.behaviours = np.flatnonzero(self.label == 1)
        self._history_values: dict[str, pa.Array] = {}
        self.event_values = {f.name: self._event_values(f) for f in self._event_features()}
        self.attribute_values = {f.name: _shape(self._attribute_table(f).column(f.column), f)
                                 for f in spec.features if f.kind != "sequence" and f.source != "log"}

        if config.label is None:
            owners, drawn = sample_negatives(self.user, self.item, np.arange(len(self.user)), len(item_keys), config.sampling)
            event = np.concatenate([np.arange(len(self.user)), owners])
            sample_order = np.argsort(event, kind="stable")
            self.sample_event = event[sample_order]
            self.sample_item = np.concatenate([self.item, drawn])[sample_order]
            self.sample_label = np.concatenate([self.label, np.zeros(len(owners), dtype=np.int8)])[sample_order]
        else:
            self.sample_event, self.sample_item, self.sample_label = np.arange(len(self.user)), self.item, self.label
        self.negatives = int(len(self.sample_event) - len(self.user))

    def history_values(self, feature: Feature) -> pa.Array:
        """What a sequence feature's histories hold, one value per behaviour event in store order (the values of
        the feature it shares, for that behaviour's item and user); computed once."""
        if feature.name not in self._history_values:
            shared = next(f for f in self.spec.features if f.name == feature.shares)
            self._history_values[feature.name] = self._values(shared, self.behaviours, self.item[self.behaviours])
        return self._history_values[feature.name]

    def _check_sources(self, sources: Sources) -> None:
        for feature in self.spec.features:
            if feature.kind == "sequence":
                target = next(f for f in self.spec.features if f.name == feature.shares)
                if target.source == "users" or (target.source == "log" and target.column == self.config.user):
                    raise SpecError(f"feature '{feature.name}': a history of '{target.name}', a user attribute, is not a behaviour sequence")
                continue
            if feature.column is None:
                raise SpecError(f"feature '{feature.name}': `prepare` needs 'column', the source column of its values")
            for source, path, key in (("items", sources.items, self.config.item_key), ("users", sources.users, self.config.user_key)):
                if feature.source == source and (path is None or key is None):
                    raise SpecError(f"feature '{feature.name}' comes from the {source} table: pass --{source} and set [{source}] key")

    def _columns(self, source: str, key: str) -> list[str]:
        return [key] + sorted({f.column for f in self.spec.features if f.kind != "sequence" and f.source == source} - {key})

    def _event_features(self) -> list[Feature]:
        identity = (self.config.user, self.config.item)
        return [f for f in self.spec.features if f.kind != "sequence" and f.source == "log" and f.column not in identity]

    def _attribute_table(self, feature: Feature) -> pa.Table:
        return (self.items if feature.source == "items" else self.users).table

    def _labels(self) -> np.ndarray:
        if self.config.label is None:
            return np.ones(len(self.user), dtype=np.int8)
        values = _numpy(self.log.column(self.config.label)).astype(np.float64)
        if self.config.label_min is not None:
            return (values >= self.config.label_min).astype(np.int8)
        bad = ~np.isin(values, (0.0, 1.0))
        if bad.any():
            raise TableError(f"log column '{self.config.label}': labels must be 0 or 1 (or set [log] label_min), found {values[bad][0]!r}")
        return values.astype(np.int8)

    def _event_values(self, feature: Feature) -> pa.Array:
        array = _shape(self.log.column(feature.column), feature)
        if feature.kind == "numeric" and feature.fill == PREVIOUS_FILL:
            array = pa.array(forward_fill(array.to_numpy(zero_copy_only=False), self.user), from_pandas=True)
        return array

    def _side(self, feature: Feature) -> str:
        if feature.source == "items" or (feature.source == "log" and feature.column == self.config.item):
            return "item"
        if feature.source == "users" or feature.column == self.config.user:
            return "user"
        return "event"

    def _values(self, feature: Feature, events: np.ndarray, items: np.ndarray) -> pa.Array:
        """Values of a non-sequence feature for the given events and candidate items."""
        side = self._side(feature)
        if side == "item":
            if feature.source == "items":
                return self.items.attribute(self.attribute_values[feature.name], items)
            return pa.array(self.items.keys[items])
        if side == "user":
            if feature.source == "users":
                return self.users.attribute(self.attribute_values[feature.name], self.user[events])
            return pa.array(self.users.keys[self.user[events]])
        return self.event_values[feature.name].take(pa.array(events))

    def chunk(self, rows: slice, layout: str = "inline") -> tuple[pa.Table, np.ndarray]:
        """Samples in `rows` as a table, with their split codes. Inline: each history as a list column; reference:
        where the sample's history lies in the sequence store (layout.py)."""
        events, items = self.sample_event[rows], self.sample_item[rows]
        columns: dict[str, pa.Array] = {}
        for feature in self.spec.features:
            if feature.kind != "sequence":
                columns[feature.name] = self._values(feature, events, items)
            elif layout == "inline":
                flat, offsets = gather_recent(np.arange(len(self.behaviours)), self.first[events], self.end[events], feature.max_len)
                columns[feature.name] = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)),
                                                                 self.history_values(feature).take(pa.array(flat)))
        if layout == "reference":
            columns[HISTORY_FIRST], columns[HISTORY_END] = pa.array(self.first[events]), pa.array(self.end[events])
        columns[self.spec.label] = pa.array(self.sample_label[rows])
        columns[TIME_COLUMN] = pa.array(self.time[events])
        return pa.table(columns), self.split[events]


def _training_spec(spec: Spec, config: LogConfig) -> Spec:
    """The spec train-and-export reads: prepare's keys dropped; gaps left after 'previous' filled with the mean;
    each categorical from the item table marked as an attribute of the item (the bundle then carries the
    item-to-attribute table, so a client may send item IDs alone)."""
    data = spec.to_dict()
    item = next((f.name for f in spec.of_kind("categorical") if f.source == "log" and f.column == config.item), None)
    for feature in spec.features:
        entry = data["features"][feature.name]
        if entry.get("fill") == PREVIOUS_FILL:
            entry["fill"] = "mean"
        if item is not None and feature.kind == "categorical" and feature.source == "items" and feature.attribute_of is None:
            entry["attribute_of"] = item
    return spec_from_dict(data)


def prepare(recipe: Path, sources: Sources, out: Path, chunk_rows: int = DEFAULT_CHUNK_ROWS, layout: str = "inline") -> dict[str, Any]:
    """Write out/{train,valid,test}.parquet, out/spec.toml and out/prepare.json (and, in the reference layout,
    out/sequences.parquet); returns the summary."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, not {layout!r}")
    started = clock.perf_counter()
    data = read_toml(recipe)
    try:
        spec, config = spec_from_dict(data), log_config_from_dict(data)
    except SpecError as error:
        raise SpecError(f"{recipe}: {error}") from None
    samples = LogSamples(spec, config, sources)
    rows = {name: 0 for name in SPLIT_NAMES.values()}
    with staged_bundle(out) as staging:
        writers: dict[int, pq.ParquetWriter] = {}
        schema = None

        def write(table: pa.Table, split: np.ndarray) -> None:
            for code, name in SPLIT_NAMES.items():
                part = table.filter(pa.array(split == code))
                if part.num_rows:
                    if code not in writers:
                        writers[code] = pq.ParquetWriter(staging / f"{name}.parquet", schema)
                    writers[code].write_table(part.cast(schema))
                    rows[name] += part.num_rows

        # Parquet encoding releases the GIL: one chunk is written while the next is built.
        with ThreadPoolExecutor(max_workers=1) as writer_thread:
            pending = None
            try:
                for start in range(0, len(samples.sample_event), chunk_rows):
                    table, split = samples.chunk(slice(start, start + chunk_rows), layout)
                    schema = schema or table.schema
                    if pending is not None:
                        pending.result()
                    pending = writer_thread.submit(write, table, split)
                if pending is not None:
                    pending.result()
            finally:
                writer_thread.shutdown(wait=True)
                for writer in writers.values():
                    writer.close()
        empty = [name for name in SPLIT_NAMES.values() if rows[name] == 0]
        if empty:
            raise ValueError(f"the split leaves {empty} without samples; adjust [split] (valid/test) for this log")
        if layout == "reference":
            sequences = {f.name: samples.history_values(f) for f in spec.of_kind("sequence")}
            pq.write_table(pa.table(sequences), staging / SEQUENCE_STORE)
        (staging / SPEC_FILE).write_text(spec_to_toml(_training_spec(spec, config)), encoding="utf-8")
        summary = {
            "events": int(len(samples.user)), "users": int(len(samples.users.keys)), "items": int(len(samples.items.keys)),
            "positives": int((samples.label == 1).sum()), "negatives_drawn": samples.negatives,
            "rows": rows, "layout": layout, "seconds": round(clock.perf_counter() - started, 3),
            "sources": {k: str(v) for k, v in vars(sources).items() if v is not None}, "recipe": str(recipe),
        }
        write_json(staging / SUMMARY_FILE, summary)
    return summary
