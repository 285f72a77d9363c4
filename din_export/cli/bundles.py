"""The commands on a written bundle: `export` (again, in another form or precision), `verify`, `inspect`,
`triton` (a Triton repository entry) and `report` (metrics, history, plots, the explanation figure)."""

from __future__ import annotations

from pathlib import Path

import click

from din_runtime.commands import from_renamed, renamed_flag

from ..config import (
    DEFAULT_MAX_AUC_DROP,
    EXPLAIN_FIGURE_MAX_ROWS,
    EXPLAIN_FIGURE_ROWS,
    FORMS,
    INT8_PRODUCTS,
    PRECISIONS,
    TRITON_INSTANCES,
    TRITON_MAX_BATCH_SIZE,
    TRITON_THREADS,
)
from . import output
from .group import main
from .options import BUNDLE, FILE, only_with

EXPLANATION_FILE = "explanation.png"  # report --explain's figure, by default in the bundle


@main.command("export")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Bundle folder to write.")
@click.option("--attention-form", type=click.Choice(FORMS), default=FORMS[0], show_default=True, callback=from_renamed,
              help="The attention unit in the graphs: folded (for inference) or plain.")
@renamed_flag("--graph", "--attention-form", "attention_form", type=click.Choice(FORMS))
@click.option("--precision", type=click.Choice(PRECISIONS), default=PRECISIONS[0], show_default=True, callback=from_renamed,
              help="int8: int8 embedding tables (and, with --int8-products, matrix products); fp16: half precision for CUDA "
                   "(float32 inputs and outputs).")
@renamed_flag("--variant", "--precision", "precision", type=click.Choice(PRECISIONS))  # its name in 0.1.0
@click.option("--valid", type=FILE, help="Validation table to score a precision on (default: the bundle's own validation split).")
@click.option("--max-auc-drop", type=click.FloatRange(min=0), default=DEFAULT_MAX_AUC_DROP, show_default=True,
              help="Refuse a precision whose validation AUC is lower than float32's by more than this.")
@click.option("--force", is_flag=True, help="Keep a precision even past --max-auc-drop.")
@click.option("--int8-products", type=click.Choice(INT8_PRODUCTS), default=INT8_PRODUCTS[0], show_default=True,
              help="With --precision int8, the matrix products computed in int8 too (static, calibrated on validation rows): "
                   "per-behaviour (the attention unit), constant-weights, all, or none (measured no faster here; Export guide).")
@click.option("--optimize", is_flag=True, help="Save ONNX Runtime's basic (portable) offline optimisation of the graph.")
@click.pass_context
def export_command(ctx: click.Context, source: Path, out: Path, attention_form: str, precision: str, valid: Path | None,
                   max_auc_drop: float, force: bool, int8_products: str, optimize: bool) -> None:
    """Export a bundle folder or a weights.pt checkpoint again, without retraining: attention form, precision, optimisation."""
    from ..export.rebuild import export_bundle

    only_with(ctx, ("valid", "max_auc_drop", "force"), precision != PRECISIONS[0],
              "--precision int8 or fp16 (the AUC check of a reduced precision); float32 has none")
    only_with(ctx, ("int8_products",), precision == "int8", "--precision int8")
    manifest = export_bundle(source, out, attention_form, precision, valid, max_auc_drop, force, optimize, int8_products)
    onnx_info = manifest["onnx"]
    click.echo(f"bundle written to {out}: {attention_form} attention, {precision}; ONNX vs PyTorch max |diff| "
               f"{onnx_info['parity']['max_abs_diff']:.2e} (tolerance {onnx_info['parity']['atol']})")
    if onnx_info["precisions"]:
        click.echo(f"validation AUC: float32 {onnx_info['precisions']['fp32']['auc']:.4f}, "
                   f"{precision} {onnx_info['precisions'][precision]['auc']:.4f}")


@main.command("verify")
@BUNDLE
def verify_command(bundle: Path) -> None:
    """Check a bundle: output names, symbolic dimensions, output shapes, values against PyTorch over a grid of
    shapes, onnx.checker, and ONNX's reference evaluator against ONNX Runtime."""
    from ..export.verify import verify_bundle

    report = verify_bundle(bundle)
    parity, reference = report["parity"], report["reference_evaluator"]
    click.echo(f"{bundle}: verified. outputs {report['outputs']}; inputs " +
               ", ".join(f"{i['name']}{i['dims']}" for i in report["inputs"]))
    click.echo(f"PyTorch parity over {len(parity['cases'])} shapes: max |diff| {parity['max_abs_diff']:.2e} <= {parity['atol']}; "
               f"onnx.checker: {report['checker']}; reference evaluator vs ONNX Runtime: max |diff| "
               f"{reference['max_abs_diff']:.2e} <= {reference['atol']}")


@main.command("inspect")
@BUNDLE
def inspect_command(bundle: Path) -> None:
    """Print a bundle's inputs, outputs, symbolic dimensions, opset, attention form, precision, metrics, sizes and sha256."""
    from din_runtime.manifest import read_manifest, sha256_of

    manifest = read_manifest(bundle)
    model_path = bundle / manifest["onnx"]["file"]
    output.inspection(bundle, manifest, sha256_of(model_path) if model_path.is_file() else "missing")


@main.command("triton")
@BUNDLE
@click.option("--repository", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Model repository folder (created if absent; other models in it are left alone).")
@click.option("--name", help="Model name in the repository (default: the bundle folder's name).")
@click.option("--gpu", is_flag=True, help="instance_group KIND_GPU (default KIND_CPU).")
@click.option("--max-batch-size", type=click.IntRange(min=1), default=TRITON_MAX_BATCH_SIZE, show_default=True, help="Triton's max_batch_size.")
@click.option("--instances", type=click.IntRange(min=1), default=TRITON_INSTANCES, show_default=True, help="Model instances.")
@click.option("--threads", type=click.IntRange(min=1), default=TRITON_THREADS, show_default=True,
              help="ONNX Runtime intra-op threads per instance.")
@click.option("--raw-inputs", is_flag=True, help="The graph takes raw IDs and numbers and encodes them itself (vocabulary lookup, "
                                                 "fill, normalisation); histories come padded with a history_length input.")
def triton_command(bundle: Path, repository: Path, name: str | None, gpu: bool, max_batch_size: int, instances: int, threads: int,
                   raw_inputs: bool) -> None:
    """Write a Triton Inference Server model repository entry (config.pbtxt and 1/model.onnx) for a bundle."""
    from ..export.triton import write_repository

    path = write_repository(bundle, repository, name, gpu, max_batch_size, instances, threads, raw_inputs=raw_inputs)
    click.echo(f"Triton model written to {path} ({'GPU' if gpu else 'CPU'}, max_batch_size {max_batch_size}"
               f"{', raw inputs' if raw_inputs else ''})")


@main.command("report")
@BUNDLE
@click.option("--explain", type=FILE, help="Also draw the attention weights of the first row's behaviours for the candidates of "
                                          "the table's first --rows rows (the model's explanation; every model but base).")
@click.option("--rows", type=click.IntRange(min=1, max=EXPLAIN_FIGURE_MAX_ROWS), default=EXPLAIN_FIGURE_ROWS, show_default=True,
              help="Candidates in the --explain figure.")
@click.option("--explain-plot", type=click.Path(dir_okay=False, path_type=Path),
              help=f"Where --explain writes its PNG [default: BUNDLE/{EXPLANATION_FILE}].")
@click.pass_context
def report_command(ctx: click.Context, bundle: Path, explain: Path | None, rows: int, explain_plot: Path | None) -> None:
    """Print a bundle's metrics (calibration too), its per-epoch history and the paths of its plots; with --explain,
    draw the attention weights of a user's behaviours for a few candidates."""
    from din_runtime.manifest import read_manifest

    only_with(ctx, ("rows", "explain_plot"), explain is not None, "--explain TABLE")
    output.report(bundle, read_manifest(bundle))
    if explain is not None:
        from ..explanation import draw_explanation

        out = explain_plot or bundle / EXPLANATION_FILE
        shown = draw_explanation(bundle, explain, rows, out)
        click.echo(f"explanation of {shown} candidates for the first row's user: {out}")
