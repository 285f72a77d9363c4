"""The out-of-core half of `prepare`: DuckDB reads the log, counts its users and items, and sorts its events by
user and time, spilling to disk past its memory limit; Python then receives the sorted events in blocks that
each hold whole users, so everything done per user (splits, histories, negatives, fills) sees all of a user's
events while memory stays bounded by the block, not by the log.

Why DuckDB: on a 20M-event log it sorts and streams the events in about 2 s within 1 GiB, where numpy's
`lexsort` alone takes longer and needs the whole log in memory (README, "Logs at scale").
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from din_runtime.arrow import to_numpy
from din_runtime.errors import first_line

from ..errors import TableError
from .behaviour import numpy_quantile
from .readers import checked_files, csv_options, reading

STREAM_BATCH_ROWS = 262_144
LOG_ROW = "din_log_row"  # each event's row in the log (over all its files): the tie order of events at one time


def sql_text(text: str) -> str:
    """A string as an SQL literal (DuckDB)."""
    return "'" + text.replace("'", "''") + "'"


def sql_name(column: str) -> str:
    """A column name as a quoted SQL identifier (DuckDB)."""
    return '"' + column.replace('"', '""') + '"'


def _as_parquet(path: str | Path, columns: list[str], workspace: Path) -> list[Path]:
    """The log's files as Parquet holding `columns`: Parquet parts as they are; CSV or TSV streamed once into
    Parquet (pyarrow's CSV reader, so types are what reading the table whole gives)."""
    with reading(path):
        files, parquet = checked_files(path, columns)
        if parquet:
            return files
        converted = []
        for index, file in enumerate(files):
            target = workspace / f"log-{index}.parquet"
            with pacsv.open_csv(file, **csv_options(file, columns)) as reader, pq.ParquetWriter(target, reader.schema) as writer:
                for batch in reader:
                    writer.write_batch(batch)
            converted.append(target)
        return converted


def _time_number(column: str, kind: pa.DataType) -> str:
    """SQL for a time column as the number `prepare` orders by: timestamps as integers in their own unit."""
    if pa.types.is_timestamp(kind):
        per_unit = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}[kind.unit]
        return f"CAST(epoch_ns({sql_name(column)}) // {per_unit} AS DOUBLE)"
    return f"CAST({sql_name(column)} AS DOUBLE)"


def time_number(value: float | str, kind: pa.DataType, column: str) -> float:
    """A time (--since) as the number `prepare` orders by: a number as it is; for a timestamp column, an ISO-8601
    date or time too, in the column's own unit (both engines)."""
    if isinstance(value, str) and pa.types.is_timestamp(kind):
        try:
            return float(np.datetime64(value).astype(f"datetime64[{kind.unit}]").astype(np.int64))
        except ValueError:
            raise ValueError(f"--since {value!r} is neither a number nor an ISO-8601 date or time") from None
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"--since {value!r} is not a number in the units of the log's time column '{column}'") from None


@dataclass(frozen=True)
class LogOverview:
    """What must be known of the whole log before any block is processed."""

    events: int
    user_keys: np.ndarray  # sorted, unique
    item_keys: np.ndarray  # the log's items, sorted, unique
    item_events: np.ndarray  # events per item key (for popularity sampling)


class LogScan:
    """One log, readable by DuckDB: an overview of it, time quantiles, and its events sorted in user blocks."""

    def __init__(self, path: str | Path, user: str, item: str, time: str, columns: list[str], workspace: Path,
                 memory_limit: str, label: str | None = None) -> None:
        self.path, self.user, self.item, self.time, self.columns = path, user, item, time, columns
        self.required = [user, item, time] + ([label] if label else [])  # never empty (rules.py: null or NaN)
        self.spilled_bytes: int | None = None
        files = _as_parquet(path, columns, workspace)
        self.schema = pads.dataset([str(f) for f in files], format="parquet").schema
        try:
            self.connection = duckdb.connect(config={
                "memory_limit": memory_limit, "temp_directory": str(workspace), "threads": os.cpu_count() or 1,
                "preserve_insertion_order": False,
            })
        except duckdb.Error as error:
            raise ValueError(f"memory limit {memory_limit!r} is not a size such as 500MB or 4GB ({first_line(error)})") from None
        offset, parts = 0, []
        for file in files:
            parts.append(f"SELECT {', '.join(map(sql_name, columns))}, file_row_number + {offset} AS {LOG_ROW} "
                         f"FROM read_parquet({sql_text(str(file))}, file_row_number = true)")
            offset += pq.ParquetFile(file).metadata.num_rows
        self.connection.sql(f"CREATE TEMPORARY VIEW events AS {' UNION ALL '.join(parts)}")

    def close(self) -> None:
        self.connection.close()

    def overview(self) -> LogOverview:
        """Counts, keys and a check that user, item, time and label are never empty, null or NaN alike (naming the
        first empty row)."""
        checks = ", ".join(f"count_if({self._missing(c)}), min({LOG_ROW}) FILTER (WHERE {self._missing(c)})" for c in self.required)
        found = self.connection.sql(f"SELECT count(*), {checks} FROM events").fetchall()[0]
        for index, column in enumerate(self.required):
            empty, first = found[1 + 2 * index], found[2 + 2 * index]
            if empty:
                raise TableError(f"{self.path}: column '{column}' is empty (null or NaN) in {empty} row(s), first at row {first}")
        users = self._column(f"SELECT DISTINCT {sql_name(self.user)} AS key FROM events", self.user)
        items = self.connection.sql(f"SELECT {sql_name(self.item)} AS key, count(*) AS n FROM events GROUP BY 1").to_arrow_table()
        item_keys = to_numpy(items.column("key").cast(self.schema.field(self.item).type))
        order = np.argsort(item_keys, kind="stable")
        return LogOverview(int(found[0]), np.sort(users), item_keys[order], to_numpy(items.column("n"))[order].astype(np.int64))

    def _missing(self, column: str) -> str:
        """SQL true where a value is missing: null, or NaN in a floating-point column. Not isnan(): DuckDB 2.0 folds it
        to false from a Parquet column's min and max statistics, which leave NaN out; isfinite() is evaluated."""
        name = sql_name(column)
        if pa.types.is_floating(self.schema.field(column).type):
            return f"({name} IS NULL OR (NOT isfinite({name}) AND abs({name}) <> 'infinity'::DOUBLE))"
        return f"({name} IS NULL)"

    def time_quantiles(self, quantiles: list[float], since: float | None = None) -> list[float]:
        """numpy's default (linear) quantiles of the event times (those at or after `since`, where given), computed
        out of core: DuckDB finds the two order statistics each quantile interpolates (quantile_disc at the middle
        of their index, which no rounding moves off it), numpy's formula interpolates them (behaviour.numpy_quantile)."""
        number = _time_number(self.time, self.schema.field(self.time).type)
        where = "" if since is None else f" WHERE {number} >= {float(since)!r}"
        count = self.connection.sql(f"SELECT count(*) FROM events{where}").fetchall()[0][0]
        if count == 0:
            raise ValueError(f"no event of the log is at or after --since {since:g}")
        below = [math.floor((count - 1) * q) for q in quantiles]
        wanted = sorted({min(index, count - 1) for k in below for index in (k, k + 1)})
        listed = ", ".join(repr((index + 0.5) / count) for index in wanted)
        found = dict(zip(wanted, self.connection.sql(f"SELECT quantile_disc({number}, [{listed}]) FROM events{where}").fetchall()[0][0],
                         strict=True))
        return [numpy_quantile((found[k], found[min(k + 1, count - 1)]), count, q) for k, q in zip(below, quantiles, strict=True)]

    def time_number(self, value: float | str) -> float:
        return time_number(value, self.schema.field(self.time).type, self.time)

    def blocks(self, min_events: int) -> Iterator[pa.Table]:
        """The events sorted by user, time and log row, in tables of at least `min_events` rows (the last may be
        smaller) that each hold all events of their users; columns typed as in the source files."""
        target = pa.schema([self.schema.field(c) for c in self.columns])
        query = (f"SELECT {', '.join(map(sql_name, self.columns))} FROM events "
                 f"ORDER BY {sql_name(self.user)}, {sql_name(self.time)}, {LOG_ROW}")
        carry: pa.Table | None = None
        try:
            reader = self.connection.sql(query).to_arrow_reader(STREAM_BATCH_ROWS)
        except duckdb.OutOfMemoryException as error:
            raise MemoryError(f"sorting the log: {first_line(error)}; raise --memory-limit or free disk for the spill") from None
        for batch in reader:
            if self.spilled_bytes is None:  # the sort is complete once its first rows arrive
                self.spilled_bytes = self._spilled_bytes()
            table = pa.Table.from_batches([batch]).cast(target)
            table = table if carry is None else pa.concat_tables([carry, table])
            start = 0
            for cut in _user_cuts(table.column(self.user), min_events):
                yield table.slice(start, cut - start)
                start = cut
            carry = table.slice(start)
        if carry is not None and carry.num_rows:
            yield carry

    def _spilled_bytes(self) -> int:
        """What the sort wrote to disk beyond its memory limit (DuckDB's temporary files)."""
        found = self.connection.cursor().sql("SELECT coalesce(sum(size), 0) FROM duckdb_temporary_files()").fetchall()
        return int(found[0][0])

    def _column(self, query: str, column: str) -> np.ndarray:
        return to_numpy(self.connection.sql(query).to_arrow_table().column("key").cast(self.schema.field(column).type))


def _user_cuts(users: pa.ChunkedArray, min_events: int) -> np.ndarray:
    """Where to cut a table sorted by user into blocks of whole users, each from a multiple of `min_events` rows
    on to the next user's start; the last user's run is never closed (its events may continue in the next batch)."""
    starts = np.flatnonzero(to_numpy(pc.not_equal(users[1:], users[:-1]))) + 1
    if len(starts) == 0:
        return starts
    targets = np.arange(min_events, starts[-1] + 1, min_events)
    return np.unique(starts[np.searchsorted(starts, targets)])
