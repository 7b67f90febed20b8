"""Logits → calibrated probabilities (Platt scaling fitted on the validation split)."""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit

__all__ = ["calibrated_probability", "fit_platt"]


def calibrated_probability(logit: float | np.ndarray, a: float, b: float) -> np.ndarray:
    """``sigmoid(a * logit + b)``, float64, same shape as ``logit``."""
    z = a * np.asarray(logit, dtype=np.float64) + b
    return np.asarray(expit(z))


def fit_platt(logits: np.ndarray, labels: np.ndarray, *, iterations: int = 100) -> tuple[float, float]:
    """Maximum-likelihood ``(a, b)`` for ``P(y=1) = sigmoid(a * logit + b)`` (L-BFGS).

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

    def nll(params: np.ndarray) -> tuple[float, np.ndarray]:
        z = params[0] * x + params[1]
        # log(1 + e^z) - t z, computed stably; gradient (p - t) * [x, 1]
        value = float(np.sum(np.logaddexp(0.0, z) - t * z))
        residual = expit(z) - t
        return value, np.array([np.sum(residual * x), np.sum(residual)])

    fit = minimize(nll, np.array([1.0, 0.0]), jac=True, method="L-BFGS-B", options={"maxiter": iterations * 10})
    a, b = float(fit.x[0]), float(fit.x[1])
    if a <= 0:
        raise ValueError("calibration slope came out non-positive: the model ranks the classes backwards")
    return float(a), float(b)
