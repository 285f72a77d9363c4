"""The search behind train-and-export's default training recipe: each candidate trained with several seeds on
several data sets, test AUC / GAUC / logloss, best epoch and training samples/s per run.

    python benchmarks/recipe_search.py --data ids-genre --candidates old-default lr-3e-3 --seeds 0 1 2
    python benchmarks/recipe_search.py --data ids-genre --candidates default --models din base din-seq   # the quality table
    python benchmarks/recipe_search.py --data ids-genre --models bst --candidates default encoder-heads-1 encoder-heads-4 \
        encoder-layers-2 dropout-0.1 lr-3e-3-now   # the family's own settings, from today's defaults

Data sets (MovieLens-100k read from ../shared/data/ml-100k, prepared into a temporary folder, never copied):
  ids-genre   examples/movielens-100k-ids-genre.toml: user, movie, first genre and their histories, one uniform
              negative per rating, per-user 10%/10% split (the protocol of the DeepCTR-Torch comparison)
  full        examples/movielens-100k.toml: the same plus gender, occupation, age and release year
  liked-time  another labelling and split: ratings of 4 and 5 are clicks, lower ones non-clicks (no sampled
              negatives), split by a global time cut (last 10% of the time range test, the 10% before valid)
  synthetic   the built-in generator (100,000 samples, 10% each held out for validation and test)
Every run is appended to --results as one JSON line; the table of means and standard deviations is printed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from din_export.config import ModelConfig, TrainConfig
from din_export.data.prepare import prepare
from din_export.data.prepared import SPEC_FILE
from din_export.data.rules import Sources
from din_export.data.source import DataSource
from din_export.data.spec import load_spec
from din_export.data.splits import EncodedData, load_data
from din_export.data.synthetic import SPEC_PATH
from din_export.model.family import MODELS, build_model
from din_export.training.metrics import evaluate
from din_export.training.train import predict, train

ROOT = Path(__file__).resolve().parent.parent
ML100K = ROOT.parent / "shared" / "data" / "ml-100k"
RECIPES = {"ids-genre": ROOT / "examples" / "movielens-100k-ids-genre.toml", "full": ROOT / "examples" / "movielens-100k.toml",
           "liked-time": ROOT / "examples" / "movielens-100k.toml"}
# liked-time: the full recipe with labels from ratings and a global time split instead of sampled negatives.
LIKED_TIME = {"log": {"label": "rating:float", "label_min": 4}, "sampling": {"negatives": 0},
              "split": {"mode": "global_time", "valid": 0.1, "test": 0.1}}

# The settings train-and-export had before this search (its defaults until then).
OLD_DEFAULT: dict[str, dict[str, Any]] = {
    "model": {"embedding_dim": 16, "attention_hidden": (80, 40), "attention_activation": "sigmoid", "attention_weighting": "raw",
              "mlp_hidden": (200, 80), "mlp_activation": "prelu", "embedding_init_std": 0.2, "dropout": 0.0, "batch_norm": False},
    "training": {"batch_size": 256, "learning_rate": 1e-3, "lr_schedule": "constant", "warmup_steps": 0, "embedding_l2": 0.0,
                 "augmentation": "none", "augmentation_rate": 0.0, "patience": 2},
}


def _shown(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _candidate(model: dict[str, Any] | None = None, **training: Any) -> dict[str, dict[str, Any]]:
    return {"model": {**OLD_DEFAULT["model"], **(model or {})}, "training": {**OLD_DEFAULT["training"], **training}}


def _current_default() -> dict[str, dict[str, Any]]:
    """train-and-export's defaults as they are now (the dataclasses), in the candidates' terms."""
    model, training = ModelConfig(), TrainConfig()
    by_variant = {f.name for f in fields(ModelConfig) if f.default is None}  # left out: each variant's own (dropout)
    return {"model": {k: getattr(model, k) for k in OLD_DEFAULT["model"] if k not in by_variant},
            "training": {k: getattr(training, k) for k in OLD_DEFAULT["training"]}}


def _from_default(model: dict[str, Any] | None = None, **training: Any) -> dict[str, dict[str, Any]]:
    """A candidate that changes today's defaults (where the family's own settings, encoder_heads and the like, are
    searched), described by what it changes from them."""
    default = _current_default()
    return {"model": {**default["model"], **(model or {})}, "training": {**default["training"], **training},
            "description": ", ".join(f"{k} {_shown(v)}" for k, v in {**(model or {}), **training}.items()) + " (from today's default)"}


CANDIDATES: dict[str, dict[str, dict[str, Any]]] = {
    "default": _current_default(),
    "encoder-heads-1": _from_default({"encoder_heads": 1}),
    "encoder-heads-4": _from_default({"encoder_heads": 4}),
    "encoder-layers-2": _from_default({"encoder_layers": 2}),
    "dropout-0.1": _from_default({"dropout": 0.1}),
    "lr-3e-3-now": _from_default(learning_rate=3e-3),
    "auxiliary-0.5": _from_default({"auxiliary_weight": 0.5}),
    "old-default": _candidate(),
    "lr-3e-3": _candidate(learning_rate=3e-3),
    "lr-3e-3-warmup": _candidate(learning_rate=3e-3, warmup_steps=300),
    "lr-6e-3-warmup": _candidate(learning_rate=6e-3, warmup_steps=300),
    "lr-3e-3-cosine": _candidate(learning_rate=3e-3, lr_schedule="cosine"),
    "lr-3e-3-l2": _candidate(learning_rate=3e-3, embedding_l2=1e-2),
    "lr-3e-3-dropout": _candidate({"dropout": 0.3}, learning_rate=3e-3),
    "lr-3e-3-batch-norm": _candidate({"batch_norm": True}, learning_rate=3e-3),
    "lr-3e-3-softmax": _candidate({"attention_weighting": "softmax"}, learning_rate=3e-3),
    "lr-3e-3-dice": _candidate({"mlp_activation": "dice"}, learning_rate=3e-3),
    "lr-3e-3-attention-dice": _candidate({"attention_activation": "dice"}, learning_rate=3e-3),
    "lr-3e-3-init-0.05": _candidate({"embedding_init_std": 0.05}, learning_rate=3e-3),
    "lr-3e-3-emb32": _candidate({"embedding_dim": 32}, learning_rate=3e-3),
    "lr-3e-3-mask": _candidate(learning_rate=3e-3, augmentation="mask", augmentation_rate=0.3),
    "lr-3e-3-crop": _candidate(learning_rate=3e-3, augmentation="crop", augmentation_rate=0.5),
    "dice-l2-cosine": _candidate({"mlp_activation": "dice"}, learning_rate=3e-3, embedding_l2=1e-2, lr_schedule="cosine"),
    "dice-l2-cosine-lr-5e-3": _candidate({"mlp_activation": "dice"}, learning_rate=5e-3, warmup_steps=300, embedding_l2=1e-2,
                                         lr_schedule="cosine"),
    "dice-l2-cosine-dropout": _candidate({"mlp_activation": "dice", "dropout": 0.2}, learning_rate=3e-3, embedding_l2=1e-2,
                                         lr_schedule="cosine"),
    "dice-l2x3-cosine": _candidate({"mlp_activation": "dice"}, learning_rate=3e-3, embedding_l2=3e-2, lr_schedule="cosine"),
    "dice-l2x10-cosine": _candidate({"mlp_activation": "dice"}, learning_rate=3e-3, embedding_l2=1e-1, lr_schedule="cosine"),
    "dice-l2x30-cosine": _candidate({"mlp_activation": "dice"}, learning_rate=3e-3, embedding_l2=3e-1, lr_schedule="cosine"),
    "dice-l2x10-cosine-att64-16": _candidate({"mlp_activation": "dice", "attention_hidden": (64, 16)}, learning_rate=3e-3,
                                             embedding_l2=1e-1, lr_schedule="cosine"),
    "dice-l2x10-cosine-bs512": _candidate({"mlp_activation": "dice"}, batch_size=512, learning_rate=5e-3, warmup_steps=100,
                                          embedding_l2=1e-1, lr_schedule="cosine"),
    "dice-l2x10-cosine-bs512-lr-3e-3": _candidate({"mlp_activation": "dice"}, batch_size=512, learning_rate=3e-3, warmup_steps=100,
                                                  embedding_l2=1e-1, lr_schedule="cosine"),
    "dice-l2x10-cosine-bs512-patience-3": _candidate({"mlp_activation": "dice"}, batch_size=512, learning_rate=5e-3, warmup_steps=100,
                                                     embedding_l2=1e-1, lr_schedule="cosine", patience=3),
    "l2x10-cosine": _candidate(learning_rate=3e-3, embedding_l2=1e-1, lr_schedule="cosine"),
    "dice-l2x3-cosine-crop": _candidate({"mlp_activation": "dice"}, learning_rate=3e-3, embedding_l2=3e-2, lr_schedule="cosine",
                                        augmentation="crop", augmentation_rate=0.5),
}


def prepared(name: str, scratch: Path) -> EncodedData:
    """The named data set, read and encoded once for every run on it."""
    if name == "synthetic":
        return load_data(DataSource(), load_spec(SPEC_PATH), seed=0)
    recipe = RECIPES[name]
    if name == "liked-time":
        text = recipe.read_text(encoding="utf-8")
        data = tomllib.loads(text)
        data["log"].update(LIKED_TIME["log"])
        data["sampling"], data["split"] = LIKED_TIME["sampling"], LIKED_TIME["split"]
        recipe = scratch / "liked-time.toml"
        recipe.write_text(_to_toml(data), encoding="utf-8")
    out = scratch / name
    items = ML100K / "ml-100k.item"
    users = ML100K / "ml-100k.user" if "[users]" in recipe.read_text(encoding="utf-8") else None
    prepare(recipe, Sources(ML100K / "ml-100k.inter", items, users), out)
    source = DataSource(out / "train.parquet", out / "valid.parquet", out / "test.parquet")
    return load_data(source, load_spec(out / SPEC_FILE), seed=0)


def _to_toml(data: dict[str, Any]) -> str:
    """A recipe written back as TOML (tables of scalars only, as recipes are)."""
    def value(v: Any) -> str:
        return json.dumps(v) if not isinstance(v, bool) else str(v).lower()
    lines = [f"{k} = {value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for section, body in data.items():
        if isinstance(body, dict) and section != "features":
            lines += [f"[{section}]"] + [f"{k} = {value(v)}" for k, v in body.items()]
    for feature, body in data.get("features", {}).items():
        lines += [f"[features.{feature}]"] + [f"{k} = {value(v)}" for k, v in body.items()]
    return "\n".join(lines) + "\n"


def run(data: EncodedData, settings: dict[str, dict[str, Any]], seed: int, epochs: int, variant: str) -> dict[str, Any]:
    model_config = ModelConfig(**{**settings["model"], "variant": variant})
    train_config = TrainConfig(**{**settings["training"], "epochs": epochs, "seed": seed, "progress": False})
    torch.manual_seed(seed)
    din = build_model(data.schema, model_config)
    started = time.perf_counter()
    result = train(din, data.splits["train"], data.splits["valid"], train_config)
    test = evaluate(data.splits["test"].labels, predict(din, data.splits["test"]), data.splits["test"].groups)
    return {"auc": test["auc"], "gauc": test.get("gauc"), "logloss": test["logloss"], "best_epoch": result.best_epoch,
            "epochs_run": len(result.history), "samples_per_second": result.samples_per_second,
            "seconds": time.perf_counter() - started}


def _cell(rows: list[dict[str, Any]], key: str, digits: int = 4) -> str:
    values = [r[key] for r in rows if r.get(key) is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def changes(candidate: str) -> str:
    """What a candidate changes from the old default, in the flags' terms."""
    if candidate not in CANDIDATES:
        return "?"
    settings = CANDIDATES[candidate]
    if "description" in settings:
        return settings["description"]
    changed = [f"{k} {_shown(v)}" for section in ("model", "training") for k, v in settings[section].items()
               if OLD_DEFAULT[section].get(k) != v]
    return ", ".join(changed) or "(none)"


def summarise(rows: list[dict[str, Any]]) -> str:
    lines = ["| data | candidate | changes from the old default | model | seeds | test AUC | test GAUC | test logloss | best epoch |",
             "|---|---|---|---|---|---:|---:|---:|---:|"]
    keys = sorted({(r["data"], r["candidate"], r["variant"]) for r in rows}, key=lambda k: (k[0], -statistics.mean(
        [r["auc"] for r in rows if (r["data"], r["candidate"], r["variant"]) == k])))
    for key in keys:
        mine = sorted((r for r in rows if (r["data"], r["candidate"], r["variant"]) == key), key=lambda r: r["seed"])
        seeds = ", ".join(str(r["seed"]) for r in mine)
        epochs = ", ".join(str(r["best_epoch"]) for r in mine)
        described = mine[0].get("description") or changes(key[1])
        lines.append(f"| {key[0]} | {key[1]} | {described} | {key[2]} | {seeds} | {_cell(mine, 'auc')} | {_cell(mine, 'gauc')} | "
                     f"{_cell(mine, 'logloss')} | {epochs} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", nargs="+", default=["ids-genre"], choices=[*RECIPES, "synthetic"])
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    parser.add_argument("--models", nargs="+", default=["din"], choices=list(MODELS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's own choice)")
    parser.add_argument("--results", type=Path, default=Path("recipe-runs.jsonl"))
    parser.add_argument("--summarise", action="store_true", help="Only print the table of the runs already in --results.")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.summarise:
        with tempfile.TemporaryDirectory() as scratch:
            for data_name in args.data:
                data = prepared(data_name, Path(scratch))
                for candidate in args.candidates:
                    for variant in args.models:
                        for seed in args.seeds:
                            row = {"data": data_name, "candidate": candidate, "variant": variant, "seed": seed,
                                   "description": changes(candidate),
                                   **run(data, CANDIDATES[candidate], seed, args.epochs, variant)}
                            with open(args.results, "a", encoding="utf-8") as stream:
                                stream.write(json.dumps(row) + "\n")
                            print(json.dumps(row), flush=True)
    rows = [json.loads(line) for line in args.results.read_text(encoding="utf-8").splitlines() if line.strip()]
    print(summarise(rows))


if __name__ == "__main__":
    main()
