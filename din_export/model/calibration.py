"""From DIN's logit to the probability a bundle serves: the exact correction for negative downsampling, then an
optional post-hoc calibration fitted on validation. Both sit inside the exported graphs, so every consumer of the
file (din_runtime, Triton, the raw-input graph) serves the same calibrated probability.

Downsampling (He et al., 2014): a model trained on every click and a fraction w of the non-clicks learns odds 1/w
times the population's, so the population's probability is q = p / (p + (1 - p) / w): on the logit, a shift by
log(w), exact whatever the model. Platt scaling then fits sigmoid(a z + b) and isotonic regression a non-decreasing
piecewise-linear map of the corrected logit z, both by maximum likelihood on the validation split, which
`prepare` never downsamples (it is the real population).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import CALIBRATIONS

PROBABILITY_FLOOR = 1e-6  # an isotonic step never serves exactly 0 or 1: a logloss stays finite, a bid stays positive
KNOT_GAP = 0.02  # least distance of two isotonic knots on the logit: bounds the map's slope, so float rounding stays small
NEWTON_STEPS = 100


@dataclass(frozen=True)
class CalibrationFit:
    """What was fitted: the method, the downsampling rate it corrects, Platt's scale and bias, isotonic knots."""

    method: str = "none"
    keep_negatives: float = 1.0
    scale: float = 1.0
    bias: float = 0.0
    knots: tuple[tuple[float, ...], tuple[float, ...]] = ((), ())  # (corrected logits, probabilities), increasing
    fitted_rows: int = 0
    reason: str = ""  # why the method is none where another was asked for (said by train-and-export, report, inspect)

    def __post_init__(self) -> None:
        if self.method not in CALIBRATIONS:
            raise ValueError(f"calibration must be one of {CALIBRATIONS}, not {self.method!r}")
        if not 0 < self.keep_negatives <= 1:
            raise ValueError(f"keep_negatives must be in (0, 1], not {self.keep_negatives}")

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "keep_negatives": self.keep_negatives, "scale": self.scale, "bias": self.bias,
                "knots": [list(self.knots[0]), list(self.knots[1])], "fitted_rows": self.fitted_rows,
                **({"reason": self.reason} if self.reason else {})}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> CalibrationFit:
        if not data:
            return cls()
        knots = data.get("knots") or [[], []]
        return cls(data["method"], float(data["keep_negatives"]), float(data["scale"]), float(data["bias"]),
                   (tuple(knots[0]), tuple(knots[1])), int(data.get("fitted_rows", 0)), str(data.get("reason", "")))


class Calibration(nn.Module):
    """The fitted map as a module of constants (nothing in the state dict: the manifest holds the fit)."""

    def __init__(self, fit: CalibrationFit | None = None) -> None:
        super().__init__()
        self.fit = fit or CalibrationFit()
        self.shift = math.log(self.fit.keep_negatives)
        x, y = (np.asarray(v, dtype=np.float32) for v in self.fit.knots)
        self.register_buffer("knot_x", torch.from_numpy(x[:-1].copy()), persistent=False)
        self.register_buffer("knot_width", torch.from_numpy(np.diff(x)), persistent=False)
        self.register_buffer("knot_rise", torch.from_numpy(np.diff(y)), persistent=False)
        self.first = float(y[0]) if len(y) else 0.0

    def forward(self, logit: torch.Tensor) -> torch.Tensor:
        z = logit + self.shift if self.shift else logit
        if self.fit.method == "platt":
            return torch.sigmoid(z * self.fit.scale + self.fit.bias)
        if self.fit.method == "isotonic":
            step = ((z.unsqueeze(-1) - self.knot_x) / self.knot_width).clamp(0.0, 1.0)
            return (step * self.knot_rise).sum(-1) + self.first
        return torch.sigmoid(z)


def _logloss_newton(z: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Maximum-likelihood (a, b) of sigmoid(a z + b) by Newton's method with a step halving: convex, 2 parameters."""
    a, b = 1.0, 0.0

    def loss(a: float, b: float) -> float:
        t = a * z + b
        return float(np.mean(np.logaddexp(0.0, t) - y * t))

    current = loss(a, b)
    for _ in range(NEWTON_STEPS):
        p = 1.0 / (1.0 + np.exp(-(a * z + b)))
        residual, weight = p - y, np.maximum(p * (1 - p), 1e-12)
        gradient = np.array([np.mean(residual * z), np.mean(residual)])
        hessian = np.array([[np.mean(weight * z * z), np.mean(weight * z)], [np.mean(weight * z), np.mean(weight)]])
        step = np.linalg.solve(hessian + 1e-9 * np.eye(2), gradient)
        size = 1.0
        while size > 1e-6 and (candidate := loss(a - size * step[0], b - size * step[1])) > current:
            size /= 2
        if size <= 1e-6:
            break
        a, b, improvement, current = a - size * step[0], b - size * step[1], current - candidate, candidate
        if improvement < 1e-12:
            break
    return float(a), float(b)


def _pool_adjacent_violators(values: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The non-decreasing least-squares fit of values (in order), as blocks: (first index, weight, mean) per block."""
    starts, totals, means = [], [], []
    for index, (value, weight) in enumerate(zip(values.tolist(), weights.tolist(), strict=True)):
        starts.append(index)
        totals.append(weight)
        means.append(value)
        while len(means) > 1 and means[-2] >= means[-1]:
            weight = totals[-2] + totals[-1]
            means[-2] = (means[-2] * totals[-2] + means[-1] * totals[-1]) / weight
            totals[-2] = weight
            del starts[-1], totals[-1], means[-1]
    return np.asarray(starts), np.asarray(totals), np.asarray(means)


def _isotonic_knots(z: np.ndarray, y: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Knots of the isotonic map: each block of the pooled fit at its mean logit, blocks nearer than KNOT_GAP merged."""
    unique, inverse, counts = np.unique(z, return_inverse=True, return_counts=True)
    clicks = np.bincount(inverse, weights=y)
    starts, weights, means = _pool_adjacent_violators(clicks / counts, counts.astype(np.float64))
    block = np.repeat(np.arange(len(starts)), np.diff(np.append(starts, len(unique))))
    centres = np.bincount(block, weights=unique * counts) / weights
    x, p, w = [centres[0]], [means[0]], [weights[0]]
    for centre, mean, weight in zip(centres[1:], means[1:], weights[1:], strict=True):
        if centre - x[-1] < KNOT_GAP:  # merging neighbours of a non-decreasing fit keeps it non-decreasing
            total = w[-1] + weight
            x[-1], p[-1], w[-1] = (x[-1] * w[-1] + centre * weight) / total, (p[-1] * w[-1] + mean * weight) / total, total
        else:
            x.append(centre)
            p.append(mean)
            w.append(weight)
    clipped = np.clip(p, PROBABILITY_FLOOR, 1 - PROBABILITY_FLOOR)
    return tuple(float(v) for v in x), tuple(float(v) for v in clipped)


def fit_calibration(method: str, logits: np.ndarray, labels: np.ndarray, keep_negatives: float = 1.0) -> CalibrationFit:
    """Fit `method` on the model's logits for the validation rows (a population not downsampled)."""
    z = np.asarray(logits, dtype=np.float64) + math.log(keep_negatives)
    y = (np.asarray(labels) > 0.5).astype(np.float64)
    if method not in CALIBRATIONS:
        raise ValueError(f"calibration must be one of {CALIBRATIONS}, not {method!r}")
    if method == "none":
        return CalibrationFit("none", keep_negatives, fitted_rows=len(y))
    if len(y) == 0 or y.min() == y.max():  # one class only: nothing to fit against
        return CalibrationFit("none", keep_negatives, fitted_rows=len(y),
                              reason=f"{method} not fitted: the validation split holds one label only ({len(y)} rows)")
    if method == "platt":
        scale, bias = _logloss_newton(z, y)
        if scale <= 0:  # a model that ranks no better than chance on validation: its order is kept, uncalibrated
            return CalibrationFit("none", keep_negatives, fitted_rows=len(y),
                                  reason=f"platt not fitted: the model ranks validation no better than chance (its fitted scale "
                                         f"{scale:.3g} would reverse its order), so its scores are served uncorrected")
        return CalibrationFit("platt", keep_negatives, scale, bias, fitted_rows=len(y))
    return CalibrationFit("isotonic", keep_negatives, knots=_isotonic_knots(z, y), fitted_rows=len(y))
