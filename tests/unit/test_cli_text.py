"""The one-line-per-study text output of `secondreader screen`."""

from __future__ import annotations

from secondreader.cli import _text_line


def test_a_finding_that_does_not_route_is_marked_so() -> None:
    data = {"study_instance_uid": "1.2.3.4.5", "status": "screened", "reason": None,
            "priority": {"score": 91, "route": "urgent", "rule": "ai-urgent"},
            "findings": [{"code": "nodule", "probability": 0.93, "positive": True, "routes": False},
                         {"code": "pneumonia", "probability": 0.97, "positive": True, "routes": True},
                         {"code": "effusion", "probability": 0.10, "positive": False}]}
    assert _text_line(data) == ("1.2.3.4.5  screened   score  91 route urgent "
                                "[nodule 0.93 + (not routing), pneumonia 0.97 +, effusion 0.10]")


def test_shadow_and_not_applicable_findings_are_marked_so() -> None:
    reason = "cxr-pneumonia is validated on children aged 1-5 years; patient age 053Y"
    data = {"study_instance_uid": "1.2.3.4.5", "status": "screened", "reason": None,
            "priority": {"score": 0, "route": "none", "rule": "no-routing-finding"},
            "findings": [{"code": "nodule", "probability": 0.93, "positive": True, "routes": False, "mode": "shadow",
                          "applicable": True, "not_applicable_reason": None},
                         {"code": "pneumonia", "probability": None, "positive": False, "routes": False, "mode": "live",
                          "applicable": False, "not_applicable_reason": reason}]}
    assert _text_line(data) == ("1.2.3.4.5  screened   score   0 route none   "
                                f"[nodule 0.93 + (shadow), pneumonia n/a] - not applicable: {reason}")
