"""The training curve of a run, saved as a PNG in its bundle (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_history(history: list[dict[str, float]], best_epoch: int, path: Path, title: str) -> None:
    epochs = [h["epoch"] for h in history]
    figure, (loss_axis, auc_axis) = plt.subplots(1, 2, figsize=(9, 3.5))
    loss_axis.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train loss")
    loss_axis.plot(epochs, [h["valid_logloss"] for h in history], marker="o", label="valid logloss")
    loss_axis.set_xlabel("epoch")
    loss_axis.set_title("loss")
    loss_axis.legend()
    auc_axis.plot(epochs, [h["valid_auc"] for h in history], marker="o", color="tab:green")
    auc_axis.axvline(best_epoch, color="grey", linestyle="--", label=f"best epoch {best_epoch}")
    auc_axis.set_xlabel("epoch")
    auc_axis.set_title("validation AUC")
    auc_axis.legend()
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
