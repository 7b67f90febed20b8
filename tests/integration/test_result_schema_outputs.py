"""Every producer of contract 2 against the committed JSON Schema (``src/secondreader/result.schema.json``,
read with the ``jsonschema`` library, not through the models that generated it): the CLI's
``result.json`` files and JSON lines, the HTTP API's answers (a job, a study, a first read, a
verdict, a correction, the worklist's rows) and the audit's per-study rows, from real runs with
the shipped weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from secondreader.audit.archive import StudyTask
from secondreader.audit.run import run_audit
from secondreader.audit.stage import failed_row

from .. import conftest
from ..contract import assert_schema, assert_study_result
from ..factories import CT_STORAGE, make_cxr_dataset, with_patient_age, write
from .conftest import AUTH, service_client
from .test_audit import build_archive, config

pytestmark = [pytest.mark.weights, pytest.mark.slow]



def test_the_cli_writes_results_the_schema_accepts(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    chest = make_cxr_dataset(600, 500, lesion_at=(250, 180))
    write(chest, folder / "chest.dcm")
    write(make_cxr_dataset(600, 500, study_uid=chest.StudyInstanceUID, view_position="LL"), folder / "lateral.dcm")
    write(make_cxr_dataset(300, 300, modality="CT", sop_class=CT_STORAGE), folder / "ct.dcm")
    (folder / "child.dcm").write_bytes(with_patient_age(conftest.testdata_file("RG1_UNCR.dcm"), "004Y"))
    (folder / "notes.txt").write_text("not an image\n")
    out = tmp_path / "out"
    env = {**os.environ, "SECONDREADER_HOME": str(tmp_path / "home")}
    proc = subprocess.run([sys.executable, "-m", "secondreader.cli", "screen", "--format", "json", "--out", str(out),
                           str(folder)], capture_output=True, text=True, env=env, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    files = [json.loads(p.read_text()) for p in sorted(out.glob("*/result.json"))]
    assert {r["status"] for r in lines} == {"screened", "ineligible", "failed"}
    assert len(files) == sum(1 for r in lines if r["study_instance_uid"]) == 3
    assert any(r["regions"] for r in files) and any(r["source"] for r in lines if r["study_instance_uid"] is None)
    for result in [*lines, *files]:
        assert_schema(result, "StudyResult")
        assert_study_result(result)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, pneumonia_predictor) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    with service_client(tmp_path_factory.mktemp("home"), [pneumonia_predictor]) as (client, _):
        yield client


def test_the_http_api_answers_what_the_schema_accepts(client: TestClient) -> None:
    child = with_patient_age(conftest.testdata_file("RG1_UNCR.dcm"), "004Y")  # cxr-pneumonia applies: flagged
    files = [("files", ("child.dcm", child, "application/dicom")),
             ("files", ("notes.txt", b"not an image", "text/plain"))]
    screened = client.post("/screen?wait=300", files=files, headers=AUTH)
    assert screened.status_code == 200, screened.text
    studies = screened.json()["studies"]
    for s in studies:  # as GET /v1/studies/{uid} shows them; a file without a study UID as its bare result
        assert_schema(s, "StudyView" if s["study_instance_uid"] else "StudyResult")
    (study,) = [s for s in studies if s["study_instance_uid"]]
    assert study["regions"] and any(s["study_instance_uid"] is None for s in studies)
    uid = study["study_instance_uid"]

    answers: list[tuple[str, Any]] = [("StudyView", client.get(f"/studies/{uid}", headers=AUTH).json())]
    report = client.post("/reports", json={"study_instance_uid": uid, "text": "No focal consolidation."},
                         headers=AUTH)
    assert report.status_code == 200, report.text
    answers.append(("StoredResult", report.json()))
    region = study["regions"][0]["id"]
    review = client.post(f"/studies/{uid}/reviews", headers=AUTH,
                         json={"region_id": region, "verdict": "confirmed_miss", "reviewer": "dr a"})
    correction = client.post(f"/studies/{uid}/reviews", headers=AUTH,
                             json={"verdict": "labeler_wrong", "finding": "pneumonia", "label": "present",
                                   "reviewer": "dr b"})
    assert review.status_code == correction.status_code == 200, (review.text, correction.text)
    answers += [("StudyView", review.json()), ("StudyView", correction.json())]
    worklist = client.get("/worklist", headers=AUTH).json()
    answers += [("WorklistPage", worklist), *(("WorklistItem", item) for item in worklist["items"])]
    queued = client.post("/screen?wait=0", content=child, headers={**AUTH, "Content-Type": "application/dicom"})
    assert queued.status_code == 202
    job_id = queued.json()["job_id"]
    for _ in range(300):
        job = client.get(f"/jobs/{job_id}", headers=AUTH).json()
        answers.append(("JobView", job))
        if job["status"] in ("done", "failed"):
            break
    assert job["status"] == "done"

    seen = client.get(f"/studies/{uid}", headers=AUTH).json()
    assert seen["first_read"]["status"] != "none" and seen["first_read_corrections"] and seen["reviews"]
    for name, body in answers:
        assert_schema(body, name)
    for body in [*studies, *(b for n, b in answers if n in ("StudyView", "StoredResult"))]:
        assert_study_result(body)


def test_the_audit_writes_rows_the_schema_accepts(tmp_path: Path, models_dir: Path) -> None:
    build_archive(tmp_path)
    outcome = run_audit(config(tmp_path, tmp_path / "out", models_dir, workers=1))
    assert outcome.complete and outcome.rows
    checkpoint = [row for line in (tmp_path / "out" / "checkpoint.jsonl").read_text().splitlines()
                  for row in json.loads(line)["rows"]]
    assert len(checkpoint) == len(outcome.rows)
    assert {r["status"] for r in outcome.rows} == {"screened", "ineligible", "failed"}
    assert any(r["discordant"] for r in outcome.rows)
    for row in [*outcome.rows, *checkpoint]:
        assert_schema(row, "AuditRow")
    assert_schema(failed_row(StudyTask("k", "1.2.3", study_month="2024-03"), "the DICOMweb server is down"),
                  "AuditRow")
