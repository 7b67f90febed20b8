"""Output encoding off the request path (issue 9): the service answers a screened study before its
overlays and SC/SEG/SR are written, writes them on its encoder threads, and only then marks the job
done and queues the DICOM outputs for the PACS. A job killed in between is screened again by the
restart, which writes the outputs. The store is SQLite and PostgreSQL (the shared ``store`` fixture)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from secondreader.pipeline import ScreeningOptions, StudyOutputs, screen_paths
from secondreader.results import WrittenOutputs
from secondreader.service import metrics
from secondreader.service.core import ScreeningService, Upload
from secondreader.service.http import build_app
from secondreader.store import Store
from secondreader.store.models import Outbox

from ..factories import make_cxr_dataset, to_bytes

pytestmark = [pytest.mark.weights, pytest.mark.slow]


class _Gate:
    """Holds every ``StudyOutputs.write`` until :meth:`open` (the encoder is 'slow')."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.opened = threading.Event()
        self.entered = threading.Event()
        real = StudyOutputs.write

        def gated(outputs: StudyOutputs) -> WrittenOutputs:
            self.entered.set()
            assert self.opened.wait(60), "the test never opened the gate"
            return real(outputs)

        monkeypatch.setattr(StudyOutputs, "write", gated)

    def open(self) -> None:
        self.opened.set()


def _service(store: Store, home: Path, predictor, **kwargs) -> ScreeningService:  # type: ignore[no-untyped-def]
    return ScreeningService(store, [predictor], home=home, max_image_pixels=64_000_000, workers=2,
                            pacs_destination="PACS@127.0.0.1:1", **kwargs)


def _outbox(store: Store) -> list[str]:
    with store._session("test: read the outbox") as s:  # noqa: SLF001 - reading the table directly
        return sorted(Path(row.path).name for row in s.query(Outbox).all())


def test_pipeline_plans_exactly_what_it_writes(tmp_path: Path, pneumonia_predictor) -> None:  # type: ignore[no-untyped-def]
    source = tmp_path / "in" / "a.dcm"
    source.parent.mkdir()
    source.write_bytes(to_bytes(make_cxr_dataset(400, 400)))
    out = tmp_path / "out"
    deferred = ScreeningOptions(predictors=[pneumonia_predictor], out_dir=out, defer_outputs=True)
    (result,) = list(screen_paths([source], deferred))
    data = result.to_json()
    assert data["status"] == "screened" and data["artifacts"]["status"] == "pending"
    assert data["timing_ms"]["encode"] == 0
    assert not out.exists() or not any(p.is_file() for p in out.rglob("*")), "nothing is written before write()"
    assert result.outputs is not None
    written = result.outputs.write()
    assert written.status == "written" and written.encode_ms > 0
    assert written.heatmaps == data["artifacts"]["heatmaps"] and written.dicom == data["artifacts"]["dicom"]
    assert sorted(Path(p).name for p in written.dicom) == ["sc.dcm", "seg.dcm", "sr.dcm"]
    assert all((out / p).is_file() for p in written.heatmaps + written.dicom)

    inline = ScreeningOptions(predictors=[pneumonia_predictor], out_dir=tmp_path / "inline")
    (same,) = list(screen_paths([source], inline))
    answer = same.to_json()
    assert same.outputs is None and answer["artifacts"]["status"] == "written"
    assert answer["artifacts"]["heatmaps"] == written.heatmaps and answer["artifacts"]["dicom"] == written.dicom
    assert answer["timing_ms"]["encode"] > 0


def test_the_answer_comes_before_the_outputs(tmp_path: Path, store: Store, pneumonia_predictor,  # type: ignore[no-untyped-def]
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    gate = _Gate(monkeypatch)
    core = _service(store, tmp_path, pneumonia_predictor)
    try:
        app = build_app(lambda: core, max_upload_bytes=lambda: 8 * 1024 * 1024)
        with TestClient(app, base_url="http://127.0.0.1") as client:
            response = client.post("/screen?wait=60", content=to_bytes(make_cxr_dataset(400, 400)),
                                   headers={"Content-Type": "application/dicom"})
            assert response.status_code == 200, response.text
            (study,) = response.json()["studies"]
            assert gate.entered.wait(30), "the encoder never started"
            assert not gate.opened.is_set()
            # answered while the encoder is held: outputs listed as pending, none on disk or queued yet
            assert study["status"] == "screened" and study["artifacts"]["status"] == "pending"
            assert study["artifacts"]["heatmaps"] and len(study["artifacts"]["dicom"]) == 3
            assert not any((core.artifacts / p).exists() for p in study["artifacts"]["dicom"])
            assert _outbox(store) == []
            (record,) = store.unfinished_jobs()  # the store keeps the job unfinished until outputs exist
            assert record.status == "running"
            job = client.get(f"/jobs/{record.id}").json()
            assert job["status"] == "done" and job["studies"][0]["artifacts"]["status"] == "pending"

            # a heatmap asked for now waits for the encoder instead of answering 404
            uid, sop = study["study_instance_uid"], study["instances"][0]["sop_instance_uid"]
            threading.Timer(0.5, gate.open).start()
            png = client.get(f"/studies/{uid}/instances/{sop}/heatmaps/pneumonia.png")
            assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
            assert core.wait(record.id, 30) is not None
            _wait_done(store, record.id)
            stored = client.get(f"/jobs/{record.id}").json()["studies"][0]
            assert stored["artifacts"]["status"] == "written" and stored["timing_ms"]["encode"] > 0
            assert stored["artifacts"]["dicom"] == study["artifacts"]["dicom"]
            assert _outbox(store) == ["sc.dcm", "seg.dcm", "sr.dcm"]
    finally:
        gate.open()
        core.close()


def _wait_done(store: Store, job_id: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = store.get_job(job_id)
        if record is not None and record.status == "done":
            return
        time.sleep(0.1)
    raise AssertionError("the job was never marked done")


def test_a_job_killed_before_its_outputs_is_screened_again(tmp_path: Path, store: Store, pneumonia_predictor,  # type: ignore[no-untyped-def]
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    gate = _Gate(monkeypatch)
    first = _service(store, tmp_path, pneumonia_predictor, worker_id="node-a")
    job_id = first.submit([_upload()])
    answered = first.wait(job_id, 60)
    assert answered is not None and answered.status == "done"
    assert gate.entered.wait(30)
    # "killed": the first process never writes; its restart (same worker id) finds the job unfinished
    assert [j.id for j in store.unfinished_jobs()] == [job_id]
    monkeypatch.undo()
    second = _service(store, tmp_path, pneumonia_predictor, worker_id="node-a")
    try:
        assert second.resume_unfinished() == 1
        _wait_done(store, job_id, 60)
        (uid,) = answered.study_uids
        result = store.get_study(uid)
        assert result is not None and result["artifacts"]["status"] == "written"
        files = result["artifacts"]["dicom"] + result["artifacts"]["heatmaps"]
        assert files and all((second.artifacts / p).is_file() for p in files)
        assert _outbox(store) == ["sc.dcm", "seg.dcm", "sr.dcm"]
        # the study was screened twice by one job: its history holds one entry, with the outputs
        assert store.results_count(uid) == 1
    finally:
        second.close()
        gate.open()
        first.close()


def test_a_slow_encoder_holds_back_the_screening(tmp_path: Path, store: Store, pneumonia_predictor,  # type: ignore[no-untyped-def]
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """One encoder, held; two screening workers. Three jobs get answered (one being encoded, two
    workers each holding theirs); the fourth is not screened until the encoder moves on, so at most
    workers + encoders studies wait in memory for their outputs."""
    gate = _Gate(monkeypatch)
    core = ScreeningService(store, [pneumonia_predictor], home=tmp_path, max_image_pixels=64_000_000, workers=2,
                            encode_workers=1)
    try:
        jobs = [core.submit([_upload()]) for _ in range(4)]
        answered = [core.wait(j, 60) for j in jobs[:3]]
        assert all(r is not None and r.status == "done" for r in answered)
        held = core.wait(jobs[3], 3)
        assert held is not None and held.status == "queued", "a fourth study was screened past the back-pressure"
        assert _gauge("secondreader_outputs_pending") == 3.0  # the backlog a PACS administrator sees
        gate.open()
        last = core.wait(jobs[3], 60)
        assert last is not None and last.status == "done"
        for job in jobs:
            _wait_done(store, job, 60)
        assert _gauge("secondreader_outputs_pending") == 0.0
    finally:
        gate.open()
        core.close()


def _gauge(name: str) -> float:
    text = metrics.exposition()[0].decode()
    (line,) = [line for line in text.splitlines() if line.startswith(name + " ")]
    return float(line.split()[1])


def _upload() -> Upload:
    return Upload("a.dcm", to_bytes(make_cxr_dataset(400, 400)))


@pytest.fixture(autouse=True)
def _no_leftover_threads() -> Iterator[None]:
    before = {t.name for t in threading.enumerate()}
    yield
    left = [t.name for t in threading.enumerate() if t.name.startswith("encode") and t.name not in before]
    assert not left, f"encoder threads left running: {left}"
