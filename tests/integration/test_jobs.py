"""The pieces of the service on their own, over the store on both backends: the job queue (local
priority, claims, leases renewed while a job runs, idle polling that takes over a dead worker's
job), the spool, and the outbox delivery (per-row back-off, dead letter) against a real Storage SCP
on loopback."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pynetdicom.sop_class import SecondaryCaptureImageStorage  # type: ignore[attr-defined]

from secondreader.service.jobs import JobQueue
from secondreader.service.outbox import OutboxDelivery
from secondreader.service.spool import Spool, Upload
from secondreader.service.storage import LocalStorage
from secondreader.store import JobRecord, Store

from ..factories import make_cxr_dataset
from ..pacs import Pacs


def _wait(condition: Callable[[], object], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


def test_uploads_someone_waits_on_go_before_received_studies(store: Store, tmp_path: Path) -> None:
    order: list[str] = []
    names: dict[str, str] = {}
    queue: JobQueue

    def run(job: JobRecord) -> None:
        order.append(names[job.id])
        queue.release(job.id)

    queue = JobQueue(store, run, worker_id="pod-a", workers=1)
    gate = threading.Event()
    try:
        queue._executor.submit(gate.wait)  # the only thread is busy
        for name in ("received-1", "received-2"):
            job = store.create_job(tmp_path)
            names[job] = name
            queue.enqueue(job)
        upload = store.create_job(tmp_path)
        names[upload] = "upload-1"
        queue.enqueue(upload, urgent=True)
        gate.set()
    finally:
        queue.drain()
        queue.stop()
    assert order == ["upload-1", "received-1", "received-2"]


def test_a_running_job_keeps_its_lease_and_a_dead_workers_job_is_taken_over(store: Store, tmp_path: Path) -> None:
    ran: dict[str, str] = {}
    release = threading.Event()
    queues: list[JobQueue] = []

    def runner(name: str) -> Callable[[JobRecord], None]:
        def run(job: JobRecord) -> None:
            ran[job.id] = name
            release.wait(timeout=30)
            queues[0 if name == "pod-a" else 1].release(job.id)
            store.set_job(job.id, "done", worker=name)
        return run

    a = JobQueue(store, runner("pod-a"), worker_id="pod-a", workers=1, lease_seconds=0.9, poll_seconds=0.1,
                 grace_seconds=0)
    b = JobQueue(store, runner("pod-b"), worker_id="pod-b", workers=1, lease_seconds=0.9, poll_seconds=0.1,
                 grace_seconds=0)
    queues.extend([a, b])
    try:
        held = store.create_job(tmp_path)
        assert store.claim_job(held, "pod-a", lease_seconds=0.9)
        a.enqueue(held, claimed=True)
        a.start()
        b.start()
        _wait(lambda: held in ran)
        time.sleep(2.0)  # over twice the lease: pod A renews it while it works
        assert ran[held] == "pod-a" and store.get_job(held).claimed_by == "pod-a"  # type: ignore[union-attr]

        orphan = store.create_job(tmp_path)  # a dead replica's job: claimed, lease lapsing, nobody renewing
        assert store.claim_job(orphan, "pod-dead", lease_seconds=0.3)
        _wait(lambda: ran.get(orphan) == "pod-b")  # pod B is idle and polls: it takes it over
        release.set()
        _wait(lambda: all(store.get_job(j).status == "done" for j in (held, orphan)))  # type: ignore[union-attr]
    finally:
        release.set()
        for queue in queues:
            queue.drain()
            queue.stop()


def test_the_spool_keeps_uploads_under_safe_names(tmp_path: Path) -> None:
    spool = Spool(LocalStorage(tmp_path), tmp_path / "work")
    ref = spool.write_upload([Upload("../../etc/passwd", b"a"), Upload("", b"b")])
    files = sorted(p.relative_to(ref).as_posix() for p in Path(ref).rglob("*") if p.is_file())
    assert files == ["0000/passwd", "0001/upload-0001"]
    assert spool.stage("job", ref) == Path(ref)  # a local spool is read where it lies


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # refused sockets
def test_the_outbox_delivers_around_a_failing_and_a_dead_row(store: Store, tmp_path: Path) -> None:
    pacs = Pacs()
    storage = LocalStorage(tmp_path)
    good = []
    for i in range(3):
        ds = make_cxr_dataset(32, 32, sop_class=SecondaryCaptureImageStorage)  # as the overlays are
        path = tmp_path / f"out{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        good.append((str(path), str(ds.SOPInstanceUID)))
    down = "PACS@127.0.0.1:1"  # nobody listens there
    here = f"PACS@127.0.0.1:{pacs.port}"
    store.enqueue_outbox("1.2.1", [str(tmp_path / "gone.dcm")], here)
    store.enqueue_outbox("1.2.1", [good[0][0]], down)
    store.enqueue_outbox("1.2.1", [p for p, _ in good], here)
    delivery = OutboxDelivery(store, storage, worker="pod-a")
    # A back-off longer than this test: with the first one (0.5 s), a loaded machine sending the good
    # rows for longer than that saw the failing row due again, and tried, within the same call.
    delivery.backoff = lambda attempts: 600.0  # type: ignore[method-assign]
    try:
        assert delivery.deliver_due() == 3
        assert sorted(sop for _, _, sop in pacs.copies()) == sorted(sop for _, sop in good)
        assert store.outbox_counts() == {"dead": 1, "pending": 1, "sent": 3}
        (dead,) = store.outbox_rows("dead")
        assert "gone" in dead["reason"]
        (failing,) = store.outbox_rows("pending")
        assert failing["attempts"] == 1 and failing["destination"] == down
        assert delivery.deliver_due() == 0  # its back-off holds it; nothing is sent twice
        assert len(pacs.received) == 3
    finally:
        pacs.stop()
