"""Work shared by replicas through the store, on both backends: jobs, stable received studies and
outbox rows are claimed atomically, with leases that any replica takes over once they lapse; a
failed outbox row delays itself only; a row whose file is gone is dead-lettered; the pseudonym
secret is shared; simultaneous first starts migrate one at a time."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from secondreader.store import Store

from .conftest import PG_URL, postgres_store


def _in_threads(n: int, body: Callable[[int], Any]) -> list[Any]:
    barrier = threading.Barrier(n)

    def run(i: int) -> Any:
        barrier.wait()
        return body(i)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


def test_a_queued_job_is_claimed_once_however_many_workers_poll(store: Store, tmp_path: Path) -> None:
    jobs = {store.create_job(tmp_path / f"j{i}") for i in range(6)}

    def claim_all(i: int) -> list[str]:
        mine = []
        while (job := store.claim_next_job(f"pod-{i}")) is not None:
            mine.append(job.id)
        return mine

    claimed = [job for mine in _in_threads(4, claim_all) for job in mine]
    assert sorted(claimed) == sorted(jobs)  # each exactly once
    assert all(store.get_job(j).status == "running" for j in jobs)  # type: ignore[union-attr]


def test_the_replica_that_queued_a_job_gets_it_first(store: Store, tmp_path: Path) -> None:
    job = store.create_job(tmp_path)
    assert store.claim_next_job("other", grace_seconds=30) is None  # left to its own replica a while
    assert store.claim_job(job, "own")
    assert store.claim_next_job("other", grace_seconds=0) is None  # running, lease held


def test_a_lapsed_lease_is_taken_over_by_any_worker_and_the_old_one_cannot_finish(store: Store,
                                                                                    tmp_path: Path) -> None:
    job = store.create_job(tmp_path)
    assert store.claim_job(job, "pod-a", lease_seconds=0.5)
    assert not store.claim_job(job, "pod-b") and store.claim_next_job("pod-b") is None
    time.sleep(0.7)
    taken = store.claim_next_job("pod-b-replacement", lease_seconds=30)
    assert taken is not None and taken.id == job and taken.claimed_by == "pod-b-replacement"
    assert store.renew_jobs("pod-a", [job]) == set()  # pod A learns it lost the job
    assert not store.set_job(job, "done", study_uids=["1.2"], worker="pod-a")
    assert store.set_job(job, "done", study_uids=["1.2"], worker="pod-b-replacement")
    assert store.get_job(job).status == "done"  # type: ignore[union-attr]


def test_a_renewed_lease_holds(store: Store, tmp_path: Path) -> None:
    job = store.create_job(tmp_path)
    assert store.claim_job(job, "pod-a", lease_seconds=0.6)
    for _ in range(4):
        time.sleep(0.3)
        assert store.renew_jobs("pod-a", [job], lease_seconds=0.6) == {job}
        assert store.claim_next_job("pod-b") is None


def test_a_job_that_keeps_killing_its_workers_is_failed_with_a_reason(store: Store, tmp_path: Path) -> None:
    job = store.create_job(tmp_path)
    for attempt in range(3):
        claimed = store.claim_next_job(f"pod-{attempt}", lease_seconds=0.05, max_attempts=3)
        assert claimed is not None and claimed.id == job
        time.sleep(0.1)
    assert store.claim_next_job("pod-x", max_attempts=3) is None
    record = store.get_job(job)
    assert record is not None and record.status == "failed" and "3 attempts" in (record.error or "")


def test_a_stable_study_becomes_one_job_however_many_replicas_poll(store: Store, tmp_path: Path) -> None:
    for i in range(5):
        for j in range(3):
            store.record_inbound(f"1.2.5.{i}", f"1.2.5.{i}.{j}", f"s3://b/spool/inbound/{i}")
    jobs = [job for batch in _in_threads(4, lambda _i: store.queue_stable_studies(0)) for job in batch]
    assert len(jobs) == 5 and len({j.spool_dir for j in jobs}) == 5
    assert all(j.status == "queued" for j in jobs)
    assert store.queue_stable_studies(0) == []


def test_a_study_with_a_job_in_flight_waits_for_it_then_is_screened_again_with_everything(
        store: Store, tmp_path: Path) -> None:
    store.record_inbound("1.2.6", "1.2.6.1", "spool/x")
    (first,) = store.queue_stable_studies(0)
    assert store.claim_job(first.id, "pod-a")
    store.record_inbound("1.2.6", "1.2.6.2", "spool/x")  # a late instance, maybe on another replica
    assert store.queue_stable_studies(0) == []  # one owner per study: not while its job runs
    store.set_job(first.id, "done", worker="pod-a")
    (second,) = store.queue_stable_studies(0)
    assert second.id != first.id and second.spool_dir == first.spool_dir


def test_a_study_still_receiving_is_not_stable(store: Store) -> None:
    store.record_inbound("1.2.7", "1.2.7.1", "spool/y")
    assert store.queue_stable_studies(60) == []


def test_outbox_rows_are_claimed_by_one_worker_each(store: Store) -> None:
    store.enqueue_outbox("1.2.8", [f"/out/{i}.dcm" for i in range(20)], "PACS@127.0.0.1:1")
    def claim_all(i: int) -> list[int]:
        mine: list[int] = []
        while batch := store.claim_outbox(f"pod-{i}", limit=7):
            mine.extend(item.id for item in batch)
        return mine

    ids = [item for mine in _in_threads(4, claim_all) for item in mine]
    assert len(ids) == 20 and len(set(ids)) == 20
    assert store.claim_outbox("pod-late") == []  # all claimed, leases held


def test_a_failed_row_delays_itself_not_the_rows_behind_it(store: Store) -> None:
    store.enqueue_outbox("1.2.9", ["/out/a.dcm", "/out/b.dcm"], "PACS@127.0.0.1:1")
    first, second = store.claim_outbox("pod-a")
    store.outbox_failed(first.id, "pod-a", error="refused", retry_in=60)
    store.outbox_sent(second.id, "pod-a")
    store.enqueue_outbox("1.2.9", ["/out/c.dcm"], "PACS@127.0.0.1:1")
    (third,) = store.claim_outbox("pod-b")  # same destination, behind the failed row: not blocked
    assert third.path == "/out/c.dcm"
    assert store.outbox_counts() == {"pending": 2, "sent": 1}


def test_a_lapsed_outbox_claim_is_taken_over(store: Store) -> None:
    store.enqueue_outbox("1.2.10", ["/out/a.dcm"], "PACS@127.0.0.1:1")
    assert len(store.claim_outbox("pod-a", lease_seconds=0.2)) == 1
    assert store.claim_outbox("pod-b") == []
    time.sleep(0.4)
    (item,) = store.claim_outbox("pod-b")
    assert item.path == "/out/a.dcm"


def test_dead_letters_are_listed_with_their_reason_and_can_be_requeued(store: Store) -> None:
    store.enqueue_outbox("1.2.11", ["/gone/x.dcm", "/out/y.dcm"], "PACS@127.0.0.1:1")
    assert store.enqueue_outbox("1.2.11", ["/gone/x.dcm"], "PACS@127.0.0.1:1") == 0  # waiting already
    dead, _alive = store.claim_outbox("pod-a")
    store.outbox_dead(dead.id, "pod-a", reason="the result object's file is gone")
    (row,) = store.outbox_rows("dead")
    assert row["id"] == dead.id and row["reason"] == "the result object's file is gone" and row["object"] == "x.dcm"
    assert store.outbox_counts()["dead"] == 1
    assert store.outbox_oldest_pending_seconds() >= 0
    assert store.outbox_requeue(dead.id) and not store.outbox_requeue(dead.id)
    assert store.outbox_counts() == {"pending": 2}


def test_every_replica_gets_the_same_shared_secret(store: Store) -> None:
    made = Counter[str]()

    def make() -> str:
        value = uuid.uuid4().hex
        made[value] += 1
        return value

    replicas = [Store(store.url) for _ in range(5)]
    try:
        values = _in_threads(4, lambda i: replicas[i].shared_setting("pseudonym_secret", make))
        assert len(set(values)) == 1
        assert replicas[4].shared_setting("pseudonym_secret", make) == values[0]
    finally:
        for replica in replicas:
            replica.engine.dispose()


def _head_revision() -> str:
    """The newest migration's revision, read from the migration scripts (not written here twice)."""
    from alembic.script import ScriptDirectory

    import secondreader.store as store_package

    head = ScriptDirectory(str(Path(store_package.__file__).parent / "migrations")).get_current_head()
    assert head is not None
    return head


def test_simultaneous_first_starts_migrate_one_at_a_time() -> None:
    postgres_store()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    base = Store(PG_URL)
    with base.engine.begin() as c:
        c.execute(text(f"create schema {schema}"))
    try:
        url = PG_URL + f"?options=-csearch_path%3D{schema}"
        replicas = [Store(url) for _ in range(3)]
        errors = _in_threads(3, lambda i: _migrate(replicas[i]))
        assert errors == [None, None, None]
        with replicas[0].engine.connect() as c:
            assert c.execute(text("select version_num from alembic_version")).scalar() == _head_revision()
        for replica in replicas:
            replica.engine.dispose()
    finally:
        with base.engine.begin() as c:
            c.execute(text(f"drop schema {schema} cascade"))
        base.engine.dispose()


def _migrate(store: Store) -> str | None:
    try:
        store.migrate()
    except Exception as exc:  # noqa: BLE001 - the test reports which replica failed and how
        return type(exc).__name__
    return None


@pytest.mark.parametrize("seconds", [0.0])
def test_job_counts_are_store_wide(store: Store, tmp_path: Path, seconds: float) -> None:
    store.create_job(tmp_path)
    running = store.create_job(tmp_path)
    store.claim_job(running, "pod-a")
    assert store.job_counts() == {"queued": 1, "running": 1}
