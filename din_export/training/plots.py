"""The training curve and the reliability diagram of a run, saved as PNGs in its bundle (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .metrics import calibration_ratio, expected_calibration_error, reliability  # noqa: E402


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


def plot_reliability(labels: np.ndarray, probabilities: np.ndarray, path: Path, title: str) -> None:
    """Observed click rate against mean predicted probability per equal-mass bin, with the diagonal of perfect
    calibration; ECE and the calibration ratio in the legend."""
    table = reliability(labels, probabilities)
    predicted, observed = [b["predicted"] for b in table], [b["observed"] for b in table]
    top = max([*predicted, *observed, 1e-3]) * 1.05
    figure, axis = plt.subplots(figsize=(4.5, 4.5))
    axis.plot([0, top], [0, top], color="grey", linestyle="--", label="perfectly calibrated")
    ratio = calibration_ratio(labels, probabilities)
    axis.plot(predicted, observed, marker="o", label=f"ECE {expected_calibration_error(labels, probabilities):.4f}, "
                                                        f"ratio {ratio:.3f} ({len(table)} equal-mass bins)")
    axis.set_xlim(0, top)
    axis.set_ylim(0, top)
    axis.set_xlabel("mean predicted probability")
    axis.set_ylabel("observed click rate")
    axis.set_title(title, fontsize=9)
    axis.legend(fontsize=8, loc="upper left")
    figure.tight_layout()
    figure.savefig(path, dpi=100, format="png")
    plt.close(figure)
