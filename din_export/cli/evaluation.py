"""`din-export compare` (two bundles on one table, the rollout gate) and `din-export evaluate` (a bundle on any
table, with ranking metrics)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..config import COMPARE_MAX_AUC_DROP, COMPARE_MIN_RESAMPLES, COMPARE_RESAMPLES
from . import output
from .group import main
from .options import BUNDLE, FILE, only_with


@main.command("compare")
@click.argument("old", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("new", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--data", type=FILE, required=True, help="Table to score with both (CSV, TSV or Parquet, either layout), e.g. "
                                                       "the newest window's test split.")
@click.option("--max-auc-drop", type=click.FloatRange(min=0), default=COMPARE_MAX_AUC_DROP, show_default=True,
              help="NEW fails when its AUC is below OLD's by more than this with 95% confidence (the whole interval "
                   "of the difference below -X).")
@click.option("--resamples", type=click.IntRange(min=COMPARE_MIN_RESAMPLES), default=COMPARE_RESAMPLES, show_default=True,
              help="Bootstrap resamples of the users.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of the bootstrap.")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as one JSON object.")
def compare_command(old: Path, new: Path, data: Path, max_auc_drop: float, resamples: int, seed: int, as_json: bool) -> None:
    """Score one table with two bundles through din_runtime; print AUC, GAUC, logloss and accuracy of each and the AUC
    difference with a 95% interval (paired bootstrap over users). Exit 0 when NEW is not worse than OLD by more than
    --max-auc-drop, 1 when it is, 2 on an error: a rollout script gates on it."""
    from ..compare import compare

    result = compare(old, new, data, max_auc_drop, resamples, seed)
    if as_json:
        click.echo(json.dumps(result.to_dict(), allow_nan=False))
    else:
        output.comparison(result, data, max_auc_drop)
    if result.worse:
        raise SystemExit(1)


@main.command("evaluate")
@BUNDLE
@click.option("--data", type=FILE, required=True, help="Table to score (CSV, TSV or Parquet, either layout) with the label column.")
@click.option("--rank", type=click.IntRange(min=1), default=None,
              help="Also rank each positive row's item among this many sampled negatives: HR@K, NDCG@K (K 5, 10, 20) and MRR.")
@click.option("--items", type=FILE, help="Item table to draw --rank negatives from, a column per candidate feature "
                                         "[default: the bundle's item vocabulary].")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of the --rank negatives.")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), help="Write the reliability diagram (PNG) here.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@click.pass_context
def evaluate_command(ctx: click.Context, bundle: Path, data: Path, rank: int | None, items: Path | None, seed: int,
                     plot: Path | None, as_json: bool) -> None:
    """Score a table with a bundle through din_runtime: AUC, GAUC, logloss, accuracy, ECE and calibration ratio;
    with --rank N, HR@K, NDCG@K and MRR of each positive among N sampled negatives."""
    from ..evaluation import evaluate_bundle

    only_with(ctx, ("items", "seed"), rank is not None, "--rank N")
    result = evaluate_bundle(bundle, data, rank, items, seed, plot)
    if as_json:
        click.echo(json.dumps(result, allow_nan=False))
    else:
        output.evaluation(result, data, plot)
