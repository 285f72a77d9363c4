"""Spark operations the steps of `prepare --engine spark` (spark_job.py) build on: prefix sums that send the driver
one number per partition, behaviour.py's hashed draws as Arrow UDFs, and the negative draw (uniform, or by
popularity as a bucketed range join), all without collecting anything the size of the log."""

from __future__ import annotations

from typing import Any

import numpy as np

from .behaviour import MAX_DRAW_ROUNDS, NegativeDraw, hashed_uniform

ROW, ORDINAL = "_din_row", "_din_ordinal"  # ROW: the event's row in the log, what breaks ties in time as in DuckDB's engine
BUCKET_BITS = 4  # the popularity draw's range join: buckets of 16 weight units, so a draw meets at most 16 items
ROUNDS_AT_ONCE = 8  # negatives' draw rounds tried in one pass (a key clashes in all 8 with chance p**8)


def functions() -> Any:
    from pyspark.sql import functions

    return functions


def window(*partition: str) -> Any:
    from pyspark.sql import Window

    return Window.partitionBy(*partition)


def running_sum(frame: Any, order: list[str], value: Any, name: str) -> tuple[Any, int]:
    """(`frame` sorted by `order` with column `name`, the sum of `value` over every row before it; the total).
    A prefix sum in two passes over the sorted partitions (which hold consecutive ranges of `order`): each
    partition's total reaches the driver, one number per partition, and each row adds its partition's offset to
    the running sum within its partition. `order` must be unique per row where the sums are read per row."""
    from pyspark import StorageLevel
    from pyspark.sql import Window

    F = functions()
    ordered = frame.orderBy(*order).withColumn("_p", F.spark_partition_id()).withColumn("_w", value.cast("long"))
    ordered = ordered.persist(StorageLevel.MEMORY_AND_DISK)  # both passes see the same partitions
    totals = sorted((row["_p"], int(row["_s"])) for row in ordered.groupBy("_p").agg(F.sum("_w").alias("_s")).collect())
    offsets, total = [], 0
    for partition, partition_total in totals:
        offsets.append((partition, total))
        total += partition_total
    offset_frame = frame.sparkSession.createDataFrame(offsets, "_p int, _o long")
    before = F.sum("_w").over(Window.partitionBy("_p").orderBy(*order).rowsBetween(Window.unboundedPreceding, -1))
    summed = ordered.join(F.broadcast(offset_frame), "_p").withColumn(name, F.col("_o") + F.coalesce(before, F.lit(0)))
    return summed.drop("_p", "_w", "_o"), total


def indexed(frame: Any, order: list[str], name: str) -> Any:
    """`frame` with a 0-based global index in `order` (a running count)."""
    return running_sum(frame, order, functions().lit(1), name)[0]


def _by_round(keys: Any, rounds: Any, draw: Any) -> Any:
    """draw(keys, round) of numpy keys for each round present, as a pandas Series (one UDF call covers many rounds)."""
    import pandas as pd

    keys, rounds = keys.to_numpy().astype(np.int64), rounds.to_numpy()
    out = None
    for round_ in np.unique(rounds):
        chosen = rounds == round_
        values = draw(keys[chosen], int(round_))
        out = np.empty(len(keys), dtype=values.dtype) if out is None else out
        out[chosen] = values
    return pd.Series(out if out is not None else np.empty(0, dtype=np.float64))


def uniform_udf(seed: int) -> Any:
    """behaviour.hashed_uniform of (key, round) columns."""
    from pyspark.sql.functions import pandas_udf

    @pandas_udf("double")
    def draw(keys, rounds):  # noqa: ANN001, ANN202 - a pandas UDF's signature
        return _by_round(keys, rounds, lambda k, r: hashed_uniform(k.astype(np.uint64), seed, r))
    return draw


def _item_udf(num_items: int, negatives: int, seed: int) -> Any:
    """behaviour.NegativeDraw.items (uniform) of (key, round) columns."""
    from pyspark.sql.functions import pandas_udf

    draw_of = NegativeDraw(num_items, negatives, seed)

    @pandas_udf("long")
    def draw(keys, rounds):  # noqa: ANN001, ANN202
        return _by_round(keys, rounds, draw_of.items)
    return draw


class _Draw:
    """behaviour.NegativeDraw on Spark: uniform items by NegativeDraw's own numpy code in an Arrow UDF; items by
    popularity (weight: events + 1) by the same hashed uniform in [0, 1) times the total weight, found in the items'
    cumulative weights by a range join over buckets of 2**BUCKET_BITS weight units (numpy's searchsorted over
    integer-valued cumulative sums, computed without the driver)."""

    def __init__(self, job: Any, log: Any, codes: Any, num_items: int) -> None:
        F, sampling = job.F, job.config.sampling
        self.F, self.sampling, self.num_items = F, sampling, num_items
        self.spans = None
        if sampling.strategy == "popularity":
            events_of = log.groupBy(F.col(job.config.item).alias("_key")).agg(F.count(F.lit(1)).alias("_events"))
            weights = codes.join(events_of, "_key", "left").select("_code", (F.coalesce("_events", F.lit(0)) + 1).alias("_weight"))
            starts, self.total = running_sum(weights, ["_code"], F.col("_weight"), "_start")
            spans = starts.withColumn("_stop", F.col("_start") + F.col("_weight"))
            buckets = F.sequence(F.shiftright("_start", BUCKET_BITS), F.shiftright(F.col("_stop") - 1, BUCKET_BITS))
            self.spans = spans.select("_code", "_start", "_stop", F.explode(buckets).alias("_bucket"))

    def drawn(self, frame: Any) -> Any:
        """`frame` with `_drawn`, the item code drawn for its key `_k` in its round `_r`."""
        F, sampling = self.F, self.sampling
        if self.spans is None:
            return frame.withColumn("_drawn", _item_udf(self.num_items, sampling.negatives, sampling.seed)(F.col("_k"), F.col("_r")))
        uniform = uniform_udf(sampling.seed)(F.col("_k"), F.col("_r"))
        point = F.least(F.floor(uniform * F.lit(float(self.total))).cast("long"), F.lit(self.total - 1))
        frame = frame.withColumn("_point", point).withColumn("_bucket", F.shiftright("_point", BUCKET_BITS))
        found = frame.join(self.spans, "_bucket").filter((F.col("_start") <= F.col("_point")) & (F.col("_point") < F.col("_stop")))
        return found.withColumnRenamed("_code", "_drawn").drop("_bucket", "_point", "_start", "_stop")


def with_negatives(job: Any, log: Any, samples: Any, item_universe: Any) -> Any:
    """behaviour.sample_negatives: `negatives` items per sampled positive that its user never touches anywhere in
    the log; negative j of the i-th positive (in user, time, log-row order) has key i * negatives + j, redrawn in
    rounds 1, 2, ... while it names an item its user touched. After round 0, ROUNDS_AT_ONCE rounds are drawn and
    anti-joined in one pass and each key keeps its first clean round: the rounds numpy's loop would reach, in a
    pass or two."""
    F, config = job.F, job.config
    user, item = config.user, config.item
    draws = config.sampling.negatives
    codes = indexed(item_universe, ["_key"], "_code")
    num_items = codes.count()
    draw = _Draw(job, log, codes, num_items)
    per_user = samples.groupBy(user).count()
    bases = running_sum(per_user, [user], F.col("count"), "_base")[0].select(user, "_base")
    ordinal = samples.join(bases, user).withColumn(
        ORDINAL, F.col("_base") + F.row_number().over(window(user).orderBy("_t", ROW)) - 1)
    owners = ordinal.select("_owner", user, ORDINAL).withColumn("_j", F.explode(F.sequence(F.lit(0), F.lit(draws - 1))))
    owners = owners.withColumn("_k", F.col(ORDINAL) * draws + F.col("_j")).drop(ORDINAL)
    touched = log.select(user, item).distinct().join(codes.withColumnRenamed("_key", item), item).select(user, F.col("_code").alias("_drawn"))
    settled, pending = None, owners
    # round 0 for every key, then ROUNDS_AT_ONCE rounds at a time for the few that clashed (numpy's loop checks the
    # draws of rounds 0..199)
    passes = [(0, 1)] + [(first, min(first + ROUNDS_AT_ONCE, MAX_DRAW_ROUNDS)) for first in range(1, MAX_DRAW_ROUNDS, ROUNDS_AT_ONCE)]
    for first_round, end_round in passes:
        rounds = F.sequence(F.lit(first_round), F.lit(end_round - 1))
        candidates = draw.drawn(pending.withColumn("_r", F.explode(rounds)))
        clean = candidates.join(touched, [user, "_drawn"], "left_anti")
        chosen = clean.groupBy("_k").agg(F.min_by("_drawn", "_r").alias("_drawn"))
        found = pending.join(chosen, "_k").cache()
        settled = found if settled is None else settled.unionByName(found)
        pending = pending.join(found.select("_k"), "_k", "left_anti").cache()
        if pending.limit(1).count() == 0:
            break
    else:
        raise ValueError("cannot draw negatives for user(s) who touched (almost) every item")
    drawn = settled.join(codes.select(F.col("_code").alias("_drawn"), F.col("_key").alias("_item_drawn")), "_drawn")
    base = samples.drop("_item")
    negative_rows = drawn.select("_owner", F.col("_item_drawn").alias("_item"), "_j").join(base, "_owner")
    negative_rows = negative_rows.withColumn("_label", F.lit(0).cast("byte")).withColumn("_negative", F.col("_j") + 1).drop("_j")
    positive_rows = samples.withColumn("_negative", F.lit(0))
    return positive_rows.unionByName(negative_rows.select(*positive_rows.columns))
