"""The error types of din_export's data side, in one low module that config, data/ and the commands all import:
each message names the file, the section, the feature or the key that is wrong, in one line."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class SpecError(ValueError):
    """The spec (or recipe) is malformed or asks for something inconsistent; the message names the feature and the key."""


class TableError(ValueError):
    """A data file cannot be read as the spec describes; the message names the file and column."""


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """" (did you mean 'max_len'?)" where a known name is close to a misspelled one, else ""."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
