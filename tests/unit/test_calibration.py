"""Calibration methods fitted on validation: temperature scaling and isotonic regression beside
Platt's, how a bundle stores them, and what is refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from secondreader.model.card import _finding
from secondreader.scoring.calibration import Calibrator, calibrated_probability, fit_calibrator
from secondreader.training.metrics import expected_calibration_error


def _sample(n: int = 20000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, n)
    return logits, rng.random(n) < calibrated_probability(logits, 0.5, 0.0)


def test_temperature_scaling_recovers_a_known_temperature_and_keeps_no_intercept() -> None:
    logits, labels = _sample()
    cal = fit_calibrator("temperature", logits, labels)
    assert cal.method == "temperature" and cal.b == 0.0
    assert 1 / cal.a == pytest.approx(2.0, abs=0.1)
    assert cal.to_json()["temperature"] == pytest.approx(2.0, abs=0.1)


def test_isotonic_fits_a_monotone_map_that_is_calibrated_where_the_sigmoid_is_not() -> None:
    """Truth that no sigmoid of the logit describes (a step with a floor): isotonic follows it."""
    rng = np.random.default_rng(1)
    logits = rng.uniform(-4, 4, 20000)
    truth = np.where(logits > 1.0, 0.9, 0.2)
    labels = rng.random(len(logits)) < truth
    iso = fit_calibrator("isotonic", logits, labels)
    platt = fit_calibrator("platt", logits, labels)
    assert np.all(np.diff(iso.knots) > 0) and np.all(np.diff(iso.values) > 0)
    assert iso.probability(-3.0) == pytest.approx(0.2, abs=0.03)
    assert iso.probability(3.0) == pytest.approx(0.9, abs=0.03)
    held_logits = rng.uniform(-4, 4, 20000)
    held = rng.random(len(held_logits)) < np.where(held_logits > 1.0, 0.9, 0.2)
    assert (expected_calibration_error(iso.probability(held_logits), held)
            < expected_calibration_error(platt.probability(held_logits), held) - 0.02)
    # flat beyond its ends, monotone between: a higher logit never gets a lower probability
    grid = np.linspace(-10, 10, 2001)
    assert np.all(np.diff(iso.probability(grid)) >= 0)
    assert iso.probability(-10.0) == iso.values[0] and iso.probability(10.0) == iso.values[-1]
    # no 0 or 1 from a finite validation set
    assert 0 < iso.values[0] and iso.values[-1] < 1


@pytest.mark.parametrize("method", ["platt", "temperature", "isotonic"])
def test_a_bundle_stores_the_calibration_and_serving_reads_it_back(method: str) -> None:
    logits, labels = _sample(4000, seed=2)
    cal = fit_calibrator(method, logits, labels)
    stored = json.loads(json.dumps({**cal.to_json(), "fitted_on": "validation"}))
    assert stored["method"] == method
    spec = _finding("nodule", {"channel": 0, "operating_point": 0.5, "calibration": stored})
    again = spec.calibration
    x = np.linspace(-8, 8, 101)
    assert np.allclose(again.probability(x), cal.probability(x), atol=1e-5)
    # the inverse used for a dense model's map threshold
    for p in (0.3, 0.5, 0.8):
        assert float(again.probability(again.logit_for(p))) == pytest.approx(p, abs=1e-4)


def test_bad_calibrations_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="unknown calibration method 'beta'"):
        _finding("nodule", {"channel": 0, "operating_point": 0.5, "calibration": {"method": "beta"}})
    with pytest.raises(ValueError, match="knots and values increasing"):
        Calibrator("isotonic", knots=(0.0, 1.0), values=(0.6, 0.4))
    with pytest.raises(ValueError, match="slope must be positive"):
        _finding("nodule", {"channel": 0, "operating_point": 0.5, "calibration": {"a": -1.0, "b": 0.0}})
    with pytest.raises(ValueError, match="no rise"):
        fit_calibrator("isotonic", np.array([0.0, 1.0, 2.0, 3.0]), np.array([1, 1, 0, 0]))
    # an older bundle without a method is Platt's
    assert _finding("x", {"channel": 0, "operating_point": 0.5,
                          "calibration": {"a": 2.0, "b": 1.0}}).calibration == Calibrator("platt", 2.0, 1.0)


def test_isotonic_treats_equal_logits_as_one_point_whatever_their_order() -> None:
    logits = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2], dtype=float)
    labels = np.array([1, 0, 0, 0, 0, 1, 1, 0, 1, 1])
    rng = np.random.default_rng(0)
    fits = {fit_calibrator("isotonic", logits[o], labels[o]) for o in (rng.permutation(10) for _ in range(20))}
    (fit,) = fits  # the same calibrator from every order
    assert fit.knots == (0.0, 1.0, 2.0)
    # Platt's smoothed targets (5 positives, 5 negatives): 6/7 for a positive, 1/7 for a negative;
    # logit 0 holds one positive and three negatives
    assert fit.values == pytest.approx(((6 / 7 + 3 / 7) / 4, (2 * 6 / 7 + 2 / 7) / 4, 6 / 7))
