"""Contract 2's typed models and JSON Schema (:mod:`secondreader.schema`): the committed schema is
what the models generate, the models describe ``StudyResult.to_json()`` exactly (byte for byte
back), they reject a broken result, and the HTTP layer answers a broken one with a 500 whose log
names where it breaks, never a value from it."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any, get_args

import jsonschema
import pytest
from starlette.testclient import TestClient

from secondreader import schema
from secondreader.explain.regions import Region
from secondreader.model.modes import ModelMode
from secondreader.reports.firstread import ReportIn, interpret
from secondreader.reports.labeler import Label
from secondreader.results import ARTIFACT_STATUSES, InstanceResult, InstanceStatus, RegionResult, StudyResult
from secondreader.scoring.priority import FINDING_MODES, FindingResult, Priority, Route, StudyStatus
from secondreader.service.http import build_app
from secondreader.worklist import VERDICTS
from secondreader.worklist.states import State

from ..contract import assert_study_result, validator

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_FILE = ROOT / "src" / "secondreader" / "result.schema.json"
CANARY = "CANARY^PHI-4711"
UID = "1.2.826.0.1.3680043.8.498.1"


def test_the_committed_schema_is_what_the_models_generate() -> None:
    assert SCHEMA_FILE.read_text() == schema.schema_text(), (
        "src/secondreader/result.schema.json is out of date: "
        "python -m secondreader.schema > src/secondreader/result.schema.json, then (cd viewer && npm run types)")
    jsonschema.Draft202012Validator.check_schema(json.loads(SCHEMA_FILE.read_text()))


@pytest.mark.parametrize(("literal", "values"), [
    (schema.StudyStatus, [s.value for s in StudyStatus]),
    (schema.InstanceStatus, [s.value for s in InstanceStatus]),
    (schema.Route, [r.value for r in Route]),
    (schema.FindingMode, list(FINDING_MODES)),
    (schema.ModelMode, [m.value for m in ModelMode]),
    (schema.ArtifactStatus, list(ARTIFACT_STATUSES)),
    (schema.Label, [label.value for label in Label]),
    (schema.State, [s.value for s in State]),
    (schema.Verdict, list(VERDICTS)),
])
def test_the_schemas_vocabularies_are_the_codes(literal: Any, values: list[str]) -> None:
    assert sorted(get_args(literal)) == sorted(values)


def _screened() -> StudyResult:
    sop = UID + ".1"
    region = Region(finding="nodule", frame=1, bbox=(10, 20, 30, 50), centroid=(19.5, 33.0), area_px=512,
                    area_mm2=40.5, peak=0.9)
    return StudyResult(
        study_instance_uid=UID, status=StudyStatus.SCREENED, reason=None,
        instances=[InstanceResult("a.dcm", sop, InstanceStatus.SCREENED,
                                  not_applicable={"pneumonia": "the patient is over 5 years old"}),
                   InstanceResult("b.dcm", UID + ".2", InstanceStatus.INELIGIBLE, "ViewPosition is LL: not frontal",
                                  rule_ids=("frontal-view",)),
                   InstanceResult("c.dcm", sop, InstanceStatus.DUPLICATE, "same SOP Instance UID as a.dcm")],
        priority=Priority(83, Route.URGENT, "ai-urgent"),
        findings=[FindingResult("nodule", 0.91234567, 0.5, 0.8, "cxr-nodule@2.0.0"),
                  FindingResult("pneumonia", None, 0.5, 0.9, "cxr-pneumonia@1.0.0", applicable=False,
                                not_applicable_reason="the patient is over 5 years old"),
                  FindingResult("effusion", 0.2, 0.4, 0.9, "cxr-effusion@0.1.0", mode="shadow")],
        regions=[RegionResult("nodule-1", region, 0.91234567, sop)],
        models=[{"name": "cxr-nodule", "version": "2.0.0", "device_uid": "2.25.1", "mode": "live"},
                {"name": "cxr-effusion", "version": "0.1.0", "device_uid": "2.25.2", "mode": "shadow"}],
        heatmaps=[f"{UID}/{sop}/nodule.png"], dicom=[f"{UID}/{sop}/sc.dcm"], artifacts_status="written",
        timing_ms={"load": 1.234, "inference": 10.0, "total": 12.5}, modality="DX")


def _unreadable() -> StudyResult:
    return StudyResult(study_instance_uid=None, status=StudyStatus.FAILED, reason="not a DICOM file: it is a text file",
                       instances=[InstanceResult("notes.txt", None, InstanceStatus.FAILED,
                                                 "not a DICOM file: it is a text file")],
                       priority=Priority(50, Route.REVIEW, "screening-failed"), source="notes.txt")


@pytest.mark.parametrize("result", [_screened(), _unreadable()], ids=["screened", "unreadable"])
def test_the_models_describe_to_json_exactly(result: StudyResult) -> None:
    data = json.loads(json.dumps(result.to_json()))
    typed = schema.StudyResult.model_validate(data)
    assert json.dumps(typed.model_dump(mode="json")) == json.dumps(data)  # same keys, order and values
    assert schema.served(schema.StudyResult, data) == data
    jsonschema.validate(data, json.loads(SCHEMA_FILE.read_text()))
    assert_study_result(data)


def test_a_kept_result_with_its_first_read_and_view() -> None:
    data = _screened().to_json()
    report = ReportIn(UID, None, "Small nodule in the right upper lobe. No effusion.", source="hl7")
    data["first_read"] = interpret(report, ["nodule", "pneumonia", "effusion"], {"nodule"},
                                   received_at="2026-01-01T00:00:00+00:00").to_json()
    data["ai_priority"] = dict(data["priority"])
    data["first_read_corrections"] = [{"finding": "effusion", "label": "present", "labeler_label": "negated",
                                       "reviewer": "dr b", "at": "2026-01-02T00:00:00+00:00", "first_read_id": 3}]
    view = {**data, "state": "awaiting_review", "waiting_seconds": 12,
            "reviews": [{"region_id": "nodule-1", "finding": "nodule", "verdict": "confirmed_miss",
                         "reviewer": "dr a", "at": "2026-01-02T00:00:00+00:00"}]}
    assert schema.served(schema.StoredResult, data) == data
    assert schema.served(schema.StudyView, view) == view
    job = {"job_id": "0" * 32, "status": "done", "studies": [view, _unreadable().to_json()]}
    assert schema.served(schema.JobView, job) == job
    assert_study_result(view)


def test_a_result_stored_before_modes_is_served_as_live() -> None:
    data = _screened().to_json()
    for finding in data["findings"][:1]:
        for key in ("routes", "mode", "applicable", "not_applicable_reason"):
            del finding[key]
    served = schema.served(schema.StudyResult, data)
    assert served["findings"][0] == {**data["findings"][0], "routes": True, "mode": "live", "applicable": True,
                                          "not_applicable_reason": None}


def _broken(change: str) -> dict[str, Any]:
    data = _screened().to_json()
    if change == "unknown status":
        data["status"] = "maybe"
    elif change == "score over 100":
        data["priority"]["score"] = 101
    elif change == "score as text":
        data["priority"]["score"] = "83"
    elif change == "no instances":
        del data["instances"]
    elif change == "a key the contract lacks":
        data["patient_name"] = CANARY
    elif change == "a path as source":
        data["instances"][0]["source"] = f"/home/{CANARY}/a.dcm"
    elif change == "probability over 1":
        data["findings"][0]["probability"] = 1.5
    elif change == "a box of three":
        data["regions"][0]["bbox"] = [1, 2, 3]
    elif change == "positive as a number":
        data["findings"][0]["positive"] = 1
    elif change == "unknown route":
        data["priority"]["route"] = CANARY
    elif change == "a label outside the vocabulary":
        data["first_read"]["labels"] = {CANARY: CANARY}
    return data


BROKEN = ["unknown status", "score over 100", "score as text", "no instances", "a key the contract lacks",
          "a path as source", "probability over 1", "a box of three", "positive as a number", "unknown route",
          "a label outside the vocabulary"]


@pytest.mark.parametrize("change", BROKEN)
def test_the_model_and_the_schema_reject_a_broken_result(change: str, caplog: pytest.LogCaptureFixture) -> None:
    data = _broken(change)
    with pytest.raises(jsonschema.ValidationError):
        validator("StudyResult").validate(data)
    with caplog.at_level(logging.ERROR, logger="secondreader.schema"), \
            pytest.raises(schema.ResultContractError) as raised:
        schema.served(schema.StudyResult, data)
    assert "breaks contract 2" in caplog.text
    for text in (caplog.text, str(raised.value), repr(raised.value)):
        assert "CANARY" not in text
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


def test_the_http_api_answers_a_broken_result_with_a_500_and_no_patient_data(
        caplog: pytest.LogCaptureFixture) -> None:
    broken = {**_broken("a key the contract lacks"), "ai_priority": {"score": 83, "route": "urgent", "rule": "x"},
              "state": "awaiting_review", "waiting_seconds": 1, "reviews": []}
    good = {**_screened().to_json(), "ai_priority": {"score": 83, "route": "urgent", "rule": "x"},
            "state": "awaiting_review", "waiting_seconds": 1, "reviews": []}
    studies = {UID: broken, UID + "9": good}
    worklist = SimpleNamespace(study=lambda uid, actor=None: studies.get(uid))
    app = build_app(lambda: SimpleNamespace(worklist=worklist), max_upload_bytes=lambda: 1024)  # type: ignore[arg-type, return-value]
    with caplog.at_level(logging.ERROR), TestClient(app, raise_server_exceptions=False) as client:
        answer = client.get(f"/studies/{UID}")
        fine = client.get(f"/studies/{UID}9")
    assert answer.status_code == 500 and answer.json()["error"] == "internal error"
    assert "CANARY" not in answer.text and "CANARY" not in caplog.text
    assert "StudyView breaks contract 2" in caplog.text and "extra_forbidden" in caplog.text
    assert "patient_name" not in caplog.text  # a key the contract lacks may be anyone's: masked
    assert fine.status_code == 200 and fine.json() == good
