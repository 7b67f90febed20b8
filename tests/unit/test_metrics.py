from __future__ import annotations

import numpy as np
import pytest

from secondreader.training.common import calibrate_on_validation
from secondreader.training.config import OperatingPointConfig
from secondreader.training.metrics import (
    auroc,
    binary_metrics,
    bootstrap_auroc,
    decision_rates,
    expected_calibration_error,
    threshold_for_sensitivity,
    youden_threshold,
)


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
    # each rate is a proportion with its Wilson 95% interval (published values: 3/4 -> [0.3006,
    # 0.9544], 2/2 -> [0.3424, 1], 5/6 -> [0.4365, 0.9699]; Newcombe, Stat Med 1998, method 3)
    out = m.to_json()
    assert out["sensitivity_ci95"] == [0.3006, 0.9544]
    assert out["specificity_ci95"] == [0.3424, 1.0]
    assert out["accuracy_ci95"] == [0.4365, 0.9699]


def test_decision_rates_count_each_kind_of_decision() -> None:
    r = decision_rates(np.array([1, 1, 0, 0, 1]), np.array([1, 0, 0, 1, 1]))
    assert (r.true_positive, r.true_negative, r.n_positive, r.n_negative) == (2, 1, 3, 2)
    assert (r.accuracy, r.sensitivity, r.specificity) == (0.6, pytest.approx(2 / 3), 0.5)
    # no negatives: the specificity is undefined and its interval is the whole range
    none = decision_rates(np.array([1, 0]), np.array([1, 1])).to_json()
    assert none["specificity_ci95"] == [0.0, 1.0] and none["sensitivity"] == 0.5


def test_expected_calibration_error_against_hand_computed_bins() -> None:
    # bin [0.1, 0.2): predicted 0.1, observed 0/2; bin [0.9, 1.0]: predicted 0.9, observed 1/2
    p = np.array([0.1, 0.9, 0.9, 0.1])
    y = np.array([0, 1, 0, 0])
    assert expected_calibration_error(p, y) == pytest.approx(0.5 * 0.1 + 0.5 * 0.4)
    assert expected_calibration_error(np.array([0.0, 1.0]), np.array([0, 1])) == 0.0  # perfectly calibrated


def test_threshold_for_sensitivity_is_the_highest_that_keeps_it() -> None:
    p = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 0.05, 0.95])
    y = np.array([1] * 10 + [0, 0])
    assert threshold_for_sensitivity(p, y, 1.0) == 0.1
    assert threshold_for_sensitivity(p, y, 0.9) == 0.2  # 9 of 10 positives at >= 0.2
    assert threshold_for_sensitivity(p, y, 0.95) == 0.1  # 0.2 would give 0.9 < 0.95
    assert threshold_for_sensitivity(p, y, 0.5) == 0.6


@pytest.mark.parametrize("method", ["platt", "temperature", "isotonic"])
def test_operating_and_urgent_points_come_from_validation(method: str) -> None:
    rng = np.random.default_rng(7)
    y = np.array([0] * 200 + [1] * 100)
    logits = np.where(y == 1, 2.0, -2.0) + rng.normal(0, 1.5, len(y))
    cal, p, op, urgent = calibrate_on_validation(logits, y, OperatingPointConfig(method="sensitivity",
                                                                                 sensitivity=0.95,
                                                                                 urgent_specificity=0.99), method)
    assert cal.method == method and np.all((p > 0) & (p < 1))
    positives = p[y == 1]
    assert (positives >= op).mean() >= 0.95 > (positives > op).mean()  # the highest threshold that keeps 95%
    assert (p[y == 0] < urgent).mean() >= 0.99 and urgent >= op


@pytest.mark.parametrize("labels", [[1, 1, 1, 1], [0, 0, 0, 0]])
def test_a_validation_split_of_one_class_is_refused_with_what_it_holds(labels: list[int]) -> None:
    y = np.asarray(labels)
    with pytest.raises(ValueError, match=f"holds 4 studies, {int(y.sum())} of them positive"):
        calibrate_on_validation(np.linspace(-1, 1, 4), y, OperatingPointConfig())


def test_a_bundle_records_its_operating_point_rule_so_evaluate_can_apply_it_again() -> None:
    for rule in (OperatingPointConfig(), OperatingPointConfig(method="sensitivity", sensitivity=0.97)):
        assert OperatingPointConfig.from_description(rule.describe()) == rule
    assert OperatingPointConfig(method="sensitivity").describe() == "sensitivity 0.95"
    assert OperatingPointConfig.from_description("sensitivity").sensitivity == 0.95  # older bundles
    with pytest.raises(ValueError, match="unknown operating point rule 'f1'"):
        OperatingPointConfig.from_description("f1")


def test_the_urgent_point_stays_above_the_operating_point_when_validation_separates_the_classes() -> None:
    """Every validation negative below the operating point: the specificity rule alone puts the urgent
    point on the operating point (every positive urgent); urgent_sensitivity keeps it to the most
    confident share of the positives."""
    rng = np.random.default_rng(3)
    y = np.array([0] * 100 + [1] * 200)
    logits = np.where(y == 1, rng.uniform(2, 8, len(y)), rng.uniform(-6, 0, len(y)))
    rule = OperatingPointConfig(method="sensitivity", sensitivity=0.95)
    _cal, p, op, urgent = calibrate_on_validation(logits, y, rule)
    assert urgent == op and (p[y == 0] < op).all()
    rule = OperatingPointConfig(method="sensitivity", sensitivity=0.95, urgent_sensitivity=0.5)
    _cal, p, op2, urgent = calibrate_on_validation(logits, y, rule)
    assert op2 == op < urgent
    assert (p[y == 1] >= urgent).mean() == pytest.approx(0.5, abs=0.01)
    assert rule.describe_urgent() == ("specificity 0.99, and no lower than the score that keeps 50% of the "
                                      "positives on validation")
