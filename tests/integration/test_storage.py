"""The storage of the spool and artefacts: a local folder (the embedded default) and a real S3
server (SeaweedFS on loopback). Two services sharing one store and one bucket, with homes of their
own, stand in for two replicas: any of them screens what the other received and serves the other's
heatmaps and source images; a study split over both is screened once, with all its instances."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from secondreader.errors import StorageError
from secondreader.service.auth import ApiKeyMiddleware
from secondreader.service.core import Leases, ScreeningService
from secondreader.service.http import build_app
from secondreader.service.spool import Upload
from secondreader.service.storage import LocalStorage, S3Storage, open_storage
from secondreader.store import Store

from ..factories import make_cxr_dataset, to_bytes
from ..s3server import BUCKET, SeaweedS3

KEY = "storage-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    server = SeaweedS3(tmp_path_factory.mktemp("seaweed"))
    saved = {k: os.environ.get(k) for k in server.env()}
    os.environ.update(server.env())
    yield server
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _bucket(s3: SeaweedS3, prefix: str) -> S3Storage:
    return S3Storage(f"s3://{BUCKET}/{prefix}", endpoint_url=s3.endpoint)


def _wait(condition: Callable[[], object], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.1)


# -- the storage itself ----------------------------------------------------------------------------
def test_local_storage_keeps_paths_as_before(tmp_path: Path) -> None:
    storage = open_storage(None, home=tmp_path)
    assert isinstance(storage, LocalStorage) and not storage.shared
    ref = storage.put("spool/job/0000/a.dcm", b"DICM")
    assert ref == str(tmp_path.absolute() / "spool/job/0000/a.dcm") and Path(ref).read_bytes() == b"DICM"
    assert storage.stage(storage.ref("spool/job"), tmp_path / "work") == Path(storage.ref("spool/job"))
    assert not list(Path(ref).parent.glob(".*.tmp"))  # written to a temporary name, then renamed
    with pytest.raises(FileNotFoundError):
        storage.read(storage.ref("spool/none.dcm"))
    for bad in ("../x", "/etc/x", "a//b", ""):
        with pytest.raises(ValueError, match="storage key"):
            storage.ref(bad)
    with pytest.raises(ValueError, match="s3://bucket"):
        open_storage("ftp://x/y", home=tmp_path)


def test_s3_storage_round_trip(s3: SeaweedS3, tmp_path: Path) -> None:
    storage = _bucket(s3, "roundtrip")
    storage.check()
    ref = storage.put("spool/job/0000/a.dcm", b"one")
    storage.put("spool/job/0001/b.dcm", b"two")
    assert ref == f"s3://{BUCKET}/roundtrip/spool/job/0000/a.dcm" and storage.shared
    assert storage.read(ref) == b"one" and storage.exists(ref)
    staged = storage.stage(storage.ref("spool/job"), tmp_path / "work")
    assert sorted(p.relative_to(staged).as_posix() for p in staged.rglob("*.dcm")) == ["0000/a.dcm", "0001/b.dcm"]
    assert storage.local_ref(staged, str(staged / "0001/b.dcm"), storage.ref("spool/job")) == \
        f"s3://{BUCKET}/roundtrip/spool/job/0001/b.dcm"
    with pytest.raises(FileNotFoundError):
        storage.read(storage.ref("spool/none.dcm"))
    storage.delete(storage.ref("spool/job"))
    assert not storage.exists(ref)


def test_an_unreachable_s3_endpoint_is_a_storage_error(s3: SeaweedS3) -> None:
    with pytest.raises(StorageError, match="storage"):
        S3Storage("s3://nowhere", endpoint_url="http://127.0.0.1:1", max_attempts=1, read_timeout=2).check()


# -- two replicas over one store and one bucket ----------------------------------------------------------
@pytest.fixture()
def replicas(s3: SeaweedS3, store: Store, tmp_path: Path,
             pneumonia_predictor) -> Iterator[tuple[ScreeningService, ScreeningService]]:  # type: ignore[no-untyped-def]
    bucket = f"replicas-{store.backend}-{uuid.uuid4().hex[:8]}"
    pods = tuple(ScreeningService(store, [pneumonia_predictor], home=tmp_path / name, max_image_pixels=64_000_000,
                                  workers=2, worker_id=name, storage=_bucket(s3, bucket),
                                  leases=Leases(lease_seconds=30, poll_seconds=0.2, grace_seconds=0.5))
                 for name in ("pod-a", "pod-b"))
    for pod in pods:
        pod.start_background(stable_seconds=1.0)
    yield pods  # type: ignore[misc]
    for pod in pods:
        pod.close()


def _client(pod: ScreeningService) -> TestClient:
    app = ApiKeyMiddleware(build_app(lambda: pod, max_upload_bytes=lambda: 64 * 1024 * 1024), keys=[KEY])
    return TestClient(app, base_url="http://127.0.0.1")


def test_any_replica_serves_what_another_screened(replicas: tuple[ScreeningService, ScreeningService]) -> None:
    a, b = replicas
    with _client(a) as client_a, _client(b) as client_b:
        body = to_bytes(make_cxr_dataset(400, 400, lesion_at=(200, 200)))
        answer = client_a.post("/screen?wait=60", content=body, headers={**AUTH, "Content-Type": "application/dicom"})
        assert answer.status_code == 200, answer.text
        study = answer.json()["studies"][0]
        uid, sop = study["study_instance_uid"], study["instances"][0]["sop_instance_uid"]
        assert not (b.artifacts / uid).exists()  # pod B's own disk holds nothing of it
        png = client_b.get(f"/studies/{uid}/instances/{sop}/heatmaps/pneumonia.png", headers=AUTH)
        assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
        source = client_b.get(f"/studies/{uid}/instances/{sop}/dicom", headers=AUTH)
        assert source.status_code == 200 and source.content == body
        job = client_b.get(f"/jobs/{_job_of(a, uid)}", headers=AUTH)
        assert job.status_code == 200 and job.json()["status"] == "done"


def _job_of(pod: ScreeningService, uid: str) -> str:
    from secondreader.store.models import Job

    with pod.store.transaction("find the job") as s:
        return next(j.id for j in s.query(Job).all() if uid in (j.study_uids or []))


def test_a_study_split_over_two_replicas_is_screened_once_with_all_its_instances(
        replicas: tuple[ScreeningService, ScreeningService]) -> None:
    a, b = replicas
    first = make_cxr_dataset(400, 400)
    second = make_cxr_dataset(400, 400, study_uid=str(first.StudyInstanceUID))
    assert a.receive(to_bytes(first), first) and b.receive(to_bytes(second), second)
    uid = str(first.StudyInstanceUID)
    _wait(lambda: (a.store.get_study(uid) or {}).get("status") == "screened")
    result = a.store.get_study(uid)
    assert result is not None
    assert {i["sop_instance_uid"] for i in result["instances"]} == {first.SOPInstanceUID, second.SOPInstanceUID}
    time.sleep(1.5)  # no second screening follows
    assert a.store.results_count(uid) == 1


def test_a_job_whose_files_are_gone_fails_with_a_reason_not_done(replicas: tuple[ScreeningService, ScreeningService],
                                                                 store: Store) -> None:
    a, _b = replicas
    job = store.create_job(a.storage.ref("spool/never-written"))
    _wait(lambda: store.get_job(job).status == "failed")  # type: ignore[union-attr]
    record = store.get_job(job)
    assert record is not None and "gone" in (record.error or "")


def test_uploads_are_refused_when_the_storage_is_down(tmp_path: Path, store: Store, pneumonia_predictor) -> None:  # type: ignore[no-untyped-def]
    down = S3Storage("s3://down", endpoint_url="http://127.0.0.1:1", create_bucket=False, max_attempts=1,
                     read_timeout=2)
    pod = ScreeningService(store, [pneumonia_predictor], home=tmp_path, max_image_pixels=64_000_000, storage=down)
    try:
        with pytest.raises(StorageError):
            pod.submit([Upload("a.dcm", to_bytes(make_cxr_dataset(64, 64)))])
        assert store.unfinished_jobs() == []  # nothing recorded that is not kept
    finally:
        pod.close()


def test_a_c_store_is_answered_out_of_resources_while_the_storage_is_down(tmp_path: Path, store: Store,
                                                                         pneumonia_predictor) -> None:  # type: ignore[no-untyped-def]
    from secondreader.dicom.scp import start_receiver
    from secondreader.dicom.status import OUT_OF_RESOURCES

    from .test_receiver import _send

    down = S3Storage("s3://down", endpoint_url="http://127.0.0.1:1", create_bucket=False, max_attempts=1,
                     read_timeout=2)
    pod = ScreeningService(store, [pneumonia_predictor], home=tmp_path, max_image_pixels=64_000_000, storage=down)
    receiver = start_receiver("127.0.0.1", 0, "SECONDREADER", ["*"], pod.receive)
    try:
        ds = make_cxr_dataset(64, 64)
        assert _send(receiver.port, [ds]) == [OUT_OF_RESOURCES]  # never Success for what is not kept
        assert store.queue_stable_studies(0) == []  # and nothing recorded
    finally:
        receiver.stop()
        pod.close()
