"""Contract 3's worklist routes in-process, behind the API-key middleware: first reads as JSON, FHIR
and HL7 v2, before and after the images; the worklist; verdicts; the source instance for the
viewer; the training-manifest export; and no patient data in answers to bad input or in the logs."""

from __future__ import annotations

import base64
import csv
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from secondreader.service.core import ScreeningService

from ..conftest import CANARY_NAME
from ..conftest import testdata_file as _testdata_file
from ..factories import make_cxr_dataset, to_bytes, with_patient_age
from .conftest import AUTH, service_client

pytestmark = [pytest.mark.weights, pytest.mark.slow]

@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory,
           pneumonia_predictor) -> Iterator[tuple[TestClient, ScreeningService]]:  # type: ignore[no-untyped-def]
    with service_client(tmp_path_factory.mktemp("home"), [pneumonia_predictor]) as pair:
        yield pair


@pytest.fixture(scope="module")
def service(served: tuple[TestClient, ScreeningService]) -> ScreeningService:
    return served[1]


@pytest.fixture(scope="module")
def client(served: tuple[TestClient, ScreeningService]) -> TestClient:
    return served[0]


@pytest.fixture(scope="module")
def rg1(client: TestClient) -> dict[str, Any]:
    """A real chest CR (pydicom-data RG1) given a child's age, inside cxr-pneumonia's scope (children
    aged 1-5), screened: the model calls it positive, with regions."""
    data = with_patient_age(_testdata_file("RG1_UNCR.dcm"), "004Y")
    response = client.post("/screen?wait=120", content=data, headers={**AUTH, "Content-Type": "application/dicom"})
    assert response.status_code == 200, response.text
    (study,) = response.json()["studies"]
    assert study["status"] == "screened" and study["regions"], "RG1 is expected to be flagged with regions"
    return {"study": study, "bytes": data}


def test_new_routes_need_a_key(client: TestClient) -> None:
    for method, path in [("post", "/reports"), ("get", "/worklist"), ("post", "/studies/1.2/reviews"),
                         ("get", "/studies/1.2/instances/1.3/dicom"), ("get", "/reviews/manifest.csv")]:
        assert getattr(client, method)(path).status_code == 401


def test_report_after_the_images_json_then_fhir_then_hl7(client: TestClient, rg1: dict[str, Any]) -> None:
    uid = rg1["study"]["study_instance_uid"]
    assert rg1["study"]["first_read"]["status"] == "none"
    assert rg1["study"]["priority"]["rule"] in ("ai-positive", "ai-urgent")
    silent = client.post("/reports", json={"study_instance_uid": uid, "text": "Heart size is normal. No effusion."},
                         headers=AUTH)
    assert silent.status_code == 200, silent.text
    result = silent.json()
    assert result["first_read"]["labels"]["pneumonia"] == "not_mentioned"
    assert result["first_read"]["discordant"] == ["pneumonia"]
    assert result["priority"]["rule"] in ("discordant", "discordant-urgent")

    fhir = {
        "resourceType": "DiagnosticReport", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "36643-5"}]},
        "contained": [{"resourceType": "ImagingStudy", "id": "s",
                       "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{uid}"}]}],
        "imagingStudy": [{"reference": "#s"}],
        "subject": {"display": CANARY_NAME},
        "presentedForm": [{"contentType": "text/plain",
                           "data": base64.b64encode(b"Right lower lobe consolidation.").decode()}],
    }
    agreed = client.post("/reports", content=json.dumps(fhir),
                         headers={**AUTH, "Content-Type": "application/fhir+json"})
    assert agreed.status_code == 200, agreed.text
    assert agreed.json()["first_read"]["source"] == "fhir"
    assert agreed.json()["priority"]["rule"] == "concordant" and agreed.json()["priority"]["route"] == "none"
    state = client.get(f"/studies/{uid}", headers=AUTH).json()["state"]
    assert state == "screened"

    oru = ("MSH|^~\\&|RIS|H|SR|H|20261128||ORU^R01|C1|P|2.5\r"
           f"PID|1||X||{CANARY_NAME}\rOBR|1||ACCX|\r"
           f"OBX|1|ST|113014^Study Instance UID^DCM||{uid}||||||F\r"
           "OBX|2|TX|IMP||No acute cardiopulmonary process.||||||F\r")
    negated = client.post("/reports", content=oru, headers={**AUTH, "Content-Type": "application/hl7-v2"})
    assert negated.status_code == 200, negated.text
    first_read = negated.json()["first_read"]
    assert first_read["source"] == "hl7" and first_read["discordant"] == ["pneumonia"]
    assert client.get(f"/studies/{uid}", headers=AUTH).json()["state"] == "awaiting_review"


def test_report_before_the_images_by_accession(client: TestClient) -> None:
    chest = make_cxr_dataset(400, 400)
    chest.AccessionNumber = "EARLY-ACC-1"
    early = client.post("/reports", json={"accession_number": "EARLY-ACC-1", "text": "No pneumonia. No nodule."},
                        headers=AUTH)
    assert early.status_code == 202 and early.json()["status"] == "pending"
    response = client.post("/screen?wait=120", content=to_bytes(chest),
                           headers={**AUTH, "Content-Type": "application/dicom"})
    (study,) = response.json()["studies"]
    assert study["first_read"]["status"] == "negative"
    assert study["first_read"]["labels"]["pneumonia"] == "negated"
    assert "accession" not in json.dumps(study).lower()  # matched, never echoed


def test_bad_reports_are_400_without_echoing_them(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    cases = [
        ("application/json", f'{{"text": "{CANARY_NAME}"'),  # malformed JSON
        ("application/json", f'{{"text": "{CANARY_NAME} has consolidation"}}'),  # no identifier
        ("application/json", '{"study_instance_uid": "1.2.3", "findings": {"nodule": "perhaps"}}'),
        ("application/fhir+json", f'{{"resourceType": "Patient", "name": [{{"text": "{CANARY_NAME}"}}]}}'),
        ("application/hl7-v2", f"PID|1||X||{CANARY_NAME}"),
        ("application/hl7-v2", f"MSH|^~\\&|A|B|C|D|x||ADT^A08|9|P|2.5\rPID|1||X||{CANARY_NAME}"),
    ]
    for content_type, body in cases:
        response = client.post("/reports", content=body, headers={**AUTH, "Content-Type": content_type})
        assert response.status_code == 400, (content_type, response.text)
        assert response.json()["reason"] and "CANARY" not in response.text
    assert "CANARY" not in caplog.text


def test_worklist_reviews_instance_and_manifest(client: TestClient, rg1: dict[str, Any], tmp_path: Path,
                                                service: ScreeningService) -> None:
    study = rg1["study"]
    uid = study["study_instance_uid"]
    client.post("/reports", json={"study_instance_uid": uid, "text": "Normal study."}, headers=AUTH)
    items = client.get("/worklist?state=awaiting_review", headers=AUTH).json()["items"]
    assert uid in [i["study_instance_uid"] for i in items]
    scores = [i["priority"]["score"] for i in items]
    assert scores == sorted(scores, reverse=True)
    item = next(i for i in items if i["study_instance_uid"] == uid)
    assert item["first_read"]["discordant"] == ["pneumonia"] and item["waiting_seconds"] >= 0
    assert client.get("/worklist?state=lost", headers=AUTH).status_code == 400
    assert client.get("/worklist?route=urgent&limit=0", headers=AUTH).status_code == 400

    region = study["regions"][0]["id"]
    bad = client.post(f"/studies/{uid}/reviews", json={"region_id": region, "verdict": "yes", "reviewer": "Dr A"},
                      headers=AUTH)
    assert bad.status_code == 400 and "verdict" in bad.json()["reason"]
    missing = client.post("/studies/1.2.3.999/reviews", json={"region_id": region, "verdict": "false_positive",
                                                              "reviewer": "Dr A"}, headers=AUTH)
    assert missing.status_code == 404
    ok = client.post(f"/studies/{uid}/reviews", json={"region_id": region, "verdict": "confirmed_miss",
                                                      "reviewer": "Dr A"}, headers=AUTH)
    assert ok.status_code == 200, ok.text
    assert ok.json()["reviews"][-1]["verdict"] == "confirmed_miss"

    sop = study["instances"][0]["sop_instance_uid"]
    dicom = client.get(f"/studies/{uid}/instances/{sop}/dicom", headers=AUTH)
    assert dicom.status_code == 200 and dicom.headers["content-type"] == "application/dicom"
    assert dicom.content == rg1["bytes"]
    assert client.get(f"/studies/{uid}/instances/1.2.3/dicom", headers=AUTH).status_code == 404

    manifest = client.get("/reviews/manifest.csv", headers=AUTH)
    rows = list(csv.DictReader(io.StringIO(manifest.text)))
    # spool-relative paths only: the file lies under the state folder, and no absolute server path leaves
    assert any(r["region_id"] == region and r["pneumonia"] == "1" and (service.home / r["path"]).is_file()
               for r in rows)
    assert not any(Path(r["path"]).is_absolute() for r in rows)
