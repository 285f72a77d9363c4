"""The error types of din_export's data side, in one low module that config, data/ and the commands all import:
each message names the file, the section, the feature or the key that is wrong, in one line."""

from __future__ import annotations


class SpecError(ValueError):
    """The spec (or recipe) is malformed or asks for something inconsistent; the message names the feature and the key."""


class TableError(ValueError):
    """A data file cannot be read as the spec describes; the message names the file and column."""
