"""The reference layout of prepared samples: each user's behaviours stored once, samples pointing into them.

`prepare --layout reference` writes `sequences.parquet` (one row per behaviour, users' behaviours contiguous and
in time order, one column per sequence feature with the values its histories hold) and sample tables that carry,
instead of list columns, `history_first` and `history_end`: the sample's history is the most recent `max_len`
rows of sequences.parquet in [history_first, history_end), exactly the rows the inline layout copies into every
sample. Reading a reference table rebuilds the inline list columns, so everything downstream is unchanged.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from din_runtime.arrow import to_numpy

from .behaviour import gather_recent
from .reserved import HISTORY_END, HISTORY_FIRST
from .spec import Spec

STORE_KEY = b"din_export.sequence_store"  # schema metadata of a table read with keep_references


class LayoutError(ValueError):
    """A reference-layout table without its sequence store, or the store without a column the spec needs."""


def is_reference(table: pa.Table) -> bool:
    return HISTORY_FIRST in table.column_names and HISTORY_END in table.column_names


def _references(table: pa.Table, store_path: Path) -> tuple[int, np.ndarray, np.ndarray]:
    """(the store's rows, each sample's history_first, history_end), checked against each other."""
    if not store_path.exists():  # a file, or a folder of Parquet parts (prepare --engine spark)
        raise LayoutError(f"{store_path}: the sequence store of this reference-layout table is missing")
    first, end = table.column(HISTORY_FIRST).to_numpy(), table.column(HISTORY_END).to_numpy()
    rows = pads.dataset(str(store_path), format="parquet").count_rows()
    if len(end) and (end.max() > rows or (first > end).any() or first.min() < 0):
        raise LayoutError(f"{store_path}: the table's history references run outside the store's {rows} rows")
    return rows, first, end


StoreReads = dict[tuple[str, str], np.ndarray]  # (store path, feature) -> the raw values read


def store_values(store_path: Path, name: str, reads: StoreReads | None = None) -> np.ndarray:
    """A sequence feature's raw values in the store. With `reads` (one run's, e.g. data.splits.load_data's), a
    store already read there is not read again: the train, valid and test tables of one prepared folder share one
    store, so they share one array."""
    key = (str(store_path.resolve()), name)
    if reads is not None and key in reads:
        return reads[key]
    values = to_numpy(pq.read_table(store_path, columns=[name]).column(name).combine_chunks())
    if reads is not None:
        reads[key] = values
    return values


def memory_mapped(values: np.ndarray) -> np.ndarray:
    """`values` copied into an anonymous temporary file mapped into memory: pages the kernel may drop under
    pressure and read back, where anonymous memory could only be swapped; the file goes with the last reference."""
    if values.size == 0 or values.dtype == object:
        return values
    with tempfile.TemporaryFile() as file:
        mapped = np.memmap(file, dtype=values.dtype, mode="w+", shape=values.shape)
        mapped[:] = values
    return np.asarray(mapped)  # a plain ndarray over the mapping (it keeps the mapping alive)


def history_lengths(spec: Spec) -> dict[str, int]:
    """Each per-behaviour column of the spec and how many of the most recent behaviours it keeps: every sequence
    its max_len, the behaviours' times the longest of them."""
    kept = {f.name: int(f.max_len) for f in spec.of_kind("sequence")}
    return {**kept, **{f.name: max(kept.values()) for f in spec.of_kind("times")}}


def inline(table: pa.Table, store_path: Path, spec: Spec, only: list[str] | None = None) -> pa.Table:
    """The table with each per-behaviour column (the sequences and times, or those named in `only`) rebuilt as a
    list column from the store; the references are dropped unless `only` is given."""
    kept = {name: length for name, length in history_lengths(spec).items()
            if name not in table.column_names and (only is None or name in only)}
    rows, first, end = _references(table, store_path)
    absent = [name for name in kept if name not in pq.read_schema(store_path).names] if Path(store_path).is_file() else []
    if absent:
        raise LayoutError(f"{store_path}: the sequence store has no column {absent[0]!r}, which the spec names")
    store = pq.read_table(store_path, columns=list(kept))
    for name, length in kept.items():
        flat, offsets = gather_recent(np.arange(rows), first, end, length)
        values = store.column(name).combine_chunks().take(pa.array(flat))
        table = table.append_column(name, pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), values))
    return table if only is not None else table.drop_columns([HISTORY_FIRST, HISTORY_END])


def occurrences(start: np.ndarray, end: np.ndarray, size: int) -> np.ndarray:
    """How many of the windows [start, end) hold each of `size` store rows: how often the inline layout would have
    copied that behaviour. Counts and vocabularies weighted by it equal the inline layout's."""
    change = np.bincount(start, minlength=size + 1)[:size + 1] - np.bincount(end, minlength=size + 1)[:size + 1]
    return np.cumsum(change)[:size]


@dataclass(frozen=True)
class Windows:
    """A sequence feature in the reference layout: the store's values, and each sample's window into them (the
    most recent max_len store rows before `end`, from `start`)."""

    values: Any
    start: np.ndarray
    end: np.ndarray

    def __len__(self) -> int:
        return len(self.end)

    @cached_property
    def lengths(self) -> np.ndarray:
        return self.end - self.start

    @cached_property
    def weights(self) -> np.ndarray:
        """How often each store row counts (occurrences); computed once, as vocabulary fitting, the attribute
        tables and the L2 frequencies all ask."""
        return occurrences(self.start, self.end, len(self.values))

    def with_values(self, values: Any) -> Windows:
        return Windows(values, self.start, self.end)

    def padded(self, rows: np.ndarray, width: int) -> np.ndarray:
        """These samples' histories left-aligned in a (rows, width) array padded with 0, as the inline layout's
        encoded arrays are (values must be encoded indices): one gather of a (rows, width) block of the store."""
        positions = np.arange(width)
        if len(self.values) == 0:  # no behaviour anywhere: every history is empty
            return np.zeros((len(rows), width), dtype=np.int64)
        index = self.start[rows][:, None] + positions
        np.minimum(index, len(self.values) - 1, out=index)  # positions past a window are read, then zeroed
        out = self.values.take(index)
        out[positions >= np.minimum(self.lengths[rows], width)[:, None]] = 0
        return out


def windows(table: pa.Table, store_path: Path, spec: Spec, reads: StoreReads | None = None) -> dict[str, Windows]:
    """Each sequence feature of a reference-layout table as Windows over the store's raw values (store_values)."""
    _, first, end = _references(table, store_path)
    return {f.name: Windows(store_values(store_path, f.name, reads), np.maximum(first, end - int(f.max_len)), end)
            for f in spec.of_kind("sequence")}
