"""`din-export tune`: Optuna's TPE search over learning rate, embedding size, MLP sizes, dropout and mini-batch
aware regularisation, pruning trials whose validation AUC trails the median after an epoch. The data is read
and encoded once for all trials; the best settings are written as a spec with [model] and [training]."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import torch

from ..config import TuneConfig, resolve
from ..data.source import DataSource
from ..data.spec import Spec, spec_from_dict, spec_to_toml
from ..data.splits import load_data
from ..files import write_atomic
from ..model.family import build_model
from .train import train

MLP_SIZES = {"200,80": [200, 80], "128,64": [128, 64], "64,32": [64, 32]}
ATTENTION_SIZES = {"80,40": [80, 40], "36": [36], "32,16": [32, 16]}


def suggest(trial: optuna.Trial) -> tuple[dict[str, Any], dict[str, Any]]:
    """One point of the search space: (model settings, training settings)."""
    model = {
        "embedding_dim": trial.suggest_categorical("embedding_dim", [8, 16, 32]),
        "mlp_hidden": MLP_SIZES[trial.suggest_categorical("mlp_hidden", list(MLP_SIZES))],
        "attention_hidden": ATTENTION_SIZES[trial.suggest_categorical("attention_hidden", list(ATTENTION_SIZES))],
        "dropout": trial.suggest_float("dropout", 0.0, 0.5),
    }
    training = {
        "learning_rate": trial.suggest_float("learning_rate", 1e-4, 1e-2, log=True),
        "embedding_l2": trial.suggest_categorical("embedding_l2", [0.0, 1e-4, 1e-3, 1e-2]),
    }
    return model, training


def tune(source: DataSource, spec: Spec, out: Path, config: TuneConfig, variant: str) -> dict[str, Any]:
    """Run the study and write the best spec to `out`; returns a summary of the study."""
    seed, epochs = config.seed, config.epochs
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    data = load_data(source, spec, seed)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed),
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1))

    def objective(trial: optuna.Trial) -> float:
        model_settings, training_settings = suggest(trial)
        model_config, train_config = resolve(spec, {**model_settings, "variant": variant},
                                             {**training_settings, "epochs": epochs, "seed": seed, "progress": False})

        def report(epoch: int, valid_auc: float) -> None:
            trial.report(valid_auc, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()

        torch.manual_seed(seed)
        result = train(build_model(data.schema, model_config), data.splits["train"], data.splits["valid"], train_config, on_epoch=report)
        # Only what was searched goes into the output spec, over the input spec's own sections: the trial budget
        # (epochs) and the seed are this search's, not settings for the training that uses the spec.
        trial.set_user_attr("model", {**spec.model, **model_settings, "variant": variant})
        trial.set_user_attr("training", {**spec.training, **training_settings})
        return max(h["valid_auc"] for h in result.history)

    study.optimize(objective, n_trials=config.trials, timeout=config.timeout)
    best = study.best_trial
    best_spec = spec_from_dict({**spec.to_dict(), "model": best.user_attrs["model"], "training": best.user_attrs["training"]})
    write_atomic(out, lambda temporary: temporary.write_text(spec_to_toml(best_spec), encoding="utf-8"))
    states = [t.state for t in study.trials]
    return {"best_valid_auc": best.value, "best_trial": best.number, "trials": len(states),
            "pruned": states.count(optuna.trial.TrialState.PRUNED), "complete": states.count(optuna.trial.TrialState.COMPLETE)}
