"""The folder `din-export prepare` writes (either engine), named here only: a split table per split, the training
spec, the run's summary, the item table and, in the reference layout, the sequence store. `train-and-export
--data FOLDER`, `evaluate --rank` and the tests read it by these names."""

from __future__ import annotations

from pathlib import Path

from din_runtime.schema import SAMPLE_TIME

SPLITS = ("train", "valid", "test")  # in split-code order: a sample's split code (behaviour.TRAIN ...) indexes it
SPEC_FILE = "spec.toml"  # the spec train-and-export reads (prepare's own keys dropped)
SUMMARY_FILE = "prepare.json"  # counts, settings and timings of the run
ITEMS_FILE = "items.parquet"  # every item with its candidate-side features (evaluate --rank --items)
SEQUENCE_STORE = "sequences.parquet"  # the reference layout's behaviours, each user's contiguous and in time order
TIME_COLUMN = SAMPLE_TIME  # each sample's time, a column of every split table (a times feature's `at` by default)


def split_file(folder: Path, split: str) -> Path:
    """A split's table: a Parquet file (DuckDB's engine) or a folder of Parquet parts (Spark's)."""
    return Path(folder) / f"{split}.parquet"


def is_prepared(folder: Path) -> bool:
    """Whether `folder` is one `prepare` wrote (its training table is there)."""
    return split_file(folder, SPLITS[0]).exists()
