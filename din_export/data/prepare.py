"""`din-export prepare`: a behaviour log plus item and user tables become train, valid and test sample tables.

Steps: DuckDB (scan.py) checks the log, lists its users and items and sorts its events by user and time out of
core; the sorted events then arrive in blocks of whole users, and for each block numpy splits each event into
train, valid or test, draws negatives for positive-only logs, finds each sample's history (the user's
behaviours strictly earlier in time, the most recent max_len kept) and writes the samples chunk by chunk into
Parquet. Memory is bounded by DuckDB's limit plus one block, not by the log.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time as clock
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from din_runtime.arrow import to_numpy

from ..config import LAYOUTS, PREPARE_BLOCK_EVENTS, PREPARE_MEMORY_LIMIT, PREPARE_WRITE_ROWS
from ..errors import TableError
from ..files import staged_bundle, write_json
from .behaviour import (
    NegativeDraw,
    assign_splits,
    event_order,
    forward_fill,
    gather_recent,
    history_bounds,
    kept_events,
    sample_negatives,
)
from .layout import history_lengths
from .prepared import ITEMS_FILE, SEQUENCE_STORE, SPEC_FILE, SPLITS, SUMMARY_FILE, TIME_COLUMN, split_file
from .readers import read_source
from .recipe import LogConfig, SplitConfig
from .reserved import HISTORY_END, HISTORY_FIRST
from .rules import (
    NUMBER_PATTERN,
    Sources,
    check_sources,
    event_features,
    feature_side,
    log_columns,
    read_recipe,
    table_columns,
    training_spec,
)
from .scan import LogScan
from .spec import PREVIOUS_FILL, FeatureSpec, Spec, spec_to_toml


def _shape(column: pa.ChunkedArray, feature: FeatureSpec) -> pa.Array:
    """A feature's raw values from its source column: first token of a token list, numbers parsed from text."""
    array = column.combine_chunks()
    if feature.first_token:
        array = pc.struct_field(pc.extract_regex(pc.cast(array, pa.string()), r"^\s*(?P<t>\S+)"), "t")
    if feature.kind == "numeric":
        if pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
            array = pc.if_else(pc.match_substring_regex(array, NUMBER_PATTERN), array, pa.scalar(None, array.type))
        array = pc.cast(array, pa.float64())
        array = pc.if_else(pc.is_nan(array), pa.scalar(None, pa.float64()), array)  # rules: NaN is missing, a null
    return array


def as_keys(values: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """An attribute table's key column in the type of the log's keys, so the two can be searched against each other:
    numbers cast to the log's number type, anything else compared as text (of any width)."""
    if keys.dtype.kind in "iufb":
        return values.astype(keys.dtype)
    return values if values.dtype.kind in "OU" else values.astype(np.str_)


class _Catalogue:
    """Attribute rows aligned to integer codes (of items or users), so values are a pyarrow `take` away."""

    def __init__(self, keys: np.ndarray, table: pa.Table | None, key_column: str | None, path: Path | None) -> None:
        self.keys = keys
        self.row_of_code = np.full(len(keys), -1, dtype=np.int64)
        self.table = table
        if table is not None:
            table_keys = as_keys(to_numpy(table.column(key_column)), keys)
            unique, counts = np.unique(table_keys, return_counts=True)
            if (counts > 1).any():
                raise TableError(f"{path}: key '{unique[counts > 1][0]}' appears {counts[counts > 1][0]} times in column '{key_column}'")
            position = np.minimum(np.searchsorted(keys, table_keys), max(len(keys) - 1, 0))
            known = (keys[position] == table_keys) if len(keys) else np.zeros(len(table_keys), dtype=bool)
            self.row_of_code[position[known]] = np.flatnonzero(known)  # rows for keys the log never names are unused

    def attribute(self, array: pa.Array, codes: np.ndarray) -> pa.Array:
        rows = self.row_of_code[codes]
        return array.take(pa.array(rows, mask=rows < 0))

    def codes(self, raw: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.keys, raw)


class LogContext:
    """What every block needs from the whole log: user and item codes with their attribute tables, the negative
    draw, the split's time cuts, and the features' places (log, item or user)."""

    def __init__(self, spec: Spec, config: LogConfig, sources: Sources, scan: LogScan, since: float | str | None = None) -> None:
        self.spec, self.config = spec, config
        self.since = None if since is None else scan.time_number(since)  # samples only from here on; histories reach back
        overview = scan.overview()
        self.events = overview.events
        items = read_source(sources.items, table_columns(spec, "items", config.item_key)) if sources.items else None
        users = read_source(sources.users, table_columns(spec, "users", config.user_key)) if sources.users else None
        item_table_keys = (as_keys(to_numpy(items.column(config.item_key)), overview.item_keys) if items is not None
                           else overview.item_keys[:0])
        item_keys = np.unique(np.concatenate([overview.item_keys, item_table_keys]))
        item_events = np.zeros(len(item_keys), dtype=np.int64)
        item_events[np.searchsorted(item_keys, overview.item_keys)] = overview.item_events
        self.users = _Catalogue(overview.user_keys, users, config.user_key, sources.users)
        self.items = _Catalogue(item_keys, items, config.item_key, sources.items)
        self.draw = NegativeDraw.of(config.sampling, item_events)
        self.split = self._split_cuts(scan)
        self.attribute_values = {f.name: _shape((items if f.source == "items" else users).column(f.column), f)
                                 for f in spec.features if not f.per_behaviour and f.source != "log"}

    def side(self, feature: FeatureSpec) -> str:
        return feature_side(feature, self.config)

    def item_table(self) -> pa.Table | None:
        """Every item of the log and the item table with its candidate-side features, as the samples hold them: what
        `din-export evaluate --rank --items` draws negatives from (numeric item facts included). None without an
        item feature."""
        features = [f for f in self.spec.features if not f.per_behaviour and self.side(f) == "item"]
        if not any(f.source == "log" for f in features):
            return None
        codes = np.arange(len(self.items.keys))
        return pa.table({f.name: pa.array(self.items.keys) if f.source == "log" else self.items.attribute(self.attribute_values[f.name], codes)
                         for f in features})

    def _split_cuts(self, scan: LogScan) -> SplitConfig:
        """The split with a global time split's quantile cuts computed over the whole log (over the window of
        samples, with --since), so blocks agree."""
        split = self.config.split
        if split.mode != "global_time":
            return split
        wanted = [q for q, given in ((1 - split.test, split.test_from), (1 - split.test - split.valid, split.valid_from)) if given is None]
        found = iter(scan.time_quantiles(wanted, self.since)) if wanted else iter(())
        test_from = split.test_from if split.test_from is not None else next(found)
        valid_from = split.valid_from if split.valid_from is not None else next(found)
        return dataclasses.replace(split, test_from=test_from, valid_from=valid_from)



class EventBlock:
    """A block of whole users' events, sorted by user and time, with everything needed to emit its samples in
    chunks. `behaviour_base` and `positive_base` count the behaviours and positives of earlier blocks: where this
    block's behaviours start in the sequence store, and the keys of its negatives' draws."""

    def __init__(self, context: LogContext, log: pa.Table, behaviour_base: int, positive_base: int) -> None:
        self.context, self.spec, self.config = context, context.spec, context.config
        config = self.config
        user = context.users.codes(to_numpy(log.column(config.user)))
        times = log.column(config.time)
        times = times.cast(pa.int64()) if pa.types.is_timestamp(times.type) else times
        time = to_numpy(times).astype(np.float64)
        if not _sorted_by_user_and_time(user, time):  # DuckDB's order of keys may differ from numpy's (collation)
            order = event_order(user, time)
            log, user, time = log.take(pa.array(order)), user[order], time[order]
        self.log, self.user, self.time = log, user, time
        self.item = context.items.codes(to_numpy(log.column(config.item)))
        self.behaviour_base = behaviour_base
        self.label = self._labels()
        # The window of events that become samples; every earlier event still counts for histories and negatives.
        self.window = np.ones(len(self.user), dtype=bool) if context.since is None else self.time >= context.since
        self.split = np.full(len(self.user), -1, dtype=np.int8)
        self.split[self.window] = assign_splits(self.user[self.window], self.time[self.window], context.split)
        self.first, self.end = history_bounds(self.user, self.time, self.label == 1)
        self.behaviours = np.flatnonzero(self.label == 1)
        self._history_values: dict[str, pa.Array] = {}
        self.event_values = {f.name: self._event_values(f) for f in event_features(context.spec, context.config)}

        sampled = np.flatnonzero(self.window)
        self.positives = int((self.label[sampled] == 1).sum())
        if config.label is None:
            owners, drawn = sample_negatives(self.user, self.item, sampled, context.draw,
                                             first_key=positive_base * context.draw.negatives)
            event = np.concatenate([sampled, owners])
            sample_order = np.argsort(event, kind="stable")
            self.sample_event = event[sample_order]
            self.sample_item = np.concatenate([self.item[sampled], drawn])[sample_order]
            self.sample_label = np.concatenate([self.label[sampled], np.zeros(len(owners), dtype=np.int8)])[sample_order]
            self.dropped = 0
        else:
            kept = kept_events(self.user, self.label, self.split, config.sampling.keep_negatives, config.sampling.seed)
            self.dropped = int((~kept[sampled]).sum())
            sampled = sampled[kept[sampled]]
            self.sample_event, self.sample_item, self.sample_label = sampled, self.item[sampled], self.label[sampled]
        self.negatives = int(len(self.sample_event) - len(sampled))

    def history_values(self, feature: FeatureSpec) -> pa.Array:
        """What a sequence feature's histories hold, one value per behaviour event in store order (the values of
        the feature it shares, for that behaviour's item and user; a times feature's, the behaviour's time);
        computed once."""
        if feature.name not in self._history_values and feature.kind == "times":  # the log's time of each behaviour
            self._history_values[feature.name] = pa.array(self.time[self.behaviours])
        elif feature.name not in self._history_values:
            shared = next(f for f in self.spec.features if f.name == feature.shares)
            self._history_values[feature.name] = self._values(shared, self.behaviours, self.item[self.behaviours])
        return self._history_values[feature.name]

    def _labels(self) -> np.ndarray:
        if self.config.label is None:
            return np.ones(len(self.user), dtype=np.int8)
        values = to_numpy(self.log.column(self.config.label)).astype(np.float64)
        if self.config.label_min is not None:
            return (values >= self.config.label_min).astype(np.int8)
        bad = ~np.isin(values, (0.0, 1.0))
        if bad.any():
            raise TableError(f"log column '{self.config.label}': labels must be 0 or 1 (or set [log] label_min), found {values[bad][0]!r}")
        return values.astype(np.int8)

    def _event_values(self, feature: FeatureSpec) -> pa.Array:
        array = _shape(self.log.column(feature.column), feature)
        if feature.kind == "numeric" and feature.fill == PREVIOUS_FILL:
            array = pa.array(forward_fill(array.to_numpy(zero_copy_only=False), self.user), from_pandas=True)
        return array

    def _values(self, feature: FeatureSpec, events: np.ndarray, items: np.ndarray) -> pa.Array:
        """Values of a non-sequence feature for the given events and candidate items."""
        context = self.context
        side = context.side(feature)
        if side == "item":
            if feature.source == "items":
                return context.items.attribute(context.attribute_values[feature.name], items)
            return pa.array(context.items.keys[items])
        if side == "user":
            if feature.source == "users":
                return context.users.attribute(context.attribute_values[feature.name], self.user[events])
            return pa.array(context.users.keys[self.user[events]])
        return self.event_values[feature.name].take(pa.array(events))

    def chunk(self, rows: slice, layout: str = "inline") -> tuple[pa.Table, np.ndarray]:
        """Samples in `rows` as a table, with their split codes. Inline: each history as a list column; reference:
        where the sample's history lies in the sequence store (layout.py)."""
        events, items = self.sample_event[rows], self.sample_item[rows]
        columns: dict[str, pa.Array] = {}
        kept = history_lengths(self.spec)
        for feature in self.spec.features:
            if feature.name not in kept:
                columns[feature.name] = self._values(feature, events, items)
            elif layout == "inline":
                flat, offsets = gather_recent(np.arange(len(self.behaviours)), self.first[events], self.end[events], kept[feature.name])
                columns[feature.name] = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)),
                                                                 self.history_values(feature).take(pa.array(flat)))
        if layout == "reference":
            columns[HISTORY_FIRST] = pa.array(self.first[events] + self.behaviour_base)
            columns[HISTORY_END] = pa.array(self.end[events] + self.behaviour_base)
        columns[self.spec.label] = pa.array(self.sample_label[rows])
        columns[TIME_COLUMN] = pa.array(self.time[events])
        return pa.table(columns), self.split[events]


def _sorted_by_user_and_time(user: np.ndarray, time: np.ndarray) -> bool:
    next_user, next_time = np.diff(user), np.diff(time)
    return bool(np.all((next_user > 0) | ((next_user == 0) & (next_time >= 0))))


class _SampleWriter:
    """The split tables (and the reference layout's sequence store), written chunk by chunk. Parquet encoding
    releases the GIL: one chunk is written on a thread while the next is built."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.rows = {name: 0 for name in SPLITS}
        self.writers: dict[str, pq.ParquetWriter] = {}
        self.schema: pa.Schema | None = None
        self.thread = ThreadPoolExecutor(max_workers=1)
        self.pending: Any = None

    def samples(self, table: pa.Table, split: np.ndarray) -> None:
        self.schema = self.schema or table.schema
        self._submit(self._write_samples, table, split)

    def store(self, table: pa.Table) -> None:
        self._submit(self._append, SEQUENCE_STORE, table)

    def close(self) -> None:
        try:
            if self.pending is not None:
                self.pending.result()
        finally:
            self.thread.shutdown(wait=True)
            for writer in self.writers.values():
                writer.close()

    def _submit(self, *work: Any) -> None:
        if self.pending is not None:
            self.pending.result()
        self.pending = self.thread.submit(*work)

    def _write_samples(self, table: pa.Table, split: np.ndarray) -> None:
        for code, name in enumerate(SPLITS):
            part = table.filter(pa.array(split == code))
            if part.num_rows:
                self._append(split_file(Path(), name).name, part.cast(self.schema))
                self.rows[name] += part.num_rows

    def _append(self, file: str, table: pa.Table) -> None:
        if file not in self.writers:
            self.writers[file] = pq.ParquetWriter(self.folder / file, table.schema)
        self.writers[file].write_table(table)


def prepare(recipe: Path, sources: Sources, out: Path, write_rows: int = PREPARE_WRITE_ROWS, layout: str = "inline",
            memory_limit: str = PREPARE_MEMORY_LIMIT, block_events: int = PREPARE_BLOCK_EVENTS,
            since: float | str | None = None) -> dict[str, Any]:
    """Write the prepared folder `out` (prepared.py: a table per split, spec.toml, prepare.json, items.parquet and,
    in the reference layout, sequences.parquet), `write_rows` samples at a time; returns the summary. DuckDB sorts
    within `memory_limit` (spilling beside `out`). With
    `since` (a time in the log's units, or an ISO date for a timestamp column), only events at or after it become
    samples, split by the recipe's [split] among themselves, while histories and negatives' anti-joins still see
    every earlier event: a day's window for a model retrained daily."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, not {layout!r}")
    started = clock.perf_counter()
    spec, config = read_recipe(recipe)
    check_sources(spec, config, sources)
    behaviours = positives = negatives = dropped = 0
    with staged_bundle(out) as staging, tempfile.TemporaryDirectory(prefix=f".{Path(out).name}.spill-", dir=staging.parent) as spill:
        scan = LogScan(sources.log, config.user, config.item, config.time, log_columns(spec, config), Path(spill), memory_limit,
                       label=config.label)
        writer = _SampleWriter(staging)
        try:
            context = LogContext(spec, config, sources, scan, since)
            sequences = [f for f in spec.features if f.name in history_lengths(spec)]  # the store's columns: sequences, times
            for events in scan.blocks(block_events):
                block = EventBlock(context, events, behaviours, positives)
                for start in range(0, len(block.sample_event), write_rows):
                    writer.samples(*block.chunk(slice(start, start + write_rows), layout))
                if layout == "reference" and (len(block.behaviours) or behaviours == 0):  # the store exists even if empty
                    writer.store(pa.table({f.name: block.history_values(f) for f in sequences}))
                behaviours += len(block.behaviours)
                positives += block.positives
                negatives += block.negatives
                dropped += block.dropped
        finally:
            writer.close()
            scan.close()
        empty = [name for name in SPLITS if writer.rows[name] == 0]
        if empty:
            raise ValueError(f"the split leaves {empty} without samples; adjust [split] (valid/test) for this log")
        (staging / SPEC_FILE).write_text(spec_to_toml(training_spec(spec, config)), encoding="utf-8")
        item_table = context.item_table()
        if item_table is not None:
            pq.write_table(item_table, staging / ITEMS_FILE)
        summary = {
            "events": context.events, "users": int(len(context.users.keys)), "items": int(len(context.items.keys)),
            "positives": positives, "negatives_drawn": negatives, "since": context.since,
            "keep_negatives": config.sampling.keep_negatives, "negatives_dropped": dropped,
            "rows": writer.rows, "layout": layout, "seconds": round(clock.perf_counter() - started, 3),
            "sort_spilled_bytes": scan.spilled_bytes or 0,
            "sources": {k: str(v) for k, v in vars(sources).items() if v is not None}, "recipe": str(recipe),
        }
        write_json(staging / SUMMARY_FILE, summary)
    return summary
