"""A reviewer overrules the report labeler ("the labeler was wrong: the report says ..."), on the
worklist over SQLite and PostgreSQL: the correction wins over the labeler for that first read, the
study is compared and routed again, a re-screen keeps it, a new first read starts afresh, and the
audit log records it without the report's words."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from secondreader.errors import InvalidInputError
from secondreader.reports.firstread import ReportIn
from secondreader.store import Store
from secondreader.worklist import FIRST_READ_VERDICT, Worklist

from ..conftest import CANARY_NAME

#: A real dictation slip from the OpenI dev reports (CXR2401): "clear [of] airspace disease", which
#: the labeler reads as airspace disease present.
MISREAD = f"Patient {CANARY_NAME}. Lungs are expanded and clear airspace disease. No pneumothorax."


def _uid() -> str:
    return "1.2.826.0.1.3680043.8.498." + str(uuid.uuid4().int)[:20]


def _result(uid: str) -> dict[str, Any]:
    sop = uid + ".1"
    return {
        "study_instance_uid": uid, "status": "screened", "reason": None,
        "instances": [{"source": "a.dcm", "sop_instance_uid": sop, "status": "screened", "reason": None}],
        "priority": {"score": 90, "route": "review", "rule": "ai-positive"},
        "findings": [{"code": "pneumonia", "probability": 0.9, "positive": True, "operating_point": 0.5,
                      "model": "cxr-pneumonia@1.0.0"},
                     {"code": "nodule", "probability": 0.1, "positive": False, "operating_point": 0.5,
                      "model": "cxr-nodule@1.0.0"}],
        "regions": [{"id": "pneumonia-1", "finding": "pneumonia", "score": 0.9, "sop_instance_uid": sop, "frame": 1,
                     "bbox": [10, 10, 20, 30], "centroid": [15.0, 20.0], "area_mm2": 12.0, "area_px": 200}],
        "first_read": {"status": "none", "labels": {}, "discordant": []},
        "artifacts": {"heatmaps": [], "dicom": [], "status": "none"},
        "timing_ms": {"load": 1.0, "preprocess": 1.0, "inference": 1.0, "postprocess": 1.0, "encode": 0.0,
                      "total": 4.0},
    }


def test_a_correction_overrules_the_labeler_and_reroutes(store: Store) -> None:
    worklist = Worklist(store)
    uid = _uid()
    worklist.record_result(_result(uid))
    (study,) = worklist.add_report(ReportIn(uid, None, MISREAD), actor="t").studies
    misread = study["first_read"]
    assert misread["labels"]["pneumonia"] == "present" and misread["discordant"] == []  # the miss is hidden
    assert study["priority"]["rule"] == "concordant" and worklist.study(uid)["state"] == "screened"  # type: ignore[index]
    assert misread["sources"]["pneumonia"] == "labeler" and misread["corrections"] == {}

    view = worklist.correct_first_read(uid, "pneumonia", "negated", "Dr A", actor="key:x")
    assert view is not None
    first_read = view["first_read"]
    assert first_read["labels"]["pneumonia"] == "negated" and first_read["discordant"] == ["pneumonia"]
    assert first_read["labeler"]["pneumonia"] == "present"  # what the labeler read stays visible
    assert first_read["sources"] == {"pneumonia": "reviewer", "nodule": "labeler"}
    assert first_read["corrections"]["pneumonia"]["label"] == "negated"
    assert first_read["corrections"]["pneumonia"]["labeler_label"] == "present"
    assert first_read["corrections"]["pneumonia"]["reviewer"] == "Dr A"
    assert first_read["evidence"]["pneumonia"] == "Lungs are expanded and clear airspace disease."
    assert view["priority"]["rule"] == "discordant" and view["state"] == "awaiting_review"

    # the audit log says who corrected what, never the report's words
    (event,) = [e for e in worklist.audit_events() if e["action"] == "first_read_review"]
    assert event["actor"] == "Dr A"
    assert event["detail"] == {"finding": "pneumonia", "verdict": FIRST_READ_VERDICT, "labeler_label": "present",
                               "label": "negated", "via": "key:x"}
    assert "airspace" not in str(worklist.audit_events()) and CANARY_NAME not in str(worklist.audit_events())

    # a re-screen keeps the correction
    rescreened = worklist.record_result(_result(uid))
    assert rescreened["first_read"]["labels"]["pneumonia"] == "negated"
    assert rescreened["priority"]["rule"] == "discordant"

    # the reviewer changes their mind: the latest correction wins; one that agrees with the labeler undoes it
    view = worklist.correct_first_read(uid, "pneumonia", "present", "Dr B", actor="key:x")
    assert view is not None and view["first_read"]["corrections"] == {}
    assert view["first_read"]["sources"]["pneumonia"] == "labeler" and view["priority"]["rule"] == "concordant"
    assert [c["reviewer"] for c in view["first_read_corrections"]] == ["Dr A", "Dr B"]  # the history stays

    # a new first read (an addendum) is read afresh: corrections were about the old one
    worklist.correct_first_read(uid, "pneumonia", "negated", "Dr A", actor="key:x")
    (study,) = worklist.add_report(ReportIn(uid, None, "Addendum: right lower lobe pneumonia."), actor="t").studies
    assert study["first_read"]["corrections"] == {} and study["first_read"]["labels"]["pneumonia"] == "present"


def test_bad_corrections_are_refused_with_the_reason(store: Store) -> None:
    worklist = Worklist(store)
    uid = _uid()
    worklist.record_result(_result(uid))
    with pytest.raises(InvalidInputError, match="no first read"):
        worklist.correct_first_read(uid, "pneumonia", "negated", "Dr A", actor="k")
    worklist.add_report(ReportIn(uid, None, MISREAD), actor="t")
    with pytest.raises(InvalidInputError, match="label"):
        worklist.correct_first_read(uid, "pneumonia", "absent-ish", "Dr A", actor="k")
    with pytest.raises(InvalidInputError, match="finding must be one of"):
        worklist.correct_first_read(uid, "fracture", "negated", "Dr A", actor="k")
    with pytest.raises(InvalidInputError, match="reviewer"):
        worklist.correct_first_read(uid, "pneumonia", "negated", " ", actor="k")
    assert worklist.correct_first_read(_uid(), "pneumonia", "negated", "Dr A", actor="k") is None
    assert worklist.study(uid)["first_read"]["corrections"] == {}  # type: ignore[index]
