"""`din-export train-and-export` and `din-export tune`. Both resolve their data (data/source.py) and check every
setting before anything is read or prepared; the work is pipeline.train_and_export's and training.tune's."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import click

from din_runtime.commands import from_renamed, renamed_flag

from ..config import DEFAULT_MAX_AUC_DROP, FORMS, INT8_PRODUCTS, PRECISIONS, VARIANTS, ModelConfig, TuneConfig, accepts_of
from . import output
from .group import main
from .options import (
    DATA_OPTIONS,
    DEFAULT_MODELS_DIR,
    MODEL_FLAGS,
    MODEL_OPTIONS,
    TRAINING_FLAGS,
    TRAINING_OPTIONS,
    click_type,
    data_flags,
    explicit,
    only_with,
    options,
    setting,
    vocabulary_caps,
)


@main.command("train-and-export")
@options(DATA_OPTIONS)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Bundle folder to write (model.onnx, manifest.json, weights.pt, training.png). Default: models/<data>-<variant>. "
                   "An existing bundle there is replaced only once the new one is complete.")
@options(MODEL_OPTIONS)
@options(TRAINING_OPTIONS)
@click.option("--attention-form", type=click.Choice(FORMS), default=FORMS[0], show_default=True, callback=from_renamed,
              help="The attention unit in the exported graphs: folded (its first layer folded for inference) or plain.")
@renamed_flag("--graph", "--attention-form", "attention_form", type=click.Choice(FORMS))
@click.option("--precision", type=click.Choice(PRECISIONS[:2]), default=PRECISIONS[0], show_default=True,
              help="int8: the bundle's graphs re-exported in int8 (as `export --precision int8`) once trained, kept only if "
                   "their validation AUC is within --max-auc-drop of float32's.")
@click.option("--max-auc-drop", type=click.FloatRange(min=0), default=DEFAULT_MAX_AUC_DROP, show_default=True,
              help="With --precision int8: the validation AUC it may lose against float32.")
@click.option("--int8-products", type=click.Choice(INT8_PRODUCTS), default=INT8_PRODUCTS[0], show_default=True,
              help="With --precision int8: the matrix products computed in int8 too (as `export --int8-products`).")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its last per-epoch checkpoint (same data and settings).")
@click.option("--warm-start", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A bundle to continue: its vocabularies extended (every known key keeps its row), its weights copied, its "
                   "architecture and spec kept; training settings not given default to the continuation schedule.")
@click.option("--max-vocabulary", multiple=True, metavar="[FEATURE=]N", callback=vocabulary_caps,
              help="Most keys a vocabulary may hold: N for every categorical feature, FEATURE=N for one (repeatable); the most "
                   "frequent keys are kept, the rest map to out-of-vocabulary. Overrides the spec's max_vocabulary.")
@click.option("--quiet", is_flag=True, help="No progress bar or per-epoch lines.")
@click.pass_context
def train_and_export_command(ctx: click.Context, **params: Any) -> None:
    """Train a DIN on a sample table, a behaviour log or the built-in data; export verified ONNX; write a model bundle.

    Under `torchrun --nproc-per-node N`, training runs data-parallel (gloo on CPU, NCCL on GPU); rank 0 writes the bundle.
    """
    from ..config import resolve
    from ..data.source import resolve_data
    from ..data.spec import with_caps
    from ..export.precision import PrecisionRejected
    from ..export.rebuild import export_bundle
    from ..pipeline import train_and_export
    from ..warm_start import continued_settings, load_parent

    flags = data_flags(ctx, params)
    flags.check()
    parent = load_parent(params["warm_start"]) if params["warm_start"] else None
    data = resolve_data(flags, parent.bundle.spec if parent else None)
    spec = with_caps(data.spec, params["max_vocabulary"]) if params["max_vocabulary"] else data.spec
    model_flags = explicit(ctx, params, MODEL_FLAGS)
    training_flags = {**explicit(ctx, params, TRAINING_FLAGS), "progress": not params["quiet"]}
    if parent is not None:
        model_flags, training_flags = continued_settings(parent, spec, model_flags, training_flags)
    model_config, train_config = resolve(spec, model_flags, training_flags)  # every setting checked: nothing read yet
    out = params["out"] or DEFAULT_MODELS_DIR / f"{data.name}-{model_config.variant}"
    only_with(ctx, ("max_auc_drop", "int8_products"), params["precision"] != PRECISIONS[0], "--precision int8")
    with tempfile.TemporaryDirectory(prefix="din-export-") as scratch:
        manifest = train_and_export(data.source_in(Path(scratch)), out, spec, model_config, train_config, resume=params["resume"],
                                    attention_form=params["attention_form"], warm_start=parent)
        if manifest is None:  # another rank of a torchrun job
            return
        output.trained(out, manifest)
        if params["precision"] != PRECISIONS[0]:  # while the training data (perhaps prepared into scratch) is still there
            try:
                reduced = export_bundle(out, out, params["attention_form"], params["precision"], max_auc_drop=params["max_auc_drop"],
                                        int8_products=params["int8_products"])
            except PrecisionRejected as error:
                raise click.ClickException(f"{error}; the float32 bundle stays at {out}") from None
            for line in output.precision_lines(reduced["onnx"]["precisions"]):
                click.echo(line)


TUNE_DEFAULTS = TuneConfig()


@main.command("tune")
@options(DATA_OPTIONS)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("tuned-spec.toml"), show_default=True,
              help="Where to write the best spec: the input spec plus [model] and [training] with the best settings.")
@setting(TuneConfig, "trials", help="Trial budget.")
@setting(TuneConfig, "epochs", help="Most epochs per trial; weak trials are pruned earlier.")
@click.option("--timeout", type=click_type(accepts_of(TuneConfig, "timeout")), default=TUNE_DEFAULTS.timeout,
              help="Stop starting trials after this many seconds.")
@click.option("--model", "variant", type=click.Choice(VARIANTS), default=ModelConfig().variant, show_default=True, help="Variant to tune.")
@setting(TuneConfig, "seed", help="Seed of the sampler, the split and every trial.")
@click.pass_context
def tune_command(ctx: click.Context, out: Path, trials: int, epochs: int, timeout: float | None, variant: str, seed: int,
                 **params: Any) -> None:
    """Search learning rate, embedding size, MLP sizes, dropout and regularisation with Optuna (pruning bad trials)."""
    from ..data.source import resolve_data
    from ..training.tune import tune

    data = resolve_data(data_flags(ctx, params))
    config = TuneConfig(trials, epochs, seed, timeout)
    with tempfile.TemporaryDirectory(prefix="din-export-") as scratch:
        summary = tune(data.source_in(Path(scratch)), data.spec, out, config, variant)
    click.echo(f"best validation AUC {summary['best_valid_auc']:.4f} (trial {summary['best_trial']}; {summary['complete']} complete, "
               f"{summary['pruned']} pruned of {summary['trials']}); best spec written to {out}")
