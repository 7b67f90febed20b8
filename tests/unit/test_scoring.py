from __future__ import annotations

import numpy as np
import pytest

from secondreader.scoring.calibration import calibrated_probability, fit_platt
from secondreader.scoring.priority import FindingResult, Priority, Route, finding_score, prioritise


def _finding(p: float, op: float = 0.4, urgent: float = 0.9) -> FindingResult:
    return FindingResult("pneumonia", p, op, urgent, "cxr-pneumonia@1.0.0")


def test_score_is_50_at_the_operating_point_and_monotonic() -> None:
    assert finding_score(0.4, 0.4) == 50
    assert finding_score(0.0, 0.4) == 0 and finding_score(1.0, 0.4) == 100
    grid = np.linspace(0, 1, 101)
    scores = [finding_score(p, 0.3) for p in grid]
    assert all(b >= a for a, b in zip(scores, scores[1:], strict=False))


@pytest.mark.parametrize(
    ("p", "route", "rule"),
    [(0.1, Route.NONE, "ai-negative"), (0.5, Route.REVIEW, "ai-positive"), (0.95, Route.URGENT, "ai-urgent")],
)
def test_routes(p: float, route: Route, rule: str) -> None:
    priority = prioritise("screened", [_finding(p)])
    assert (priority.route, priority.rule) == (route, rule)
    assert 0 <= priority.score <= 100


def test_ineligible_and_failed() -> None:
    assert prioritise("ineligible", []) == Priority(0, Route.NONE, "ineligible")
    assert prioritise("failed", []).route is Route.REVIEW


def test_platt_recovers_a_known_calibration() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, 20000)
    labels = rng.random(20000) < calibrated_probability(logits, 0.5, -1.0)
    a, b = fit_platt(logits, labels)
    assert a == pytest.approx(0.5, abs=0.03) and b == pytest.approx(-1.0, abs=0.06)


def test_probability_out_of_range_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"probability of pneumonia must be in \[0, 1\]"):
        _finding(1.5)


def test_device_uid_is_derived_from_name_version_and_weights() -> None:
    from secondreader.training.common import device_uid_for

    uid = device_uid_for("cxr-pneumonia", "1.0.0", "ab" * 32)
    assert uid == device_uid_for("cxr-pneumonia", "1.0.0", "ab" * 32)
    assert uid.startswith("2.25.") and len(uid) <= 64
    assert uid != device_uid_for("cxr-pneumonia", "1.0.1", "ab" * 32)
    assert uid != device_uid_for("cxr-pneumonia", "1.0.0", "cd" * 32)


def test_findings_of_a_model_that_missed_its_targets_do_not_route() -> None:
    validated = FindingResult("pneumonia", 0.2, 0.5, 0.9, "cxr-pneumonia@1.0.0")
    unvalidated = FindingResult("nodule", 0.99, 0.5, 0.9, "cxr-nodule@1.0.0", mode="shadow")  # its default mode
    assert prioritise("screened", [validated, unvalidated]) == prioritise("screened", [validated])
    # nothing that routes: no route decided by the AI (was "ai-negative" before modes)
    assert prioritise("screened", [unvalidated]) == Priority(0, Route.NONE, "no-routing-finding")
    assert prioritise("screened", [FindingResult("nodule", 0.99, 0.5, 0.9, "m@1")]).route is Route.URGENT


def test_the_routing_gate_follows_the_held_out_targets() -> None:
    from secondreader.training.dense.bundle import routing_gate

    missed = routing_gate({"test": {"study": {"auroc": 0.6}, "froc": {"sensitivity": {"1.0": 0.2}}}})
    assert missed["enabled"] is False and "AUROC 0.600" in missed["reason"]
    met = routing_gate({"test": {"study": {"auroc": 0.96}, "froc": {"sensitivity": {"1.0": 0.91}}}})
    assert met["enabled"] is True
    assert routing_gate({})["enabled"] is False  # no held-out figures, no routing
