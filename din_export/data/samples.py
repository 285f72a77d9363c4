"""Sample tables (CSV, TSV, Parquet, either layout) as the raw columns the encoder takes: Parquet list columns
arrive as offsets plus flat values, exactly the Ragged form the encoder wants, with no per-row Python work."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from din_runtime.arrow import to_numpy, to_ragged
from din_runtime.encoding import Ragged

from ..errors import TableError
from .layout import STORE_KEY, StoreReads, inline, is_reference, windows
from .prepared import SEQUENCE_STORE
from .readers import read_source
from .spec import Spec


def read_table(path: str | Path, spec: Spec, keep_references: bool = False) -> pa.Table:
    """Read a sample table through the one table reader (CSV/TSV sequence cells: space-separated IDs; Parquet: list
    columns), checking its columns. A reference-layout table gets its histories rebuilt as list columns, or, with
    keep_references, keeps its references (and the store's path in its schema metadata) for raw_columns to read as
    Windows."""
    path = Path(path)
    if not path.exists():  # a file, or a folder of Parquet parts (what Spark writes)
        raise TableError(f"{path}: no such file")
    sequences = {f.name for f in spec.features if f.per_behaviour}  # per-behaviour lists
    table = read_source(path, column_types={name: pa.string() for name in sequences})
    if is_reference(table) and keep_references:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), STORE_KEY: str(path.parent / SEQUENCE_STORE)})
    elif is_reference(table):  # prepare --layout reference: histories rebuilt from the sequence store beside the table
        table = inline(table, path.parent / SEQUENCE_STORE, spec)
    absent = [name for name in [spec.label, *spec.names] if name not in table.column_names and not (name in sequences and is_reference(table))]
    if absent:
        raise TableError(f"{path}: column(s) {absent} named in the spec are absent (found {table.column_names})")
    return table


def _ragged(name: str, column: pa.ChunkedArray) -> Ragged:
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    from_text = pa.types.is_string(array.type) or pa.types.is_large_string(array.type)
    if from_text:
        array = pc.utf8_split_whitespace(array.fill_null(""))
    if not (pa.types.is_list(array.type) or pa.types.is_large_list(array.type)):
        raise TableError(f"column '{name}': a sequence must be a list column or space-separated IDs, not {array.type}")
    ragged = to_ragged(array)
    if not from_text:
        return ragged
    kept = ragged.values != ""  # an empty or blank cell splits into one empty string, not zero IDs
    rows = len(ragged.offsets) - 1
    lengths = np.bincount(np.repeat(np.arange(rows), np.diff(ragged.offsets))[kept], minlength=rows)
    offsets = np.zeros(rows + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return Ragged(ragged.values[kept].astype(np.str_), offsets)


def _row_times(name: str, table: pa.Table) -> np.ndarray:
    """Each sample's own time (the column a times feature's `at` names), as numbers."""
    if name not in table.column_names:
        raise TableError(f"column '{name}' is absent: the behaviours' times need each sample's own time there (found {table.column_names})")
    column = table.column(name)
    if pa.types.is_timestamp(column.type):
        column = column.cast(pa.int64())
    if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
        raise TableError(f"column '{name}': a sample's time must be a number or a timestamp, not {column.type}")
    return column.cast(pa.float64()).to_numpy(zero_copy_only=False)


def raw_columns(table: pa.Table, spec: Spec, reads: StoreReads | None = None) -> dict[str, Any]:
    """Each feature as the encoder takes it: a 1-D numpy array, or a Ragged for sequences (Windows over the store
    for a reference-layout table read with keep_references; `reads` shares one store read among its splits)."""
    columns: dict[str, Any] = {}
    if is_reference(table):
        store = Path(table.schema.metadata[STORE_KEY].decode())
        columns.update(windows(table, store, spec, reads))
        times = [f.name for f in spec.of_kind("times")]
        if times:  # ages depend on each sample's time: the times are copied per sample, as the inline layout holds them
            table = inline(table, store, spec, only=times)
    for feature in spec.features:
        if feature.name in columns:
            continue
        column = table.column(feature.name)
        if feature.per_behaviour:
            columns[feature.name] = _ragged(feature.name, column)
            if feature.kind == "times":
                columns[feature.at] = _row_times(feature.at, table)
        elif feature.kind == "numeric":
            if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type) or pa.types.is_null(column.type)):
                raise TableError(f"column '{feature.name}': numeric feature holds {column.type}, not numbers")
            columns[feature.name] = column.cast(pa.float64()).to_numpy(zero_copy_only=False)
        else:
            columns[feature.name] = to_numpy(column.combine_chunks())
    return columns


def labels(table: pa.Table, spec: Spec) -> np.ndarray:
    """The label column as float32 0/1; anything else is an error naming the first bad row."""
    column = table.column(spec.label)
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        raise TableError(f"column '{spec.label}': the label must be 0 or 1, found strings")
    values = column.cast(pa.float64()).to_numpy(zero_copy_only=False)
    bad = ~np.isin(values, (0.0, 1.0))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise TableError(f"column '{spec.label}', row {row}: the label must be 0 or 1, found {values[row]!r}")
    return values.astype(np.float32)
