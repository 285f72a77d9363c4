"""The reference layout of prepared samples: each user's behaviours stored once, samples pointing into them.

`prepare --layout reference` writes `sequences.parquet` (one row per behaviour, users' behaviours contiguous and
in time order, one column per sequence feature with the values its histories hold) and sample tables that carry,
instead of list columns, `history_first` and `history_end`: the sample's history is the most recent `max_len`
rows of sequences.parquet in [history_first, history_end), exactly the rows the inline layout copies into every
sample. Reading a reference table rebuilds the inline list columns, so everything downstream is unchanged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .spec import Spec

LAYOUTS = ("inline", "reference")
SEQUENCE_STORE = "sequences.parquet"
HISTORY_FIRST, HISTORY_END = "history_first", "history_end"


class LayoutError(ValueError):
    """A reference-layout table without its sequence store, or the store without a column the spec needs."""


def is_reference(table: pa.Table) -> bool:
    return HISTORY_FIRST in table.column_names and HISTORY_END in table.column_names


def inline(table: pa.Table, store_path: Path, spec: Spec) -> pa.Table:
    """The table with each sequence feature's list column rebuilt from the store, the references dropped."""
    from .behaviour import gather_recent  # here, not above: behaviour -> logs -> tables -> layout would be a cycle
    if not store_path.is_file():
        raise LayoutError(f"{store_path}: the sequence store of this reference-layout table is missing")
    sequences = spec.of_kind("sequence")
    store = pq.read_table(store_path, columns=[f.name for f in sequences if f.name not in table.column_names])
    first = table.column(HISTORY_FIRST).to_numpy()
    end = table.column(HISTORY_END).to_numpy()
    if len(end) and (end.max() > store.num_rows or (first > end).any() or first.min() < 0):
        raise LayoutError(f"{store_path}: the table's history references run outside the store's {store.num_rows} rows")
    for feature in sequences:
        if feature.name in table.column_names:
            continue
        flat, offsets = gather_recent(np.arange(store.num_rows), first, end, int(feature.max_len))
        values = store.column(feature.name).combine_chunks().take(pa.array(flat))
        table = table.append_column(feature.name, pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), values))
    return table.drop_columns([HISTORY_FIRST, HISTORY_END])
