"""The HTTP API (contract 3) in-process: the real pipeline, model, batcher and SQLite store behind the
Starlette app, with the API-key middleware in front, as the BentoML service mounts them."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from secondreader.model.batcher import BatchingPredictor
from secondreader.service.core import ScreeningService
from secondreader.store import Store

from ..conftest import CANARY_ID, CANARY_NAME
from ..contract import assert_study_result
from ..factories import make_cxr_dataset, to_bytes
from .conftest import AUTH, service_client

pytestmark = [pytest.mark.weights, pytest.mark.slow]

@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory,
           pneumonia_predictor) -> Iterator[tuple[TestClient, ScreeningService]]:  # type: ignore[no-untyped-def]
    with service_client(tmp_path_factory.mktemp("home"),
                        [BatchingPredictor(pneumonia_predictor, max_batch=16, max_wait_ms=250)],
                        workers=4, max_upload_bytes=8 * 1024 * 1024) as pair:
        yield pair


@pytest.fixture(scope="module")
def service(served: tuple[TestClient, ScreeningService]) -> ScreeningService:
    return served[1]


@pytest.fixture(scope="module")
def client(served: tuple[TestClient, ScreeningService]) -> TestClient:
    return served[0]


def _chest(**kwargs) -> bytes:  # type: ignore[no-untyped-def]
    return to_bytes(make_cxr_dataset(400, 400, **kwargs))


def test_every_route_needs_a_key(client: TestClient) -> None:
    for method, path in [("post", "/screen"), ("get", "/studies/1.2.3"), ("get", "/jobs/" + "0" * 32)]:
        response = getattr(client, method)(path)
        assert response.status_code == 401 and response.json()["error"] == "unauthorized"
    assert client.get("/studies/1.2.3", headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_multipart_screen_returns_studies_and_the_result_is_stored(client: TestClient) -> None:
    files = [("files", ("a.dcm", _chest(), "application/dicom")),
             ("files", ("../../etc/b.dcm", _chest(modality="CT"), "application/dicom")),
             ("files", ("notes.txt", f"{CANARY_NAME} {CANARY_ID}".encode(), "text/plain"))]
    response = client.post("/screen?wait=60", files=files, headers=AUTH)
    assert response.status_code == 200, response.text
    studies = response.json()["studies"]
    assert len(studies) == 3
    for result in studies:
        assert_study_result(result)
    assert "CANARY" not in response.text
    screened = next(s for s in studies if s["status"] == "screened")
    assert {s["status"] for s in studies} == {"screened", "ineligible", "failed"}
    assert all(i["source"] in ("a.dcm", "b.dcm", "notes.txt") for s in studies for i in s["instances"])
    again = client.get(f"/studies/{screened['study_instance_uid']}", headers=AUTH)
    assert again.status_code == 200
    stable = {k: v for k, v in again.json().items() if k != "waiting_seconds"}
    assert stable == {k: v for k, v in screened.items() if k != "waiting_seconds"}
    assert screened["state"] in ("screened", "awaiting_review") and screened["reviews"] == []
    sop = screened["instances"][0]["sop_instance_uid"]
    png = client.get(f"/studies/{screened['study_instance_uid']}/instances/{sop}/heatmaps/pneumonia.png", headers=AUTH)
    assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"


def test_application_dicom_and_zip_bodies(client: TestClient) -> None:
    one = client.post("/screen", content=_chest(), headers={**AUTH, "Content-Type": "application/dicom"})
    assert one.status_code == 200 and one.json()["studies"][0]["status"] == "screened"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("x/1.dcm", _chest())
        archive.writestr("x/2.dcm", _chest())
    two = client.post("/screen", content=buffer.getvalue(), headers={**AUTH, "Content-Type": "application/zip"})
    assert two.status_code == 200 and len(two.json()["studies"]) == 2


def test_slow_work_answers_202_then_the_job_finishes(client: TestClient, service: ScreeningService) -> None:
    response = client.post("/screen?wait=0", content=_chest(), headers={**AUTH, "Content-Type": "application/dicom"})
    assert response.status_code == 202
    body = response.json()
    assert body["status_url"] == f"/v1/jobs/{body['job_id']}"
    record = service.wait(body["job_id"], 60)
    assert record is not None and record.status == "done"
    job = client.get(f"/jobs/{body['job_id']}", headers=AUTH).json()
    assert job["status"] == "done" and job["studies"][0]["status"] == "screened"


@pytest.mark.parametrize(
    ("kwargs", "status", "reason"),
    [
        ({"content": b"hello", "headers": {"Content-Type": "application/dicom"}}, 400,
         "nothing in the upload is DICOM (no Part 10 file, no zip holding one): a text file"),
        ({"content": b"\x89PNG\r\n\x1a\n" + bytes(200), "headers": {"Content-Type": "application/dicom"}}, 400,
         "nothing in the upload is DICOM (no Part 10 file, no zip holding one): a PNG image"),
        ({"content": b"x", "headers": {"Content-Type": "text/plain"}}, 400, "Content-Type must be"),
        ({"data": {"url": "http://example.invalid/x.dcm"}, "files": [("f", ("a.dcm", b"DICM", "application/dicom"))]},
         400, "is not a file"),
        ({"content": b"--b\r\nbroken", "headers": {"Content-Type": "multipart/form-data; boundary=b"}}, 400, ""),
        ({"content": b"0" * (9 * 1024 * 1024), "headers": {"Content-Type": "application/dicom"}}, 413, "limited"),
    ],
)
def test_bad_uploads_get_a_4xx_with_a_reason(client: TestClient, kwargs: dict, status: int, reason: str) -> None:  # type: ignore[type-arg]
    headers = {**AUTH, **kwargs.pop("headers", {})}
    response = client.post("/screen?wait=5", headers=headers, **kwargs)
    assert response.status_code == status, response.text
    assert reason in response.json()["reason"]


def test_unknown_things_are_404_and_bad_uids_400(client: TestClient) -> None:
    assert client.get("/studies/9.9.9", headers=AUTH).status_code == 404
    assert client.get("/jobs/" + "f" * 32, headers=AUTH).status_code == 404
    assert client.get("/studies/..%2F..%2Fetc", headers=AUTH).status_code in (400, 404)
    assert client.get("/studies/1.2/instances/3.4/heatmaps/x.png", headers=AUTH).status_code == 404
    assert client.get("/nowhere", headers=AUTH).status_code == 404
    assert client.post("/screen?wait=abc", content=_chest(), headers={**AUTH, "Content-Type": "application/dicom"}
                       ).status_code == 400


def test_concurrent_uploads_share_model_batches(client: TestClient, service: ScreeningService) -> None:
    batcher = service.predictors[0]
    assert isinstance(batcher, BatchingPredictor)
    before = (batcher.stats.batches, batcher.stats.images)

    def upload(_: int) -> int:
        body = to_bytes(make_cxr_dataset(300, 300))
        return client.post("/screen?wait=120", content=body,
                           headers={**AUTH, "Content-Type": "application/dicom"}).status_code

    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(upload, range(16)))
    assert codes == [200] * 16
    batches, images = batcher.stats.batches - before[0], batcher.stats.images - before[1]
    assert images == 16 and batches < 16, "concurrent studies should share at least one batch"


def test_jobs_survive_a_restart(tmp_path: Path, pneumonia_predictor) -> None:  # type: ignore[no-untyped-def]
    """A job accepted (spooled + recorded) but never run is screened by the next service start."""
    store = Store(f"sqlite:///{tmp_path / 'sr.db'}")
    store.migrate()
    spooled = tmp_path / "spool" / "job1" / "0000"
    spooled.mkdir(parents=True)
    (spooled / "a.dcm").write_bytes(_chest())
    job_id = store.create_job(spooled.parent)
    core = ScreeningService(store, [pneumonia_predictor], home=tmp_path, max_image_pixels=64_000_000)
    assert core.resume_unfinished() == 1
    record = core.wait(job_id, 60)
    core.close()
    assert record is not None and record.status == "done" and len(record.study_uids) == 1
    assert store.get_study(record.study_uids[0])["status"] == "screened"  # type: ignore[index]


def test_stow_rs_answers_per_instance(client: TestClient, service: ScreeningService) -> None:
    boundary = "sr-boundary"
    good = _chest()
    body = b"".join([
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode(), good, b"\r\n",
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode(), b"not dicom at all", b"\r\n",
        f"--{boundary}--\r\n".encode(),
    ])
    headers = {**AUTH, "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'}
    response = client.post("/dicomweb/studies", content=body, headers=headers)
    assert response.status_code == 202, response.text
    answer = response.json()
    assert len(answer["00081199"]["Value"]) == 1 and len(answer["00081198"]["Value"]) == 1
    # the same instance again is accepted but recorded once (idempotent on SOP Instance UID)
    again = client.post("/dicomweb/studies", content=body, headers=headers)
    assert again.status_code == 202
    assert client.post("/dicomweb/studies", content=good,
                       headers={**AUTH, "Content-Type": "application/dicom"}).status_code == 415
