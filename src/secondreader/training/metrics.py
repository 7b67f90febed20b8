"""Evaluation metrics: AUROC with a bootstrap interval, operating-point statistics, calibration."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

from ..stats import Rate

__all__ = ["BinaryMetrics", "DecisionRates", "auroc", "binary_metrics", "bootstrap_auroc", "decision_rates",
           "expected_calibration_error", "threshold_for_sensitivity", "youden_threshold"]


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with midranks for ties)."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUROC needs both classes")
    ranks = rankdata(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def bootstrap_auroc(scores: np.ndarray, labels: np.ndarray, *, n_boot: int = 2000, seed: int = 0,
                    alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap interval of the AUROC (resampling cases)."""
    rng = np.random.default_rng(seed)
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel()
    values = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(s), len(s))
        if y[idx].min() == y[idx].max():
            continue
        values.append(auroc(s[idx], y[idx]))
    low, high = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, *, bins: int = 10) -> float:
    p = np.asarray(probabilities, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=np.float64).ravel()
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            ece += mask.mean() * abs(p[mask].mean() - y[mask].mean())
    return float(ece)


def youden_threshold(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The threshold maximising sensitivity + specificity - 1 (midpoint between neighbours)."""
    p = np.asarray(probabilities, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    candidates = np.unique(p)
    best, best_j = 0.5, -1.0
    for t in candidates:
        pred = p >= t
        j = pred[y].mean() + (~pred[~y]).mean() - 1.0
        if j > best_j:
            best, best_j = float(t), float(j)
    below = p[p < best]
    return float((best + below.max()) / 2.0) if below.size else best


def threshold_for_sensitivity(probabilities: np.ndarray, labels: np.ndarray, sensitivity: float) -> float:
    """The highest threshold whose sensitivity is at least ``sensitivity``."""
    p = np.sort(np.asarray(probabilities, dtype=np.float64).ravel()[np.asarray(labels).ravel().astype(bool)])
    # the small margin keeps a floating-point shortfall ((1 - 0.9) * 10 = 0.99999...) from dropping a step
    k = int(np.floor((1.0 - sensitivity) * len(p) + 1e-9))
    return float(p[min(k, len(p) - 1)])


def _ci(interval: tuple[float, float]) -> list[float]:
    return [round(interval[0], 4), round(interval[1], 4)]


@dataclass(frozen=True, slots=True)
class DecisionRates:
    """Accuracy, sensitivity and specificity of yes/no decisions, as counts: each rate is a binomial
    proportion (an audit :class:`Rate`), reported with its Wilson 95% interval."""

    true_positive: int
    true_negative: int
    n_positive: int
    n_negative: int

    def _rates(self) -> dict[str, Rate]:
        return {"accuracy": Rate(self.true_positive + self.true_negative, self.n_positive + self.n_negative),
                "sensitivity": Rate(self.true_positive, self.n_positive),
                "specificity": Rate(self.true_negative, self.n_negative)}

    def _value(self, name: str) -> float:
        value = self._rates()[name].value
        return float("nan") if value is None else value

    @property
    def accuracy(self) -> float:
        return self._value("accuracy")

    @property
    def sensitivity(self) -> float:
        return self._value("sensitivity")

    @property
    def specificity(self) -> float:
        return self._value("specificity")

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {}
        for name, rate in self._rates().items():
            out[name] = round(self._value(name), 4)
            out[f"{name}_ci95"] = _ci(rate.interval)
        return out


def decision_rates(predicted: np.ndarray, labels: np.ndarray) -> DecisionRates:
    """The counts behind accuracy, sensitivity and specificity of ``predicted`` (bool) against ``labels``."""
    pred = np.asarray(predicted).ravel().astype(bool)
    y = np.asarray(labels).ravel().astype(bool)
    return DecisionRates(true_positive=int((pred & y).sum()),
                         true_negative=int((~pred & ~y).sum()), n_positive=int(y.sum()), n_negative=int((~y).sum()))


@dataclass(frozen=True, slots=True)
class BinaryMetrics:
    n: int
    n_positive: int
    auroc: float
    auroc_ci95: tuple[float, float]
    rates: DecisionRates
    threshold: float
    ece: float

    @property
    def accuracy(self) -> float:
        return self.rates.accuracy

    @property
    def sensitivity(self) -> float:
        return self.rates.sensitivity

    @property
    def specificity(self) -> float:
        return self.rates.specificity

    def to_json(self) -> dict[str, object]:
        return {
            "n": self.n,
            "n_positive": self.n_positive,
            "auroc": round(self.auroc, 4),
            "auroc_ci95": _ci(self.auroc_ci95),
            **self.rates.to_json(),
            "threshold": round(self.threshold, 4),
            "ece": round(self.ece, 4),
        }


def binary_metrics(probabilities: np.ndarray, labels: np.ndarray, threshold: float, *, seed: int = 0) -> BinaryMetrics:
    p = np.asarray(probabilities, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    return BinaryMetrics(
        n=len(p),
        n_positive=int(y.sum()),
        auroc=auroc(p, y),
        auroc_ci95=bootstrap_auroc(p, y, seed=seed),
        rates=decision_rates(p >= threshold, y),
        threshold=threshold,
        ece=expected_calibration_error(p, y),
    )
