"""The steps of `prepare --engine spark`: the recipe as Spark DataFrame operations (spark.py runs them and writes the
folder). Each step restates a rule of the DuckDB engine (rules.py, behaviour.py) beside the name of what it mirrors.

Nothing proportional to the log, its users or its items is collected to the driver: codes, global ordinals and
the popularity draw's cumulative weights are prefix sums computed per partition (the driver sees one total per
partition: running_sum), joins replace every lookup (the popularity draw is a bucketed range join), and the driver
reads only counts, one row per log file, two time order statistics and the first bad row of a failed check
(tests/test_spark.py counts the rows reaching the driver for a log and one four times its size).
"""

from __future__ import annotations

import math
from functools import cached_property
from pathlib import Path
from typing import Any

from ..errors import TableError
from .behaviour import DOWNSAMPLE_ROUND, numpy_quantile
from .layout import history_lengths
from .prepared import TIME_COLUMN
from .readers import checked_files
from .recipe import LogConfig
from .reserved import HISTORY_END, HISTORY_FIRST
from .rules import NUMBER_PATTERN, Sources, event_features, feature_side, log_columns, table_columns
from .spark_ops import ROW, functions, indexed, running_sum, uniform_udf, window
from .spec import PREVIOUS_FILL, FeatureSpec, Spec


class SparkPrepare:
    """One run of the recipe on a Spark session."""

    def __init__(self, spark: Any, spec: Spec, config: LogConfig, sources: Sources, since: float | None) -> None:
        self.spark, self.spec, self.config, self.sources, self.since = spark, spec, config, sources, since
        self.F = functions()

    # -- reading ---------------------------------------------------------------------------------------------------
    def read_log(self) -> Any:
        F, config = self.F, self.config
        files, parquet = checked_files(self.sources.log, log_columns(self.spec, self.config))
        if not parquet:
            raise TableError(f"{self.sources.log}: --engine spark reads Parquet logs (a file, folder or glob of parts); "
                             "convert CSV once, e.g. with pyarrow")
        columns = log_columns(self.spec, config)
        self.spark.conf.set("spark.sql.legacy.parquet.nanosAsLong", "true")  # nanosecond timestamps as integers
        frame = self.spark.read.parquet(*[str(f) for f in files])
        frame = frame.select(*columns, F.col("_metadata.row_index").alias("_r"), F.col("_metadata.file_path").alias("_f"))
        counts = sorted(frame.groupBy("_f").count().collect(), key=lambda r: r["_f"])  # one row per file
        offsets, total = [], 0
        for row in counts:
            offsets.append((row["_f"], total))
            total += row["count"]
        offset_frame = self.spark.createDataFrame(offsets, "_f string, _o long")
        frame = frame.join(F.broadcast(offset_frame), "_f").withColumn(ROW, F.col("_r") + F.col("_o")).drop("_f", "_r", "_o")
        return frame.withColumn("_t", self.time_number_column(frame))

    @cached_property
    def time_kind(self) -> Any:
        """The time column's Arrow type, from the first file's footer (the driver reads no data); read once."""
        import pyarrow.dataset as pads

        files, _ = checked_files(self.sources.log, log_columns(self.spec, self.config))
        return pads.dataset([str(files[0])], format="parquet").schema.field(self.config.time).type

    def time_number_column(self, frame: Any) -> Any:
        """The time as the number both engines order by: a timestamp as an integer in its own unit (scan._time_number)."""
        import pyarrow as pa

        F, kind = self.F, self.time_kind
        column = F.col(self.config.time)
        if not pa.types.is_timestamp(kind) or kind.unit == "ns":  # nanoseconds arrive as the integers they are
            return column.cast("double")
        micros = F.expr(f"timestampdiff(MICROSECOND, TIMESTAMP_NTZ'1970-01-01 00:00:00', `{self.config.time}`)")
        if frame.schema[self.config.time].dataType.typeName() == "timestamp":  # with a time zone: UTC instants
            micros = F.unix_micros(column)
        per_unit = {"s": 1_000_000, "ms": 1_000, "us": 1}[kind.unit]
        return (micros / F.lit(per_unit)).cast("double")

    def check_log(self, log: Any) -> int:
        F, config = self.F, self.config
        aggregates = [F.count(F.lit(1)).alias("events")]
        required = [config.user, config.item, config.time] + ([config.label] if config.label else [])
        for index, column in enumerate(required):
            missing = self.missing(log, column)
            aggregates += [F.sum(missing.cast("long")).alias(f"n{index}"), F.min(F.when(missing, F.col(ROW))).alias(f"f{index}")]
        found = log.agg(*aggregates).collect()[0]
        for index, column in enumerate(required):
            if found[f"n{index}"]:
                raise TableError(f"{self.sources.log}: column '{column}' is empty (null or NaN) in {found[f'n{index}']} row(s), "
                                 f"first at row {found[f'f{index}']}")
        return int(found["events"])

    def missing(self, frame: Any, column: str) -> Any:
        """A value is missing where it is null, or NaN in a floating-point column (rules.py; Spark keeps NaN a value)."""
        F = self.F
        floating = frame.schema[column].dataType.typeName() in ("double", "float")
        return F.col(column).isNull() | F.isnan(column) if floating else F.col(column).isNull()

    def table(self, path: Path | None, key: str | None, source: str) -> Any:
        if path is None:
            return None
        columns = table_columns(self.spec, source, key)
        files, parquet = checked_files(path, columns)
        if parquet:
            return self.spark.read.parquet(*[str(f) for f in files]).select(*columns)
        from .readers import read_source  # an attribute table in CSV or TSV: small enough to read on the driver

        return self.spark.createDataFrame(read_source(path, columns).to_pandas())

    # -- values ----------------------------------------------------------------------------------------------------
    def shaped(self, frame: Any, feature: FeatureSpec) -> Any:
        """prepare._shape of the feature's column of `frame`: the first token of a token list; numbers parsed from
        text (text that is no number missing), other numbers cast as they are."""
        F = self.F
        column = F.col(feature.column)
        text_typed = frame.schema[feature.column].dataType.typeName() == "string"
        if feature.first_token:
            text = column.cast("string")
            column, text_typed = F.when(text.rlike(r"^\s*\S"), F.regexp_extract(text, r"^\s*(\S+)", 1)), True
        if feature.kind == "numeric":
            if text_typed:
                column = F.when(column.rlike(NUMBER_PATTERN), column)
            column = column.cast("double")
            column = F.when(~F.isnan(column), column)  # rules: NaN is missing, a null (what DuckDB's engine writes)
        return column

    def side(self, feature: FeatureSpec) -> str:
        return feature_side(feature, self.config)

    # -- the recipe, step by step (each mirrors the DuckDB engine's numpy rule it names) -----------------------------
    @property
    def by_user(self) -> Any:
        """A user's events in time order, ties in log order."""
        return window(self.config.user).orderBy("_t", ROW)

    def labelled(self, log: Any) -> Any:
        """The label of each event (1 for a log of positives; label_min's threshold or a 0/1 column), whether it is
        in the window of samples (--since) and its split code."""
        F, config = self.F, self.config
        if config.label is None:
            log = log.withColumn("_label", F.lit(1).cast("byte"))
        else:
            value = F.col(config.label).cast("double")  # never empty: check_log
            if config.label_min is not None:
                log = log.withColumn("_label", (value >= config.label_min).cast("byte"))
            else:
                bad = log.filter(~value.isin(0.0, 1.0)).orderBy(config.user, "_t", ROW).select(value.alias("v")).limit(1).collect()
                if bad:
                    raise TableError(f"log column '{config.label}': labels must be 0 or 1 (or set [log] label_min), found {bad[0]['v']!r}")
                log = log.withColumn("_label", value.cast("byte"))
        log = log.withColumn("_window", F.lit(True) if self.since is None else F.col("_t") >= float(self.since))
        return log.withColumn("_split", self.split_codes(log))

    def with_event_values(self, log: Any) -> Any:
        """Each event feature's value, `_v_NAME`; the `previous` fill as behaviour.forward_fill (a user's leading gaps
        stay missing)."""
        from pyspark.sql import Window

        F = self.F
        for feature in event_features(self.spec, self.config):
            column = self.shaped(log, feature)
            if feature.kind == "numeric" and feature.fill == PREVIOUS_FILL:
                column = F.last(column, ignorenulls=True).over(self.by_user.rowsBetween(Window.unboundedPreceding, Window.currentRow))
            log = log.withColumn(f"_v_{feature.name}", column)
        return log

    def attribute_tables(self, log: Any) -> dict[str, Any]:
        """The item and user tables given, keyed by `_key` in the log's key type, with each feature's value `_a_NAME`;
        a key twice in one table is an error naming it."""
        F, config, sources = self.F, self.config, self.sources
        tables = {}
        for source, path, key, log_key in (("items", sources.items, config.item_key, config.item),
                                           ("users", sources.users, config.user_key, config.user)):
            frame = self.table(path, key, source)
            if frame is None:
                continue
            duplicate = frame.groupBy(key).count().filter("count > 1").limit(1).collect()
            if duplicate:
                raise TableError(f"{path}: key '{duplicate[0][key]}' appears {duplicate[0]['count']} times in column '{key}'")
            shaped = [F.col(key).cast(log.schema[log_key].dataType).alias("_key")]
            shaped += [self.shaped(frame, f).alias(f"_a_{f.name}") for f in self.spec.features if not f.per_behaviour and f.source == source]
            tables[source] = frame.select(*shaped)
        return tables

    def item_universe(self, log: Any, tables: dict[str, Any]) -> Any:
        """Every item key of the log and of the item table, once (`_key`)."""
        keys = log.select(self.F.col(self.config.item).alias("_key"))
        if "items" in tables:
            keys = keys.union(tables["items"].select("_key"))
        return keys.distinct()

    def with_values(self, frame: Any, item_column: str, names: list[str], prefix: str, tables: dict[str, Any]) -> Any:
        """Columns `prefix + name` with each named feature's value for the frame's events and item (rules.feature_side)."""
        F, user = self.F, self.config.user
        for feature in (f for f in self.spec.features if f.name in names):
            side = self.side(feature)
            if side == "item" and feature.source == "log":
                frame = frame.withColumn(prefix + feature.name, F.col(item_column))
            elif side == "user" and feature.source == "log":
                frame = frame.withColumn(prefix + feature.name, F.col(user))
            elif side in ("item", "user"):
                table = tables["items" if side == "item" else "users"].select("_key", F.col(f"_a_{feature.name}").alias(prefix + feature.name))
                frame = frame.join(table, frame[item_column if side == "item" else user] == table["_key"], "left").drop("_key")
            else:
                frame = frame.withColumn(prefix + feature.name, F.col(f"_v_{feature.name}"))
        return frame

    def behaviours(self, log: Any, tables: dict[str, Any]) -> Any:
        """The positives, numbered `_b` per user in time order, with the values their histories hold (`_h_NAME`)."""
        F, user = self.F, self.config.user
        shared = sorted({s.shares for s in self.spec.of_kind("sequence")})
        behaviours = log.filter(F.col("_label") == 1).withColumn("_b", F.row_number().over(self.by_user) - 1)
        behaviours = self.with_values(behaviours, self.config.item, shared, "_h_", tables).withColumn(BEHAVIOUR_TIME, F.col("_t"))
        return behaviours.select(user, "_b", *[f"_h_{n}" for n in shared], BEHAVIOUR_TIME)

    def with_history_ends(self, log: Any) -> Any:
        """`_end`: how many of the user's behaviours lie strictly before the event in time (behaviour.history_bounds)."""
        from pyspark.sql import Window

        F, user = self.F, self.config.user
        positive = (F.col("_label") == 1).cast("long")
        up_to = F.sum(positive).over(window(user).orderBy("_t").rangeBetween(Window.unboundedPreceding, Window.currentRow))
        return log.withColumn("_end", up_to - F.sum(positive).over(window(user, "_t")))

    def samples(self, log: Any) -> tuple[Any, int]:
        """The window's events as samples (a labelled log's training non-clicks downsampled by behaviour.kept_events'
        hash), with `_item` and `_owner`; and how many were dropped."""
        F, config = self.F, self.config
        samples, dropped = log.filter("_window"), 0
        if config.label is not None and config.sampling.keep_negatives < 1:
            users = indexed(log.select(config.user).distinct(), [config.user], "_user_code")
            coded = log.withColumn("_within", F.row_number().over(self.by_user) - 1).join(users, config.user)
            key = F.shiftleft(F.col("_user_code"), 32).bitwiseOR(F.col("_within"))
            coded = coded.withColumn("_u", uniform_udf(config.sampling.seed)(key, F.lit(DOWNSAMPLE_ROUND)))
            drop = (F.col("_label") == 0) & (F.col("_split") == 0) & (F.col("_u") >= config.sampling.keep_negatives)
            samples = coded.filter(F.col("_window") & ~drop).drop("_within", "_user_code", "_u")
            dropped = coded.filter(F.col("_window") & drop).count()
        return samples.withColumn("_item", F.col(config.item)).withColumn("_owner", F.col(ROW)), dropped

    def sequence_store(self, log: Any, behaviours: Any, samples: Any) -> tuple[Any, Any]:
        """The reference layout (layout.py): each user's behaviours once, in time order, and the samples with the
        range of the store their history lies in."""
        F, user = self.F, self.config.user
        per_user = log.groupBy(user).agg(F.sum((F.col("_label") == 1).cast("long")).alias("_n"))
        bases = running_sum(per_user, [user], F.col("_n"), "_base")[0].select(user, "_base")
        store = behaviours.orderBy(user, "_b").select(*[F.col(_history(f)).alias(f.name) for f in self.spec.features if f.per_behaviour])
        samples = samples.join(bases, user).withColumn(HISTORY_FIRST, F.col("_base")).withColumn(HISTORY_END, F.col("_base") + F.col("_end"))
        return store, samples

    def with_history_lists(self, behaviours: Any, samples: Any) -> Any:
        """The inline layout: behaviour b's list of the most recent max_len behaviours up to b (a sliding frame of
        fixed size, so each list costs max_len, whatever the user's history); a sample whose history ends before
        behaviour e takes behaviour e - 1's list, by one equi-join."""
        from pyspark.sql import Window

        F, user = self.F, self.config.user
        sequences = self.spec.of_kind("sequence")
        shared = sorted({s.shares for s in sequences})
        recent = window(user).orderBy("_b").rowsBetween(-(max(s.max_len for s in sequences) - 1), Window.currentRow)
        lists = behaviours.select(user, F.col("_b").alias("_last"),
                                  F.array_sort(F.collect_list(F.struct("_b", *[f"_h_{n}" for n in shared], BEHAVIOUR_TIME))
                                               .over(recent)).alias("_hist"))
        return samples.withColumn("_last", F.col("_end") - 1).join(lists, [user, "_last"], "left")

    def sample_columns(self, samples: Any, behaviours: Any, tables: dict[str, Any], reference: bool) -> Any:
        """The samples as the split tables hold them (features in spec order, the label, the time), with what the
        writer sorts and splits by (`_split`, `_sort_user`, `_t`, `_owner`, `_negative`)."""
        F, spec = self.F, self.spec
        samples = self.with_values(samples, "_item", [f.name for f in spec.features if not f.per_behaviour], "_s_", tables)
        columns = []
        lengths = history_lengths(spec)
        for feature in spec.features:
            if not feature.per_behaviour:
                columns.append(F.col(f"_s_{feature.name}").alias(feature.name))
            elif not reference:
                element = behaviours.schema[_history(feature)].dataType.simpleString()
                values = F.coalesce(F.transform(F.col("_hist"), _field(_history(feature))),
                                    F.array().cast(f"array<{element}>"))  # an empty history is [], as DuckDB's engine writes it
                length = lengths[feature.name]
                kept = F.when(F.size(values) > length, F.slice(values, -length, length)).otherwise(values)
                columns.append(kept.alias(feature.name))
        if reference:
            columns += [F.col(HISTORY_FIRST), F.col(HISTORY_END)]
        columns += [F.col("_label").alias(spec.label), F.col("_t").alias(TIME_COLUMN)]
        return samples.select("_split", F.col(self.config.user).alias("_sort_user"), "_t", "_owner", "_negative", *columns)

    def split_codes(self, log: Any) -> Any:
        """behaviour.assign_splits as a column: 0 train, 1 valid, 2 test, -1 outside the window of samples."""
        F, split, since = self.F, self.config.split, self.since
        if split.mode == "global_time":
            cuts = {}
            windowed = log.filter("_window").select("_t")
            count = windowed.count()
            if count == 0:
                raise ValueError(f"no event of the log is at or after --since {since:g}")
            ordered = None
            for name, q, given in (("test", 1 - split.test, split.test_from), ("valid", 1 - split.test - split.valid, split.valid_from)):
                if given is not None:
                    cuts[name] = given
                    continue
                ordered = ordered if ordered is not None else indexed(windowed, ["_t"], "_i")
                below = math.floor((count - 1) * q)  # numpy's two order statistics, read by index
                pair = [r["_t"] for r in ordered.filter(F.col("_i").isin(below, min(below + 1, count - 1))).orderBy("_i").collect()]
                cuts[name] = numpy_quantile((pair[0], pair[-1]), count, q)
            code = F.when(F.col("_t") >= cuts["test"], 2).when(F.col("_t") >= cuts["valid"], 1).otherwise(0)
        else:
            user = self.config.user
            size = F.count(F.lit(1)).over(window(user, "_window"))
            from_end = size - F.row_number().over(window(user, "_window").orderBy("_t", ROW))

            def amount(value: float) -> Any:
                return F.lit(value) if isinstance(value, int) else F.floor(F.lit(value) * size)

            code = F.when(from_end < amount(split.test), 2).when(from_end < amount(split.test) + amount(split.valid), 1).otherwise(0)
        return F.when(F.col("_window"), code).otherwise(-1).cast("byte")

    def item_table(self, item_universe: Any, tables: dict) -> Any:
        """prepare.LogContext.item_table: every item of the log and the item table with its candidate-side features,
        in key order; None without an item feature."""
        F = self.F
        features = [f for f in self.spec.features if not f.per_behaviour and self.side(f) == "item"]
        if not any(f.source == "log" for f in features):
            return None
        frame = item_universe
        if "items" in tables:
            frame = frame.join(tables["items"], "_key", "left")
        return frame.orderBy("_key").select(*[F.col("_key" if f.source == "log" else f"_a_{f.name}").alias(f.name) for f in features])


BEHAVIOUR_TIME = "_h__time"  # a behaviour's time, which a times feature's histories hold


def _history(feature: Any) -> str:
    """The behaviours' column a per-behaviour feature's histories hold: the shared feature's values, or the time."""
    return BEHAVIOUR_TIME if feature.kind == "times" else f"_h_{feature.shares}"


def _field(name: str) -> Any:
    """A one-argument function picking a struct's field, for F.transform (which counts its function's arguments)."""
    return lambda entry: entry[name]
