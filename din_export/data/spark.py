"""`prepare --engine spark`: the recipe as a Spark job, for logs past one machine. Its output is the DuckDB engine's,
row for row (tested on MovieLens-100k and generated logs, compared as sorted rows).

How the two engines are kept from drifting: the recipe is parsed, checked and turned into the training spec by the
same code (rules.py); the draws (negatives, downsampling) run the same numpy functions of behaviour.py inside Arrow
UDFs (spark_ops.py), so the 64-bit SplitMix64 arithmetic is one implementation; the per-user rules (splits, which
behaviours a history holds, forward fills, what is missing) are restated as window expressions, each a named step of
spark_job.SparkPrepare beside the rule it mirrors; and the equality tests run both engines on logs made to hit every
rule (ties, gaps, NaN in every kind of numeric column, labels, attributes, histories past max_len).

This module holds the session, the entry points and the writing; the steps are in spark_job.py.
"""

from __future__ import annotations

import time as clock
from pathlib import Path
from typing import Any

from ..config import LAYOUTS, SPARK_MASTER
from ..files import staged_bundle, write_json
from .prepared import ITEMS_FILE, SEQUENCE_STORE, SPEC_FILE, SPLITS, SUMMARY_FILE, split_file
from .recipe import LogConfig
from .rules import Sources, check_sources, read_recipe, training_spec
from .scan import time_number
from .spark_job import SparkPrepare
from .spark_ops import with_negatives
from .spec import Spec, spec_to_toml

LOCAL_PARTITIONS_PER_CORE = 4  # a local session's shuffle partitions per core (Spark's 200 are sized for clusters)


def _local_cores(master: str) -> int:
    """The worker threads of a local master: local, local[N], local[*] (all cores), local[N,F]."""
    import os

    inside = master[len("local["):-1].split(",")[0] if master.startswith("local[") else "1"
    return (os.cpu_count() or 1) if inside == "*" else int(inside)


def session(master: str = SPARK_MASTER, conf: dict[str, str] | None = None) -> Any:
    """A SparkSession for `prepare --engine spark` (a job submitted with spark-submit brings its own)."""
    import os
    import sys

    from pyspark.sql import SparkSession

    builder = (SparkSession.builder.master(master).appName("din-export prepare").config("spark.ui.enabled", "false")
               .config("spark.ui.showConsoleProgress", "false"))
    conf = dict(conf or {})
    if master.startswith("local"):
        # executors run din-export's numpy code (the draws): locally, in this very interpreter; a cluster's
        # executors use the Python their own settings name (PYSPARK_PYTHON or spark.pyspark.python: see the guide)
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        conf.setdefault("spark.pyspark.python", sys.executable)
        conf.setdefault("spark.sql.shuffle.partitions", str(LOCAL_PARTITIONS_PER_CORE * _local_cores(master)))
    for key, value in conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def prepare(spark: Any, recipe: str | Path, sources: Sources, out: str | Path, layout: str = "inline",
            since: float | str | None = None) -> dict[str, Any]:
    """The library entry point for a job that holds a SparkSession (`spark-submit`): write `out` as `din-export
    prepare` does (train, valid and test as folders of Parquet parts, spec.toml, prepare.json, items.parquet, and
    sequences.parquet in the reference layout) and return the summary."""
    return run(spark, Path(recipe), sources, Path(out), layout, since)


def check_supported(recipe: Path, sources: Sources, layout: str) -> tuple[Spec, LogConfig]:
    """The recipe parsed and checked as the DuckDB engine checks it, before a session starts; what the Spark engine
    cannot read is refused in one line."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, not {layout!r}")
    spec, config = read_recipe(recipe)
    check_sources(spec, config, sources)
    return spec, config


def run(spark: Any, recipe: Path, sources: Sources, out: Path, layout: str, since: float | str | None) -> dict[str, Any]:
    """The recipe's steps (spark_job.SparkPrepare) in order, then the folder written."""
    started = clock.perf_counter()
    spec, config = check_supported(recipe, sources, layout)
    job = SparkPrepare(spark, spec, config, sources, None)
    job.since = None if since is None else time_number(since, job.time_kind, config.time)
    log = job.read_log()
    events = job.check_log(log)
    log = job.with_event_values(job.labelled(log))
    tables = job.attribute_tables(log)
    items = job.item_universe(log, tables)
    behaviours = job.behaviours(log, tables)
    log = job.with_history_ends(log)
    samples, dropped = job.samples(log)
    samples = with_negatives(job, log, samples, items) if config.label is None else samples.withColumn("_negative", job.F.lit(0))
    store = None
    if layout == "reference":
        store, samples = job.sequence_store(log, behaviours, samples)
    else:
        samples = job.with_history_lists(behaviours, samples)
    result = job.sample_columns(samples, behaviours, tables, reference=store is not None)
    summary = {"engine": "spark", "events": events, "users": log.select(config.user).distinct().count(), "items": items.count(),
               "since": job.since, "keep_negatives": config.sampling.keep_negatives, "negatives_dropped": dropped, "layout": layout,
               "recipe": str(recipe)}
    return _write(job, result, {SEQUENCE_STORE: store, ITEMS_FILE: job.item_table(items, tables)}, out, summary, started)


def _write(job: SparkPrepare, result: Any, outputs: dict[str, Any], out: Path, summary: dict[str, Any],
           started: float) -> dict[str, Any]:
    """The split tables (sorted as the DuckDB engine writes them), the other outputs, spec.toml and prepare.json,
    staged beside `out` and moved into place whole."""
    F, spec, config = job.F, job.spec, job.config
    result = result.filter(F.col("_split") >= 0).cache()
    found = result.groupBy("_split").agg(F.count(F.lit(1)).alias("rows"), F.sum((F.col("_negative") > 0).cast("long")).alias("negatives"),
                                         F.sum(((F.col("_negative") == 0) & (F.col(spec.label) == 1)).cast("long")).alias("positives")).collect()
    by_split = {row["_split"]: row for row in found}  # at most three rows
    rows = {name: int(by_split[code]["rows"]) if code in by_split else 0 for code, name in enumerate(SPLITS)}
    summary = {**summary, "positives": sum(int(r["positives"]) for r in found), "negatives_drawn": sum(int(r["negatives"]) for r in found)}
    empty = [name for name, count in rows.items() if count == 0]
    if empty:
        raise ValueError(f"the split leaves {empty} without samples; adjust [split] (valid/test) for this log")
    with staged_bundle(out) as staging:
        for code, name in enumerate(SPLITS):
            part = result.filter(F.col("_split") == code).orderBy("_sort_user", "_t", "_owner", "_negative")
            part.drop("_split", "_sort_user", "_t", "_owner", "_negative").write.parquet(str(split_file(staging, name)))
        for file, frame in outputs.items():
            if frame is not None:
                frame.write.parquet(str(staging / file))
        (staging / SPEC_FILE).write_text(spec_to_toml(training_spec(spec, config)), encoding="utf-8")
        summary = {**summary, "rows": rows, "seconds": round(clock.perf_counter() - started, 3)}
        write_json(staging / SUMMARY_FILE, summary)
    return summary
