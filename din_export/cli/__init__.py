"""The din-export command line: prepare, train-and-export, tune, report, export, verify, inspect, triton, compare,
evaluate (and datasets, which fetches public data sets).

By job: group.py the command group; options.py the option tables (their defaults and ranges read from config.py);
output.py what the commands print; data.py, training.py, bundles.py and evaluation.py the commands themselves, each
a thin layer over the library function that does the work.
"""

from . import bundles, data, evaluation, events, training  # noqa: F401 - importing a module registers its commands on `main`
from .group import main

__all__ = ["main"]
