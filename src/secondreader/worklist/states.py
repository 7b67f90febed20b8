"""Worklist states and the transitions allowed between them.

::

    new ──► screened ◄──► awaiting_review ──► reviewed
     │          ▲                ▲
     └──► ineligible / failed ───┘   (a later upload or re-screen can still screen the study)

A report that agrees with the AI moves ``awaiting_review`` back to ``screened``; one that
disagrees moves ``screened`` to ``awaiting_review``. ``reviewed`` is final: a new result or report
for a reviewed study updates it but does not put it back on anyone's list.
"""

from __future__ import annotations

from enum import Enum

__all__ = ["ALLOWED", "InvalidTransition", "State", "check_transition"]


class State(str, Enum):
    NEW = "new"
    SCREENED = "screened"
    AWAITING_REVIEW = "awaiting_review"
    REVIEWED = "reviewed"
    INELIGIBLE = "ineligible"
    FAILED = "failed"


_S = State
ALLOWED: dict[State, frozenset[State]] = {
    _S.NEW: frozenset({_S.SCREENED, _S.AWAITING_REVIEW, _S.INELIGIBLE, _S.FAILED}),
    _S.SCREENED: frozenset({_S.SCREENED, _S.AWAITING_REVIEW, _S.INELIGIBLE, _S.FAILED}),
    _S.AWAITING_REVIEW: frozenset({_S.AWAITING_REVIEW, _S.SCREENED, _S.REVIEWED, _S.INELIGIBLE, _S.FAILED}),
    _S.REVIEWED: frozenset({_S.REVIEWED}),
    _S.INELIGIBLE: frozenset({_S.INELIGIBLE, _S.SCREENED, _S.AWAITING_REVIEW, _S.FAILED}),
    _S.FAILED: frozenset({_S.FAILED, _S.SCREENED, _S.AWAITING_REVIEW, _S.INELIGIBLE}),
}


class InvalidTransition(ValueError):
    """A state change the worklist does not allow."""


def check_transition(current: State | str, target: State | str) -> State:
    """``target`` as a State when the move from ``current`` is allowed; raises InvalidTransition."""
    current, target = State(current), State(target)
    if target not in ALLOWED[current]:
        raise InvalidTransition(f"a study cannot go from {current.value} to {target.value}")
    return target
