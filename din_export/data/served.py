"""`din-export prepare --served DIR --clicks CLICKS`: the rows a server scored (`din-runtime serve --log-requests
DIR`) labelled by the clicks they got, as training samples. Each sample's features are the ones the model was fed
when it scored the row, histories included: what the model saw is what it learns from, so training and serving
cannot drift apart (no skew by construction).

The join, in DuckDB (out of core: the served log may be far larger than memory):
- `request`: a served row is a click (label 1) when the clicks hold its request id and its item. Exact; needs the
  client to report the request id it got back (the response's `id`) with each click.
- `window`: a served row is a click when the same user clicked the same item within `window` seconds (in the log's
  time units) at or after the row was served. For clients that report clicks as plain events (user, item, time).
A served row no click matches is a 0. Rows are then split by the recipe's [split] (by time or by user, as
`prepare` splits a log) and written in the prepared folder's layout, sorted by user and time.
"""

from __future__ import annotations

import os
import tempfile
import time as clock
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.parquet as pq

from din_runtime.errors import first_line
from din_runtime.served_log import REQUEST_ID, ROW, TIME

from ..config import SERVED_JOINS as JOINS
from ..errors import TableError
from ..files import staged_bundle, write_json
from .prepared import ITEMS_FILE, SPEC_FILE, SPLITS, SUMMARY_FILE, TIME_COLUMN, split_file
from .readers import read_source
from .recipe import LogConfig, SplitConfig
from .rules import feature_side, read_recipe, training_spec
from .scan import sql_name, sql_text
from .spec import Spec, spec_to_toml

CLICK_TIME = "time"  # a click's time column: as an event's (POST /v2/events)


def key_features(spec: Spec, config: LogConfig) -> tuple[str, str]:
    """The features that are the log's user and item: the names served rows and clicks carry them under."""
    def named(column: str, role: str) -> str:
        found = [f.name for f in spec.features if f.kind == "categorical" and f.source == "log" and f.column == column]
        if not found:
            raise TableError(f"the recipe has no categorical feature of the log's {role} column '{column}'")
        return found[0]
    return named(config.user, "user"), named(config.item, "item")


def _split_sql(split: SplitConfig, user: str) -> str:
    """Each row's split code (0 train, 1 valid, 2 test) as `prepare` splits events: by global time quantiles (numpy's
    linear quantile, as DuckDB's quantile_cont), or each user's last rows."""
    if split.mode == "global_time":
        test = f"{split.test_from}" if split.test_from is not None else f"(SELECT quantile_cont({TIME}, {1 - split.test}) FROM labelled)"
        valid = (f"{split.valid_from}" if split.valid_from is not None
                 else f"(SELECT quantile_cont({TIME}, {1 - split.test - split.valid}) FROM labelled)")
        return f"CASE WHEN {TIME} >= {test} THEN 2 WHEN {TIME} >= {valid} THEN 1 ELSE 0 END"
    size = f"count(*) OVER (PARTITION BY {sql_name(user)})"
    from_end = f"({size} - row_number() OVER (PARTITION BY {sql_name(user)} ORDER BY {TIME}, {REQUEST_ID}, {ROW}))"

    def amount(value: float) -> str:
        return str(int(value)) if isinstance(value, int) else f"floor({value} * {size})"

    test, valid = amount(split.test), amount(split.valid)
    return f"CASE WHEN {from_end} < {test} THEN 2 WHEN {from_end} < {test} + {valid} THEN 1 ELSE 0 END"


def prepare_served(recipe: Path, served: Path, clicks: Path, out: Path, join: str = JOINS[0], window: float | None = None,
                   model: str | None = None, memory_limit: str = "2GB") -> dict[str, Any]:
    """Write the prepared folder `out` from the served log `served` (one model's rows: `model`, needed where the
    log holds several) labelled by `clicks` (`join`: request or window, with `window` in the log's time units).
    Returns the summary (also prepare.json)."""
    if join not in JOINS:
        raise ValueError(f"join must be one of {JOINS}, not {join!r}")
    if (join == "window") != (window is not None):
        raise ValueError("--window (how long after a row was served a click counts) goes with --join window, and only with it")
    if window is not None and not window > 0:
        raise ValueError(f"--window must be above 0, not {window}")
    started = clock.perf_counter()
    spec, config = read_recipe(recipe)
    user, item = key_features(spec, config)
    files = sorted(str(p) for p in Path(served).rglob("*.parquet") if not p.name.startswith("."))
    if not files:
        raise TableError(f"{served}: no served log files (*.parquet under it; din-runtime serve --log-requests writes them)")
    needed = [REQUEST_ID, item] if join == "request" else [user, item, CLICK_TIME]
    click_table = read_source(clicks, needed)
    with staged_bundle(out) as staging, tempfile.TemporaryDirectory(prefix=f".{Path(out).name}.spill-", dir=staging.parent) as spill:
        try:
            connection = duckdb.connect(config={"memory_limit": memory_limit, "temp_directory": spill, "threads": os.cpu_count() or 1})
        except duckdb.Error as error:
            raise ValueError(f"memory limit {memory_limit!r} is not a size such as 500MB or 4GB ({first_line(error)})") from None
        try:
            summary = _write(connection, spec, config, files, click_table, staging, join, window, model, user, item)
        finally:
            connection.close()
        (staging / SPEC_FILE).write_text(spec_to_toml(training_spec(spec, config)), encoding="utf-8")
        summary.update(join=join, window=window, seconds=round(clock.perf_counter() - started, 3), recipe=str(recipe),
                       sources={"served": str(served), "clicks": str(clicks)}, layout="inline")
        write_json(staging / SUMMARY_FILE, summary)
    return summary


def _write(connection: duckdb.DuckDBPyConnection, spec: Spec, config: LogConfig, files: list[str], click_table: Any,
           staging: Path, join: str, window: float | None, model: str | None, user: str, item: str) -> dict[str, Any]:
    listed = ", ".join(map(sql_text, files))
    connection.sql(f"CREATE TEMPORARY VIEW served AS SELECT * FROM read_parquet([{listed}], union_by_name = true)")
    columns = {name for name, in connection.sql("SELECT column_name FROM (DESCRIBE served)").fetchall()}
    absent = [f.name for f in spec.features if f.name not in columns]
    if absent:
        raise TableError(f"the served log lacks feature(s) {absent} of the recipe (logged by a model of another recipe?)")
    models = [m for m, in connection.sql("SELECT DISTINCT model FROM served ORDER BY model").fetchall()]
    if model is None and len(models) > 1:
        raise TableError(f"the served log holds the models {models}; name one with --served-model")
    if model is not None and model not in models:
        raise TableError(f"--served-model: the served log holds no rows of '{model}' (it holds {models})")
    model = model or models[0]
    connection.register("click_table", click_table)
    types = dict(connection.sql("SELECT column_name, column_type FROM (DESCRIBE served)").fetchall())
    key = f"TRY_CAST({sql_name(item)} AS {types[item]}) AS {sql_name(item)}"  # compared in the served log's type
    if join == "request":
        connection.sql(f"CREATE TEMPORARY VIEW clicks AS SELECT CAST({REQUEST_ID} AS VARCHAR) AS {REQUEST_ID}, {key} FROM click_table")
    else:
        connection.sql(f"CREATE TEMPORARY VIEW clicks AS SELECT TRY_CAST({sql_name(user)} AS {types[user]}) AS {sql_name(user)}, {key}, "
                       f"CAST({sql_name(CLICK_TIME)} AS DOUBLE) AS {TIME} FROM click_table")
    if join == "request":
        clicked = (f"EXISTS (SELECT 1 FROM clicks c WHERE c.{REQUEST_ID} = s.{REQUEST_ID} "
                   f"AND c.{sql_name(item)} = s.{sql_name(item)})")
    else:
        clicked = (f"EXISTS (SELECT 1 FROM clicks c WHERE c.{sql_name(user)} = s.{sql_name(user)} AND c.{sql_name(item)} = s.{sql_name(item)} "
                   f"AND c.{TIME} >= s.{TIME} AND c.{TIME} <= s.{TIME} + {float(window)})")  # type: ignore[arg-type]
    features = ", ".join(f"s.{sql_name(f.name)}" for f in spec.features)
    connection.sql(f"CREATE TEMPORARY TABLE labelled AS SELECT {features}, s.{REQUEST_ID}, s.{ROW}, s.{TIME}, "
                   f"CAST({clicked} AS TINYINT) AS {sql_name(spec.label)} FROM served s WHERE s.model = {sql_text(model)}")
    connection.sql(f"CREATE TEMPORARY TABLE split AS SELECT *, {_split_sql(config.split, user)} AS din_split FROM labelled")
    rows = {}
    kept = ", ".join([sql_name(f.name) for f in spec.features] + [sql_name(spec.label), f"{TIME} AS {TIME_COLUMN}"])
    for code, name in enumerate(SPLITS):
        rows[name] = connection.sql(f"SELECT count(*) FROM split WHERE din_split = {code}").fetchall()[0][0]
        connection.sql(f"COPY (SELECT {kept} FROM split WHERE din_split = {code} ORDER BY {sql_name(user)}, {TIME}, {REQUEST_ID}, {ROW}) "
                       f"TO {sql_text(str(split_file(staging, name)))} (FORMAT parquet)")
    empty = [name for name in SPLITS if rows[name] == 0]
    if empty:
        raise ValueError(f"the split leaves {empty} without samples; adjust [split] (valid/test) for this log")
    item_side = [f.name for f in spec.features if not f.per_behaviour and feature_side(f, config) == "item" and f.name != item]
    pq.write_table(connection.sql(f"SELECT {sql_name(item)}" + "".join(f", any_value({sql_name(n)}) AS {sql_name(n)}" for n in item_side)
                                  + f" FROM labelled GROUP BY {sql_name(item)} ORDER BY {sql_name(item)}").to_arrow_table(), staging / ITEMS_FILE)
    served_rows, positives, users, requests = connection.sql(
        f"SELECT count(*), sum({sql_name(spec.label)}), count(DISTINCT {sql_name(user)}), count(DISTINCT {REQUEST_ID}) FROM labelled").fetchall()[0]
    return {"model": model, "served_rows": served_rows, "requests": requests, "users": users, "clicks": click_table.num_rows,
            "positives": int(positives or 0), "rows": rows}
