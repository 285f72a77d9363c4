"""What both command lines (din-runtime and din-export) are built on: one click group with one error handler for every
command, and one way to keep a renamed flag's old name working for a release."""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable, Iterable
from typing import Any

import click
from click.core import ParameterSource

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


RENAMED = "din_renamed_flags"  # ctx.meta key: a renamed flag's parameter -> (the old name given, its value)


def renamed_flag(old: str, new: str, parameter: str, **option: Any) -> Callable[[Callable], Callable]:
    """A flag's old name, kept hidden for one release after its rename to `new`: given, it prints a one-line note and
    its value goes to `parameter` (the new flag's, whose option takes `callback=from_renamed`). Both at once is a
    usage error."""
    def store(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        if ctx.get_parameter_source(param.name) is not ParameterSource.COMMANDLINE:
            return
        if ctx.get_parameter_source(parameter) is ParameterSource.COMMANDLINE:
            raise click.UsageError(f"{old} is the old name of {new}; give {new} alone")
        click.echo(f"note: {old} is now {new}; {old} goes in the next release", err=True)
        ctx.meta.setdefault(RENAMED, {})[parameter] = (old, value)
        ctx.params[parameter] = value  # where the new flag was processed first, at its default

    return click.option(old, f"renamed_{parameter}", hidden=True, expose_value=False, callback=store, **option)


def from_renamed(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """The callback of a renamed flag's new name: the old name's value where that was given instead."""
    renamed = ctx.meta.get(RENAMED, {}).get(param.name)
    if renamed is None:
        return value
    if ctx.get_parameter_source(param.name) is ParameterSource.COMMANDLINE:
        raise click.UsageError(f"{renamed[0]} is the old name of {param.opts[0]}; give {param.opts[0]} alone")
    return renamed[1]


def given(ctx: click.Context, names: Iterable[str]) -> set[str]:
    """The parameters of `names` given on the command line (not left at their defaults), by a renamed flag's old
    name too."""
    renamed = ctx.meta.get(RENAMED, {})
    return {name for name in names if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE or name in renamed}
