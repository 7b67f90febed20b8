"""Logits → calibrated probabilities, fitted on the validation split: Platt scaling (the default),
temperature scaling (Platt without the intercept) or isotonic regression."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
from scipy.optimize import isotonic_regression, minimize
from scipy.special import expit

__all__ = ["CALIBRATION_METHODS", "CalibrationMethod", "Calibrator", "calibrated_probability", "fit_calibrator",
           "fit_platt"]

CalibrationMethod = Literal["platt", "temperature", "isotonic"]
CALIBRATION_METHODS: tuple[str, ...] = get_args(CalibrationMethod)


def calibrated_probability(logit: float | np.ndarray, a: float, b: float) -> np.ndarray:
    """``sigmoid(a * logit + b)``, float64, same shape as ``logit``."""
    z = a * np.asarray(logit, dtype=np.float64) + b
    return np.asarray(expit(z))


def _check(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(logits, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=np.float64).ravel()
    if x.shape != y.shape or x.size < 2:
        raise ValueError("logits and labels must be 1-D and the same length (at least 2)")
    if y.sum() == 0 or (1 - y).sum() == 0:
        raise ValueError("labels must contain both classes")
    return x, y


def _smoothed_targets(y: np.ndarray) -> np.ndarray:
    """Platt's targets: (n+ + 1)/(n+ + 2) for positives, 1/(n- + 2) for negatives, so that a finite
    validation set never claims a probability of exactly 0 or 1."""
    n_pos, n_neg = y.sum(), (1 - y).sum()
    return np.asarray(np.where(y > 0.5, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2)), dtype=np.float64)


def fit_platt(logits: np.ndarray, labels: np.ndarray, *, iterations: int = 100,
              intercept: bool = True) -> tuple[float, float]:
    """Maximum-likelihood ``(a, b)`` for ``P(y=1) = sigmoid(a * logit + b)`` (L-BFGS); without
    ``intercept``, ``b`` stays 0 (temperature scaling, temperature ``1 / a``).

    Uses Platt's smoothed targets so a separable validation set does not drive ``a`` to infinity.
    """
    x, y = _check(logits, labels)
    t = _smoothed_targets(y)
    mask = np.array([1.0, 1.0 if intercept else 0.0])

    def nll(params: np.ndarray) -> tuple[float, np.ndarray]:
        z = params[0] * x + params[1]
        # log(1 + e^z) - t z, computed stably; gradient (p - t) * [x, 1]
        value = float(np.sum(np.logaddexp(0.0, z) - t * z))
        residual = expit(z) - t
        return value, np.array([np.sum(residual * x), np.sum(residual)]) * mask

    fit = minimize(nll, np.array([1.0, 0.0]), jac=True, method="L-BFGS-B", options={"maxiter": iterations * 10})
    a, b = float(fit.x[0]), float(fit.x[1])
    if a <= 0:
        raise ValueError("calibration slope came out non-positive: the model ranks the classes backwards")
    return float(a), float(b)


@dataclass(frozen=True, slots=True)
class Calibrator:
    """A logit → probability map fitted on validation. ``platt`` and ``temperature``:
    ``sigmoid(a * logit + b)`` (temperature: ``b`` is 0). ``isotonic``: the monotone fit's blocks,
    each at its mean logit (``knots``, increasing) with its rate of positives (``values``,
    increasing), joined by straight lines and flat beyond the first and last knot."""

    method: CalibrationMethod = "platt"
    a: float = 1.0
    b: float = 0.0
    knots: tuple[float, ...] = ()
    values: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.method not in CALIBRATION_METHODS:
            raise ValueError(f"unknown calibration method {self.method!r}: one of {', '.join(CALIBRATION_METHODS)}")
        if self.method == "isotonic":
            k, v = np.asarray(self.knots), np.asarray(self.values)
            if len(k) < 2 or len(k) != len(v) or not (np.all(np.diff(k) > 0) and np.all(np.diff(v) > 0)):
                raise ValueError("isotonic calibration needs at least two knots, with knots and values increasing")
            if not (0 < v[0] and v[-1] < 1):
                raise ValueError("isotonic calibration values must lie in (0, 1)")
        elif self.a <= 0:
            raise ValueError("calibration slope must be positive")
        elif self.method == "temperature" and self.b != 0:
            raise ValueError("temperature scaling has no intercept")

    def probability(self, logit: float | np.ndarray) -> np.ndarray:
        """Calibrated probabilities, float64, the shape of ``logit``."""
        if self.method == "isotonic":
            return np.asarray(np.interp(np.asarray(logit, dtype=np.float64), self.knots, self.values))
        return calibrated_probability(logit, self.a, self.b)

    def logit_for(self, probability: float) -> float:
        """The logit whose calibrated probability is ``probability`` (isotonic: clamped to its
        knots, beyond which every logit has the end value)."""
        if self.method == "isotonic":
            return float(np.interp(probability, self.values, self.knots))
        return (math.log(probability / (1 - probability)) - self.b) / self.a

    def to_json(self, digits: int | None = 6) -> dict[str, Any]:
        """For a bundle (rounded to ``digits``), or unrounded (``None``) for a run's saved state."""
        def r(v: float) -> float:
            return v if digits is None else round(v, digits)

        if self.method == "isotonic":
            return {"method": "isotonic", "logits": [r(k) for k in self.knots],
                    "probabilities": [r(v) for v in self.values]}
        out: dict[str, Any] = {"method": self.method, "a": r(self.a), "b": r(self.b)}
        if self.method == "temperature":
            out["temperature"] = r(1 / self.a)
        return out

    @classmethod
    def from_json(cls, cal: dict[str, Any]) -> Calibrator:
        """From a bundle's ``calibration`` (a missing method is Platt's, for older bundles)."""
        method = cal.get("method", "platt")
        if method == "isotonic":
            return cls("isotonic", knots=tuple(float(k) for k in cal["logits"]),
                       values=tuple(float(v) for v in cal["probabilities"]))
        return cls(method, a=float(cal.get("a", 1.0)), b=float(cal.get("b", 0.0)))


def _fit_isotonic(logits: np.ndarray, labels: np.ndarray) -> Calibrator:
    x, y = _check(logits, labels)
    # equal logits are one point (their mean target, weighted by their count), so the fit does not
    # depend on the order the studies came in
    unique, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    n_pos, n_neg = y.sum(), (1 - y).sum()
    positives = np.bincount(inverse, weights=y)  # whole numbers: exact in any order
    t = (positives * (n_pos + 1) / (n_pos + 2) + (counts - positives) / (n_neg + 2)) / counts
    fit = isotonic_regression(t, weights=counts.astype(np.float64), increasing=True)
    starts = list(fit.blocks)
    blocks = [(float(np.average(unique[s:e], weights=counts[s:e])), float(fit.x[s]), float(counts[s:e].sum()))
              for s, e in zip(starts[:-1], starts[1:], strict=True)]
    merged: list[tuple[float, float, float]] = []
    for knot, value, n in blocks:  # knots that would collide once rounded: merged, weighted by their counts
        if merged and (knot - merged[-1][0] <= 1e-5 or value - merged[-1][1] <= 1e-5):
            k0, v0, n0 = merged.pop()
            knot, value, n = (k0 * n0 + knot * n) / (n0 + n), (v0 * n0 + value * n) / (n0 + n), n0 + n
        merged.append((knot, value, n))
    knots, values = [m[0] for m in merged], [m[1] for m in merged]
    if len(knots) < 2:
        raise ValueError("isotonic calibration found no rise: the model does not rank the classes")
    return Calibrator("isotonic", knots=tuple(knots), values=tuple(values))


def fit_calibrator(method: str, logits: np.ndarray, labels: np.ndarray) -> Calibrator:
    """Fit ``method`` (``platt``, ``temperature``, ``isotonic``) on validation logits and labels."""
    if method == "isotonic":
        return _fit_isotonic(logits, labels)
    if method == "temperature":
        a, _ = fit_platt(logits, labels, intercept=False)
        return Calibrator("temperature", a=a, b=0.0)
    if method == "platt":
        a, b = fit_platt(logits, labels)
        return Calibrator("platt", a=a, b=b)
    raise ValueError(f"unknown calibration method {method!r}: one of {', '.join(CALIBRATION_METHODS)}")
