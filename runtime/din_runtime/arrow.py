"""Arrow columns as numpy arrays and Ragged lists: the one conversion every reader of tables, logs and stores uses,
in both packages. Needs pyarrow, which din_runtime itself only needs for Parquet input (its `parquet` extra): import
this module only where pyarrow is already in use."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .encoding import Ragged


def to_numpy(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A flat Arrow column as one numpy array; numbers with nulls as NaN (or None for integers). Text goes through
    its dictionary (a gather of the few distinct strings): without nulls into a fixed-width str_ array, not an
    object array of millions of Python strings, which every step after (missing-value checks, vocabulary lookups,
    sorted-key searches) would have to walk one by one; with nulls into an object array whose rows share the
    distinct strings (8 bytes a row, not a string object each) and hold None where missing."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
        encoded = array.dictionary_encode()
        if array.null_count == 0:
            return np.asarray(encoded.dictionary.to_pylist(), dtype=np.str_)[encoded.indices.to_numpy()]
        distinct = np.asarray([*encoded.dictionary.to_pylist(), None], dtype=object)
        return distinct[encoded.indices.fill_null(len(encoded.dictionary)).to_numpy()]
    return array.to_numpy(zero_copy_only=False)


def to_ragged(column: pa.ChunkedArray | pa.Array) -> Ragged:
    """A list column as a Ragged (flat values, offsets); a missing list is an empty one."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    lengths = pc.fill_null(pc.list_value_length(array), 0).to_numpy().astype(np.int64)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return Ragged(to_numpy(pc.list_flatten(array)), offsets)
