from __future__ import annotations

import numpy as np
import pytest

from secondreader.training.metrics import auroc, binary_metrics, bootstrap_auroc, youden_threshold


def _brute_auroc(s: np.ndarray, y: np.ndarray) -> float:
    pos, neg = s[y == 1], s[y == 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(wins / (len(pos) * len(neg)))


def test_auroc_matches_pairwise_definition_with_ties() -> None:
    rng = np.random.default_rng(3)
    s = np.round(rng.random(300), 1)
    y = (rng.random(300) < 0.4).astype(int)
    assert auroc(s, y) == pytest.approx(_brute_auroc(s, y))


def test_bootstrap_interval_contains_the_estimate() -> None:
    rng = np.random.default_rng(4)
    y = (rng.random(400) < 0.5).astype(int)
    s = y + rng.normal(0, 1, 400)
    low, high = bootstrap_auroc(s, y, n_boot=300)
    assert low < auroc(s, y) < high and high - low < 0.15


def test_operating_point_statistics() -> None:
    p = np.array([0.1, 0.2, 0.6, 0.7, 0.8, 0.3])
    y = np.array([0, 0, 1, 1, 1, 1])
    m = binary_metrics(p, y, 0.5)
    assert (m.sensitivity, m.specificity, m.accuracy) == (0.75, 1.0, pytest.approx(5 / 6))
    assert 0.2 < youden_threshold(p, y) <= 0.3
