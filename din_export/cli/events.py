"""`din-export events load`: a behaviour log into a behaviour store (din_runtime.stores), as `prepare` reads it."""

from __future__ import annotations

from pathlib import Path

import click

from din_runtime.stores import KEEP

from ..config import PREPARE_MEMORY_LIMIT
from .group import main


@main.group("events")
def events_group() -> None:
    """Behaviour stores for serving: a log loaded as `prepare` reads it."""


@events_group.command("load")
@click.option("--recipe", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="The recipe `prepare` reads (the same [log], [items], [users] sections and features).")
@click.option("--log", required=True, help="Interaction log: .csv, .tsv, .parquet, or a glob or folder of Parquet parts.")
@click.option("--items", help="Item attribute table, joined on [items] key.")
@click.option("--users", help="User attribute table, joined on [users] key (its features are stored per user).")
@click.option("--store", "url", required=True, help="The store: sqlite:///PATH, or redis://HOST:PORT/DB.")
@click.option("--until", help="Only behaviours before this time (a number in the time column's units, or an ISO date for a "
                              "timestamp column): the store as it stood then.")
@click.option("--keep", type=click.IntRange(min=1), default=KEEP, show_default=True,
              help="Most behaviours kept per user (the most recent); at least the largest max_len served.")
@click.option("--memory-limit", default=PREPARE_MEMORY_LIMIT, show_default=True,
              help="Working memory for sorting the log (DuckDB's); past it the sort spills to disk.")
def load_command(recipe: Path, log: str, items: str | None, users: str | None, url: str, until: str | None, keep: int,
                 memory_limit: str) -> None:
    """Load a behaviour log's behaviours (and the users table's attributes) into a behaviour store."""
    from ..data.rules import Sources
    from ..events import load_log

    summary = load_log(recipe, Sources(Path(log), items and Path(items), users and Path(users)), url, until, keep, memory_limit)
    click.echo(f"loaded {summary['behaviours_stored']:,} behaviours of {summary['events']:,} events into {url} "
               f"({summary['users_with_attributes']:,} users' attributes) in {summary['seconds']:.1f} s: "
               f"{summary['events_per_second']:,} events/s")
