"""Calibrated findings → the study's priority score (0–100), route and the rule that decided.

The score puts every finding on one scale anchored at its model card's operating point: 0 at
probability 0, 50 at the operating point, 100 at probability 1 (piecewise linear), and the study
takes its highest finding. So "score ≥ 50" means "some finding is positive" whatever each model's
score distribution, and a new model version moves its operating point, not the meaning of 50.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

__all__ = ["FINDING_MODES", "FindingResult", "Priority", "Route", "StudyStatus", "finding_score", "prioritise"]


class Route(str, Enum):
    URGENT = "urgent"
    REVIEW = "review"
    NONE = "none"


class StudyStatus(str, Enum):
    SCREENED = "screened"
    INELIGIBLE = "ineligible"
    FAILED = "failed"


#: A finding's mode, as the site runs its model (:class:`secondreader.model.modes.ModelMode`).
FINDING_MODES = ("live", "shadow")


@dataclass(frozen=True, slots=True)
class FindingResult:
    """A study's finding from one model.

    ``mode``: ``live`` findings route studies; ``shadow`` ones (a model that missed its held-out
    targets, or one a site runs in shadow) are reported but never route. ``applicable`` is false
    when the study lies outside the model's scope (:class:`secondreader.model.card.ModelScope`) for
    every screened image: then ``not_applicable_reason`` says why, the finding is neither positive
    nor negative, and ``probability`` is ``None`` (the network did not run).
    """

    code: str
    probability: float | None
    operating_point: float
    urgent_point: float
    model: str
    mode: str = "live"
    applicable: bool = True
    not_applicable_reason: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in FINDING_MODES:
            raise ValueError(f"mode of {self.code} must be live or shadow, not {self.mode!r}")
        if self.applicable:
            if self.probability is None or not 0.0 <= self.probability <= 1.0:
                raise ValueError(f"probability of {self.code} must be in [0, 1], not {self.probability}")
            if self.not_applicable_reason is not None:
                raise ValueError(f"an applicable finding ({self.code}) has no not-applicable reason")
        else:
            if self.probability is not None:
                raise ValueError(f"a not-applicable finding ({self.code}) has no probability")
            if not self.not_applicable_reason:
                raise ValueError(f"a not-applicable finding ({self.code}) needs its reason")
        if not 0.0 < self.operating_point < 1.0:
            raise ValueError(f"operating_point of {self.code} must be in (0, 1)")

    @property
    def positive(self) -> bool:
        """At or over the operating point (never, for a finding that does not apply)."""
        return self.probability is not None and self.probability >= self.operating_point

    @property
    def urgent(self) -> bool:
        return self.probability is not None and self.probability >= self.urgent_point

    @property
    def routes(self) -> bool:
        """Whether this finding takes part in the priority and the discordance: live and applicable."""
        return self.mode == "live" and self.applicable


@dataclass(frozen=True, slots=True)
class Priority:
    score: int
    route: Route
    rule: str

    def __post_init__(self) -> None:
        if not 0 <= self.score <= 100:
            raise ValueError(f"priority score must be in 0..100, not {self.score}")
        object.__setattr__(self, "route", Route(self.route))


def finding_score(probability: float, operating_point: float) -> float:
    """Map a probability to 0–100 with the operating point at 50 (piecewise linear)."""
    if probability <= operating_point:
        return 50.0 * probability / operating_point
    return 50.0 + 50.0 * (probability - operating_point) / (1.0 - operating_point)


def prioritise(status: StudyStatus | str, findings: Sequence[FindingResult]) -> Priority:
    """Rules, first match wins (rule ids appear in every result):

    - ``ineligible``: not a study the models are made for → score 0, route none;
    - ``screening-failed``: an eligible image could not be read → score 50, route review (a human
      should look, since the AI could not);
    - ``no-routing-finding``: no finding routes (below) → score 0, route none;
    - ``ai-urgent``: some finding at or over its urgent point → route urgent;
    - ``ai-positive``: some finding at or over its operating point → route review;
    - ``ai-negative``: otherwise → route none.

    Only findings that route take part: those of live models that apply to the study (a shadow
    model's findings, and not-applicable ones, do not). When none does (every model is shadow or
    outside its scope, or every model is off), nothing decides the route.
    """
    status = StudyStatus(status)
    if status is StudyStatus.INELIGIBLE:
        return Priority(0, Route.NONE, "ineligible")
    if status is StudyStatus.FAILED:
        return Priority(50, Route.REVIEW, "screening-failed")
    findings = [f for f in findings if f.routes]
    if not findings:
        return Priority(0, Route.NONE, "no-routing-finding")
    score = int(round(max(finding_score(f.probability or 0.0, f.operating_point) for f in findings)))
    if any(f.urgent for f in findings):
        return Priority(score, Route.URGENT, "ai-urgent")
    if any(f.positive for f in findings):
        return Priority(max(score, 50), Route.REVIEW, "ai-positive")
    return Priority(min(score, 49), Route.NONE, "ai-negative")
