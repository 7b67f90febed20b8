"""Logits → calibrated probabilities (Platt scaling fitted on the validation split)."""

from __future__ import annotations

import numpy as np
from scipy.special import expit

__all__ = ["calibrated_probability", "fit_platt"]


def calibrated_probability(logit: float | np.ndarray, a: float, b: float) -> np.ndarray:
    """``sigmoid(a * logit + b)``, float64, same shape as ``logit``."""
    z = a * np.asarray(logit, dtype=np.float64) + b
    return np.asarray(expit(z))


def fit_platt(logits: np.ndarray, labels: np.ndarray, *, iterations: int = 100) -> tuple[float, float]:
    """Maximum-likelihood ``(a, b)`` for ``P(y=1) = sigmoid(a * logit + b)`` (Newton's method).

    Uses Platt's smoothed targets so a separable validation set does not drive ``a`` to infinity.
    """
    x = np.asarray(logits, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=np.float64).ravel()
    if x.shape != y.shape or x.size < 2:
        raise ValueError("logits and labels must be 1-D and the same length (at least 2)")
    n_pos, n_neg = y.sum(), (1 - y).sum()
    if n_pos == 0 or n_neg == 0:
        raise ValueError("labels must contain both classes")
    t = np.where(y > 0.5, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
    a, b = 1.0, 0.0
    for _ in range(iterations):
        p = expit(a * x + b)
        w = np.maximum(p * (1 - p), 1e-12)
        grad = np.array([np.sum((p - t) * x), np.sum(p - t)])
        hess = np.array([[np.sum(w * x * x), np.sum(w * x)], [np.sum(w * x), np.sum(w)]]) + 1e-9 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        a, b = a - step[0], b - step[1]
        if np.max(np.abs(step)) < 1e-10:
            break
    if a <= 0:
        raise ValueError("calibration slope came out non-positive: the model ranks the classes backwards")
    return float(a), float(b)
