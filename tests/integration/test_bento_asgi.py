"""The BentoML service itself, in-process: ``TestClient(SecondReader.to_asgi())`` (BentoML's own app
with its health routes, the API-key middleware and the mounted /v1 app, the service built from the
environment as ``bentoml serve`` builds it)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from ..contract import assert_study_result
from ..factories import make_cxr_dataset, to_bytes

pytestmark = [pytest.mark.weights, pytest.mark.slow]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[TestClient]:
    mp = pytest.MonkeyPatch()
    home = tmp_path_factory.mktemp("bento-home")
    mp.setenv("SECONDREADER_HOME", str(home))
    mp.setenv("SECONDREADER_API_KEYS", "k1,k2")
    mp.setenv("SECONDREADER_MODELS_DIR", str(models_dir))
    mp.setenv("SECONDREADER_DICOM_PORT", "0")
    mp.delenv("SECONDREADER_SCREEN_SAMPLES", raising=False)
    from secondreader.service.bento import SecondReader

    with TestClient(SecondReader.to_asgi(), base_url="http://127.0.0.1") as c:
        yield c
    mp.undo()


def test_ready_and_health_without_a_key(client: TestClient) -> None:
    assert client.get("/readyz").status_code == 200
    assert client.get("/livez").status_code == 200


def test_screen_through_the_service_with_either_key(client: TestClient) -> None:
    assert client.post("/v1/screen").status_code == 401
    body = to_bytes(make_cxr_dataset(400, 400))
    response = client.post("/v1/screen?wait=60", content=body,
                           headers={"Authorization": "Bearer k2", "Content-Type": "application/dicom"})
    assert response.status_code == 200, response.text
    (study,) = response.json()["studies"]
    assert_study_result(study)
    stored = client.get(f"/v1/studies/{study['study_instance_uid']}", headers={"Authorization": "Bearer k1"})
    assert stored.json() == study
