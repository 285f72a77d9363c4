"""What the commands print: metrics lines and tables, a bundle's report and inspection, a comparison and an
evaluation. Each function takes the result a library function returned and echoes it; nothing here computes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..config import CALIBRATION_BINS

# Metrics as printed, in this order; ratio: mean predicted / observed click rate.
METRICS = {"auc": "AUC", "gauc": "GAUC", "logloss": "logloss", "accuracy": "accuracy", "ece": "ECE", "calibration_ratio": "ratio"}
ECE_NOTE = f"ECE over {CALIBRATION_BINS} equal-mass bins; ratio: mean predicted / observed click rate"


def gauc_note(row: dict[str, Any]) -> str:
    """How many users GAUC averaged over, or why it is undefined."""
    from ..training.metrics import MIN_GAUC_USERS

    users = row.get("gauc_users")
    if users is None:
        return ""
    if row.get("gauc") is None:
        return f"GAUC undefined: only {users} user(s) have both labels (it needs {MIN_GAUC_USERS})"
    return f"GAUC over {users} users"


def metrics_text(row: dict[str, Any]) -> str:
    """'auc 0.8608, gauc 0.8568, ...': the metrics a split has (GAUC may be undefined)."""
    return ", ".join(f"{k} {row[k]:.4f}" for k in METRICS if row.get(k) is not None)


def metrics_header(first: str, width: int) -> str:
    return f"{first:<{width}}" + "".join(f"{label:>10}" for label in METRICS.values())


def metrics_row(first: str, width: int, row: dict[str, Any]) -> str:
    return f"{first:<{width}}" + "".join(f"{row[k]:>10.4f}" if row.get(k) is not None else f"{'-':>10}" for k in METRICS)


def calibration_text(manifest: dict[str, Any]) -> str:
    """'calibration platt after the correction for keep_negatives 0.1': how the served probability is made, and why
    it is none where training asked for a map but could not fit one."""
    fit = manifest.get("calibration") or {"method": "none", "keep_negatives": 1.0}
    correction = f" after the exact correction for keep_negatives {fit['keep_negatives']:g}" if fit["keep_negatives"] != 1 else ""
    reason = f" ({fit['reason']})" if fit.get("reason") else ""
    return f"calibration {fit['method']}{correction}{reason}"


def trained(out: Path, manifest: dict[str, Any]) -> None:
    """train-and-export's three lines: where the bundle is, its test metrics, and where the time went."""
    test = manifest["metrics"]["test"]
    note = gauc_note(test)
    click.echo(f"bundle written to {out}")
    click.echo(f"test: {metrics_text(test)}{f' ({note})' if note else ''} (best epoch {manifest['metrics']['best_epoch']}); "
               f"{calibration_text(manifest)}; ONNX vs PyTorch max |diff| {manifest['onnx']['parity']['max_abs_diff']:.2e}")
    seconds = manifest["seconds"]
    rest = {name: value for name, value in seconds.items() if name != "train"}
    click.echo(f"time: training {seconds['train']:.1f} s, everything else {sum(rest.values()):.1f} s ("
               + ", ".join(f"{name} {value:.1f}" for name, value in rest.items()) + ")")


def report(bundle: Path, manifest: dict[str, Any]) -> None:
    """A bundle's metrics, calibration, lineage, per-epoch history and plots."""
    metrics, model, training = manifest["metrics"], manifest["model"], manifest["training"]
    speed = training.get("samples_per_second")
    speed_text = f"{speed:,.0f} training samples/s" if speed is not None else "no training steps"
    click.echo(f"bundle {bundle}: {model['variant']}, data {manifest['data']['source']}, "
               f"{speed_text} on {training.get('processes', 1)} process(es)")
    generation = (manifest.get("lineage") or {}).get("generation")
    if generation:
        parent = manifest["lineage"]["parent"]
        click.echo(f"warm-started (generation {generation}) from {parent['bundle']} (model sha256 {str(parent['model_sha256'])[:12]}, "
                   f"written {parent['created']})")
    click.echo(f"{'split':<6}{'rows':>8}" + metrics_header("", 0))
    for split in ("valid", "test"):
        row = metrics[split]
        note = gauc_note(row)
        click.echo(f"{split:<6}{row['rows']:>8}" + metrics_row("", 0, row) + (f"   {note}" if note else ""))
    click.echo(f"{calibration_text(manifest)}; {ECE_NOTE}")
    click.echo(f"{'epoch':<6}{'train loss':>12}{'valid AUC':>11}{'valid logloss':>15}")
    for entry in metrics["history"]:
        marker = "  <- best" if entry["epoch"] == metrics["best_epoch"] else ""
        loss = f"{entry['train_loss']:>12.4f}" if entry["train_loss"] is not None else f"{'(parent)':>12}"  # a warm start's epoch 0
        click.echo(f"{entry['epoch']:<6}{loss}{entry['valid_auc']:>11.4f}{entry['valid_logloss']:>15.4f}{marker}")
    click.echo(f"plot: {bundle / manifest['plot']}" if manifest["plot"] else "plot: none in this bundle")
    click.echo(f"reliability diagram (test): {bundle / manifest['reliability_plot']}" if manifest["reliability_plot"]
               else "reliability diagram: none in this bundle")


def precision_lines(precisions: dict[str, Any]) -> list[str]:
    """What a reduced precision converted, per graph, and what its AUC check found."""
    lines = [f"{section}: {record['weights']} weights, {record['arithmetic']} arithmetic" if "arithmetic" in record else
             f"{section}: int8 embedding tables {', '.join(record['embeddings']['tables']) or 'none'}; int8 products "
             f"{len(record['products']['nodes'])} ({record['products']['choice']}"
             + (f"; weights per channel, activations calibrated on {record['products']['calibration_rows']:,} validation rows"
                if record['products']['nodes'] else "") + f"); float32 products {len(record['float32']['products'])}"
             + (f", {len(record['float32']['loop_body_products'])} in loop bodies" if record['float32']['loop_body_products'] else "")
             for section, record in precisions.get("converted", {}).items()]
    if "auc_drop" in precisions:
        reduced = next(name for name in precisions if name not in ("fp32", "converted", "auc_drop", "max_auc_drop"))
        lines.append(f"validation AUC: float32 {precisions['fp32']['auc']:.4f}, {reduced} {precisions[reduced]['auc']:.4f} "
                     f"(drop {precisions['auc_drop']:.4f}, allowed {precisions['max_auc_drop']:g})")
    return lines


def inspection(bundle: Path, manifest: dict[str, Any], actual_sha256: str) -> None:
    """A bundle's graph: inputs, outputs, symbolic dimensions, opset, form, precision, metrics, files and sha256."""
    onnx_info = manifest["onnx"]
    click.echo(f"bundle {bundle}")
    click.echo(f"model: {manifest['model']['variant']}; attention form {onnx_info['graph']}, precision "
               f"{onnx_info['precision']}, optimisation {onnx_info['optimization'] or 'none'}, opset {onnx_info['opset']}")
    for kind in ("inputs", "outputs"):
        for entry in onnx_info[kind]:
            click.echo(f"  {kind[:-1]:<7}{entry['name']:<20}{entry['dtype']:<9}{entry['dims']}")
    for line in precision_lines(onnx_info.get("precisions") or {}):
        click.echo(line)
    for split in ("valid", "test"):
        row = manifest["metrics"].get(split)
        if row:
            click.echo(f"{split}: {metrics_text(row)}")
    click.echo(calibration_text(manifest))
    for file in sorted(bundle.iterdir()):
        click.echo(f"  file {file.name:<16}{file.stat().st_size:>12,} bytes")
    click.echo(f"sha256 {actual_sha256} ({'matches' if actual_sha256 == onnx_info['sha256'] else 'DOES NOT MATCH'} the manifest)")


def comparison(result: Any, data: Path, max_auc_drop: float) -> None:
    """compare's table of both bundles' metrics, the AUC difference with its interval, and the verdict."""
    click.echo(f"{result.rows:,} rows of {data}, {result.users:,} users")
    click.echo(metrics_header("", 5))
    for name, row in (("old", result.old), ("new", result.new)):
        click.echo(metrics_row(name, 5, row))
    low, high = result.interval
    click.echo(f"AUC new - old: {result.auc_difference:+.4f} (95% interval {low:+.4f} to {high:+.4f}; paired bootstrap over "
               f"{result.users:,} users, {result.resamples} resamples)")
    click.echo(f"NEW is {'worse than' if result.worse else 'not worse than'} OLD by more than {max_auc_drop:g} AUC: exit {int(result.worse)}")


def evaluation(result: dict[str, Any], data: Path, plot: Path | None) -> None:
    """evaluate's metrics and, with --rank, the ranking metrics."""
    note = gauc_note(result)
    click.echo(f"{result['rows']:,} rows of {data}" + (f"; {note}" if note else ""))
    click.echo(metrics_header("", 0))
    click.echo(metrics_row("", 0, result))
    click.echo(ECE_NOTE + (f"; reliability diagram: {plot}" if plot else ""))
    ranking = result.get("ranking")
    if ranking:
        click.echo(f"ranking: each of {ranking['positives']:,} positives among {ranking['negatives']} negatives from {ranking['pool']} "
                   f"(seed {ranking['seed']})")
        shown = {name: value for name, value in ranking.items() if "@" in name or name == "mrr"}
        click.echo("".join(f"{name.upper():>10}" for name in shown))
        click.echo("".join(f"{value:>10.4f}" for value in shown.values()))
