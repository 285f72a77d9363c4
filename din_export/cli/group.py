"""The `din-export` command group: every command registers on it (their modules are imported by cli/__init__.py)."""

from __future__ import annotations

import click

from din_runtime.commands import OneLineErrors


@click.group(cls=OneLineErrors)
@click.version_option(package_name="din-export")
@click.option("--debug", is_flag=True, help="Show the full traceback of an error.")
def main(debug: bool) -> None:
    """Train a Deep Interest Network, export it to ONNX, serve it with din_runtime."""
