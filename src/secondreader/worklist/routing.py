"""Routing: the AI's findings and the first read → route (urgent / review / none) and the rule id.

Rules live in a YAML file (``SECONDREADER_ROUTING_RULES``; the packaged ``routing.yaml`` is the
default). They are tried in order and the first whose every condition holds decides. Conditions:

- ``status``: the study's status (screened / ineligible / failed);
- ``report``: ``received`` or ``none`` (has a first read arrived?);
- ``discordant``: true when the AI calls positive a finding the report negates or does not mention;
- ``ai_route``: the AI-only route (urgent when a finding passed its model's urgent point, review
  when one passed its operating point, else none);
- ``score_at_least``: the AI's priority score (0–100, 50 = some finding at its operating point);
- ``ai_rule``: the rule that decided the AI-only priority (``no-routing-finding``: no finding of a
  live model applies to the study, so the AI has nothing to route it by).

``route`` is urgent, review or none. A ``max_wait`` rule then escalates any study that has waited
for a second review longer than its limit (reprioritising alone lengthens the worst waits): its
route becomes ``escalate_to`` and its score at least ``min_score``, under the max-wait rule's id.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..scoring.priority import Priority, Route

__all__ = ["RoutingRules", "Situation", "load_rules"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Conditions(_Strict):
    status: Literal["screened", "ineligible", "failed"] | None = None
    report: Literal["received", "none"] | None = None
    discordant: bool | None = None
    ai_route: Literal["urgent", "review", "none"] | None = None
    score_at_least: int | None = Field(default=None, ge=0, le=100)
    ai_rule: str | None = Field(default=None, min_length=1, max_length=64)


class Rule(_Strict):
    id: str = Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9-]*$")
    when: Conditions = Conditions()
    route: Literal["urgent", "review", "none"]


class MaxWait(_Strict):
    id: str = Field(default="max-wait", min_length=1, max_length=64)
    minutes: float = Field(gt=0)
    escalate_to: Literal["urgent", "review"] = "urgent"
    min_score: int = Field(default=90, ge=0, le=100)


@dataclass(frozen=True, slots=True)
class Situation:
    """What routing looks at for one study."""

    status: str
    ai: Priority
    report: bool
    discordant: bool


class RoutingRules(_Strict):
    version: Literal[1] = 1
    rules: list[Rule] = Field(min_length=1)
    max_wait: MaxWait | None = None

    def model_post_init(self, _context: object) -> None:
        ids = [r.id for r in self.rules]
        if len(ids) != len(set(ids)):
            raise ValueError("routing rule ids must be unique")
        last = self.rules[-1].when
        if last != Conditions() and not any(r.when == Conditions() for r in self.rules):
            raise ValueError("the last routing rule must have no conditions (a catch-all), so every study is routed")

    def route(self, situation: Situation) -> Priority:
        """The first matching rule's route, with the AI's score."""
        s = situation
        for rule in self.rules:
            w = rule.when
            if w.status is not None and w.status != s.status:
                continue
            if w.report is not None and (w.report == "received") != s.report:
                continue
            if w.discordant is not None and w.discordant != s.discordant:
                continue
            if w.ai_route is not None and w.ai_route != s.ai.route.value:
                continue
            if w.score_at_least is not None and s.ai.score < w.score_at_least:
                continue
            if w.ai_rule is not None and w.ai_rule != s.ai.rule:
                continue
            return Priority(s.ai.score, Route(rule.route), rule.id)
        raise AssertionError("unreachable: the rules end with a catch-all")  # pragma: no cover

    def escalate(self, priority: Priority, waited_seconds: float) -> Priority:
        """``priority`` escalated by the max-wait rule when a study awaiting review waited too long."""
        mw = self.max_wait
        if mw is None or priority.route is Route.NONE or waited_seconds < mw.minutes * 60.0:
            return priority
        route = Route.URGENT if Route.URGENT in (priority.route, Route(mw.escalate_to)) else Route(mw.escalate_to)
        return Priority(max(priority.score, mw.min_score), route, mw.id)


def load_rules(path: Path | None = None) -> RoutingRules:
    """The rules in ``path``, or the packaged default; raises ValueError naming what is wrong."""
    try:
        text = path.read_text() if path else resources.files(__package__).joinpath("routing.yaml").read_text()
    except OSError as exc:
        raise ValueError(f"routing rules file cannot be read ({exc.strerror or 'I/O error'})") from None
    try:
        return RoutingRules.model_validate(yaml.safe_load(text))
    except yaml.YAMLError:
        raise ValueError("routing rules file is not valid YAML") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"routing rules are invalid: {problems}") from None
