"""The click group both command lines (din-runtime and din-export) are built on: one error handler for every command."""

from __future__ import annotations

import sys
import traceback
from typing import Any

import click

from .errors import first_line


class OneLineErrors(click.Group):
    """Any error ends the command with exit status 2 and one line saying what and where, never a traceback from
    inside a library; a group option `--debug` (where the group has one) adds the traceback."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False  # usage errors too become one line, not click's usage banner
        try:
            return super().main(*args, **kwargs)
        except click.exceptions.Abort:
            click.echo("error: aborted", err=True)
            sys.exit(1)
        except click.exceptions.NoArgsIsHelpError as error:
            click.echo(error.format_message(), err=True)
            sys.exit(error.exit_code)
        except click.ClickException as error:
            click.echo(f"error: {error.format_message()}", err=True)
            sys.exit(error.exit_code)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException, SystemExit):
            raise
        except Exception as error:  # noqa: BLE001 - the one place every unexpected error is reported
            if ctx.params.get("debug"):
                traceback.print_exception(error)
            click.echo(f"error: {first_line(error)}", err=True)
            sys.exit(2)
