"""`din-export prepare` (a behaviour log into sample tables, on DuckDB or Spark) and `din-export datasets` (public
data sets fetched and checked)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from din_runtime.commands import from_renamed, renamed_flag

from ..config import ENGINES, LAYOUTS, PREPARE_MEMORY_LIMIT, PREPARE_MIN_WRITE_ROWS, PREPARE_WRITE_ROWS, SERVED_JOINS, SPARK_MASTER
from .group import main
from .options import key_values, only_with


@main.command("prepare")
@click.option("--spec", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="Recipe (TOML): the feature spec plus [log], [items], [users], [sampling] and [split] sections.")
@click.option("--log", help="Interaction log: .csv, .tsv (also RecBole's .inter), .parquet, or a glob or folder of Parquet parts.")
@click.option("--items", help="Item attribute table, joined on [items] key.")
@click.option("--users", help="User attribute table, joined on [users] key.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder to write train.parquet, valid.parquet, test.parquet, spec.toml and prepare.json into (replaced only once complete).")
@click.option("--write-rows", type=click.IntRange(min=PREPARE_MIN_WRITE_ROWS), default=PREPARE_WRITE_ROWS, show_default=True,
              callback=from_renamed, help="Samples built and written at a time; bounds memory.")
@renamed_flag("--chunk-rows", "--write-rows", "write_rows", type=click.IntRange(min=PREPARE_MIN_WRITE_ROWS))
@click.option("--layout", type=click.Choice(LAYOUTS), default=LAYOUTS[0], show_default=True,
              help="inline: each sample's histories as list columns; reference: each user's behaviours once in "
                   "sequences.parquet, samples pointing into it (train-and-export reads both).")
@click.option("--memory-limit", default=PREPARE_MEMORY_LIMIT, show_default=True,
              help="Working memory for sorting the log (DuckDB's, e.g. 500MB, 4GB); past it the sort spills to disk beside --out.")
@click.option("--since", help="Only events at or after this time become samples (a number in the time column's units, or an "
                              "ISO date for a timestamp column); histories still reach back into every earlier event.")
@click.option("--engine", type=click.Choice(ENGINES), default=ENGINES[0], show_default=True,
              help="duckdb: this machine, out of core; spark: the same recipe as a Spark job (the `spark` extra and a Java "
                   "runtime), identical output, for logs past one machine.")
@click.option("--spark-master", default=SPARK_MASTER, show_default=True, help="--engine spark: the Spark master URL (local[N], "
                                                                              "spark://HOST:7077, yarn, k8s://...).")
@click.option("--spark-conf", multiple=True, metavar="KEY=VALUE", callback=key_values, help="--engine spark: a Spark setting "
                                                                                           "(repeatable), e.g. spark.executor.memory=8g.")
@click.option("--served", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Instead of --log: the rows a server scored (din-runtime serve --log-requests DIR), labelled by --clicks: "
                   "samples carry exactly the features that were served.")
@click.option("--clicks", help="With --served: the clicks (CSV, TSV or Parquet): request_id and the item (--join request), or "
                               "the user, the item and time (--join window), named as in events.")
@click.option("--join", type=click.Choice(SERVED_JOINS), default=SERVED_JOINS[0], show_default=True,
              help="With --served: request: a row is a click where the clicks hold its request id and item; window: where its "
                   "user clicked its item within --window after it was served.")
@click.option("--window", type=click.FloatRange(min=0, min_open=True), help="--join window: how long after a row was served a "
                                                                              "click counts (the log's time units).")
@click.option("--served-model", help="With --served: whose rows (needed where the log holds several models).")
@click.pass_context
def prepare_command(ctx: click.Context, spec: Path, log: str | None, items: str | None, users: str | None, out: Path, write_rows: int,
                    layout: str, memory_limit: str, since: str | None, engine: str, spark_master: str, spark_conf: dict[str, str],
                    served: Path | None, clicks: str | None, join: str, window: float | None, served_model: str | None) -> None:
    """Turn a behaviour log (and item and user tables) into train, valid and test sample tables for train-and-export;
    or, with --served and --clicks, the rows a server scored, labelled by their clicks."""
    from ..data.rules import Sources

    if served is not None:
        _prepare_served(ctx, spec, served, clicks, out, join, window, served_model, memory_limit, log)
        return
    if log is None:
        raise click.UsageError("Missing option '--log' (or '--served' with '--clicks')")
    only_with(ctx, ("clicks", "join", "window", "served_model"), False, "--served")
    sources = Sources(Path(log), items and Path(items), users and Path(users))
    only_with(ctx, ("write_rows", "memory_limit"), engine == "duckdb", "--engine duckdb; Spark takes --spark-conf")
    only_with(ctx, ("spark_master", "spark_conf"), engine == "spark", "--engine spark")
    if engine == "spark":
        summary = _prepare_on_spark(spec, sources, out, layout, since, spark_master, spark_conf)
    else:
        from ..data.prepare import prepare

        summary = prepare(spec, sources, out, write_rows, layout, memory_limit, since=since)
    rows = summary["rows"]
    click.echo(f"prepared {summary['events']} events of {summary['users']} users into {out}: "
               f"{rows['train']} train, {rows['valid']} valid, {rows['test']} test samples "
               f"({summary['negatives_drawn']} negatives drawn) in {summary['seconds']:.1f} s")


def _prepare_served(ctx: click.Context, recipe: Path, served: Path, clicks: str | None, out: Path, join: str, window: float | None,
                    model: str | None, memory_limit: str, log: str | None) -> None:
    from ..data.served import prepare_served

    if log is not None:
        raise click.UsageError("--log and --served are two sources of samples; give one")
    if clicks is None:
        raise click.UsageError("--served needs --clicks, the clicks that label its rows")
    only_with(ctx, ("items", "users", "since", "layout", "write_rows", "engine", "spark_master", "spark_conf"), False,
              "a log (--log); the served rows hold every feature already")
    if join == "window" and window is None:
        raise click.UsageError("--join window needs --window SECONDS, how long after serving a click counts")
    only_with(ctx, ("window",), join == "window", "--join window")
    summary = prepare_served(recipe, served, Path(clicks), out, join, window, model, memory_limit)
    rows = summary["rows"]
    click.echo(f"prepared {summary['served_rows']} served rows of {summary['requests']} requests ({summary['positives']} clicked, "
               f"joined by {join}) into {out}: {rows['train']} train, {rows['valid']} valid, {rows['test']} test samples "
               f"in {summary['seconds']:.1f} s")


def _prepare_on_spark(recipe: Path, sources: Any, out: Path, layout: str, since: str | None, master: str,
                      conf: dict[str, str]) -> dict[str, Any]:
    try:
        from ..data import spark
    except ImportError:  # pragma: no cover - the extra's absence
        raise click.UsageError("--engine spark needs the spark extra: pip install 'din-export[spark]' (and a Java 17 runtime)") from None
    spark.check_supported(recipe, sources, layout)
    session = spark.session(master, conf)
    try:
        return spark.prepare(session, recipe, sources, out, layout, since)
    finally:
        session.stop()


@main.command("datasets")
@click.argument("name", type=click.Choice(["ml-100k"]))
@click.option("--to", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder to write the data set's atomic files into (replaced only once complete).")
@click.option("--url", help="Where to download the archive from instead of its publisher (a mirror, or a file:// URL of a copy).")
@click.option("--md5", help="The archive's MD5 to check instead of the one its publisher gives (for a repackaged copy).")
def datasets_command(name: str, to: Path, url: str | None, md5: str | None) -> None:
    """Download a public data set, check its published checksum and write it as the atomic files the recipes in
    examples/ read (ml-100k: ml-100k.inter, ml-100k.item, ml-100k.user)."""
    from ..data.downloads import DATASETS, download

    files = download(name, to, url, md5)
    click.echo(f"{name} written to {to}: " + ", ".join(f.name for f in files) + f" (cite: {DATASETS[name].citation})")
