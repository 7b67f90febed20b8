"""``Store``: results and jobs, on any SQLAlchemy URL (SQLite by default, PostgreSQL at scale).

Every method is one short transaction. Database failures surface as ``StoreError`` with a message
that names the operation, never a value.

Study results cross this boundary typed (contract 2's :mod:`secondreader.schema` models): a result
coming in is parsed once (:func:`kept_result`) and read by attribute, while the JSON kept for it is
what its producer wrote, byte for byte; a result read back is parsed once (:func:`stored_result`).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar, cast

from alembic import command
from alembic.config import Config
from sqlalchemy import and_, create_engine, delete, event, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import CursorResult, Engine
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from ..errors import StoreConflictError, StoreError
from ..schema import StoredResult, StudyResult, parsed
from .models import (
    Hl7Message,
    InboundInstance,
    InboundStudy,
    Instance,
    Job,
    Outbox,
    Result,
    SharedSetting,
    Study,
    utcnow,
)

if TYPE_CHECKING:
    from ..results import StudyResult as PipelineResult

    #: A study result as the store and the worklist take it: contract 2's typed model, the
    #: pipeline's value object, or its JSON (a mapping, validated into the model on the way in).
    ResultInput = StudyResult | PipelineResult | Mapping[str, Any]

__all__ = ["JOB_STATES", "Hl7Claim", "JobRecord", "KeptResult", "OutboxItem", "Store", "kept_result", "stored_result",
           "write_result"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

JOB_STATES = ("queued", "running", "done", "failed")
_MIGRATIONS = Path(__file__).parent / "migrations"
#: PostgreSQL advisory lock key held while migrating, so replicas starting together migrate one by one
MIGRATION_LOCK = 0x5EC0_4D17
#: how long a claim holds unless renewed (seconds); workers renew at a third of it
DEFAULT_LEASE_SECONDS = 60.0
#: a job claimed this often without finishing (its workers died on it) is failed, not tried again
MAX_JOB_ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class JobRecord:
    id: str
    status: str
    spool_dir: str
    study_uids: tuple[str, ...]
    unreadable: tuple[dict[str, Any], ...]
    error: str | None
    claimed_by: str | None = None


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """One result object claimed for delivery: ``path`` is where its file is kept (a local path or
    a storage URL)."""

    id: int
    study_instance_uid: str
    path: str
    destination: str
    attempts: int


class Hl7Claim(NamedTuple):
    """What :meth:`Store.claim_hl7_message` found: ``claim`` (a token) when this caller is to handle
    the message; ``ack_code``/``ack_text`` when it was answered before; neither while another
    listener handles it. ``same_content`` is False when the earlier message under this key differed."""

    claim: str | None
    ack_code: str | None
    ack_text: str
    same_content: bool


def _job_record(job: Job) -> JobRecord:
    return JobRecord(job.id, job.status, job.spool_dir, tuple(job.study_uids or ()),
                     tuple(job.unreadable or ()), job.error, job.claimed_by)


def _lease(seconds: float) -> Any:
    return utcnow() + timedelta(seconds=seconds)


def _expired() -> Any:
    """A running job's claim has lapsed (no lease at all: a row from before leases)."""
    return or_(Job.lease_until.is_(None), Job.lease_until < utcnow())


class Store:
    """The store behind the service. ``url`` is a SQLAlchemy URL; ``migrate()`` brings the schema
    to the newest Alembic revision (call it once at start-up)."""

    def __init__(self, url: str) -> None:
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url[len("postgresql://"):]
        self.url = url
        kwargs: dict[str, Any] = {"pool_pre_ping": True}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
            path = url.split("///", 1)[-1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.engine: Engine = create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def backend(self) -> str:
        return self.engine.dialect.name

    def migrate(self, revision: str = "head") -> None:
        """Bring the schema to ``revision`` (the newest by default); each migration runs in its own
        transaction, so a failure leaves the schema at the last complete revision."""
        config = Config()
        config.set_main_option("script_location", str(_MIGRATIONS))
        engine = self.ddl_engine()
        lock = None
        try:
            if self.backend == "postgresql":
                # Replicas starting together on an empty database would race to create the same
                # tables: each waits here for the one migrating, then finds the schema current.
                lock = self.engine.connect()
                lock.exec_driver_sql(f"SELECT pg_advisory_lock({MIGRATION_LOCK})")
                lock.commit()
            with engine.begin() as connection:
                config.attributes["connection"] = connection
                command.upgrade(config, revision)
                if self.backend == "sqlite" and connection.exec_driver_sql("PRAGMA foreign_key_check").first():
                    raise StoreError("store migration failed (a foreign key no longer holds)")
        except SQLAlchemyError as exc:
            raise StoreError(f"store migration failed ({type(exc).__name__})") from None
        finally:
            if lock is not None:
                try:
                    lock.exec_driver_sql(f"SELECT pg_advisory_unlock({MIGRATION_LOCK})")
                    lock.commit()
                finally:
                    lock.close()  # the session's advisory lock ends with its connection anyway
            if engine is not self.engine:
                engine.dispose()

    def ddl_engine(self) -> Engine:
        """An engine whose transactions include DDL. PostgreSQL's do; Python's sqlite3 driver commits
        before every CREATE/ALTER on its own, which would leave a failed migration half-applied, so
        for SQLite the driver's transaction handling is turned off and SQLAlchemy emits BEGIN itself."""
        if self.backend != "sqlite":
            return self.engine
        engine = create_engine(self.url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_transactional_ddl)
        event.listen(engine, "begin", lambda connection: connection.exec_driver_sql("BEGIN IMMEDIATE"))
        return engine

    def transaction(self, operation: str) -> AbstractContextManager[Session]:
        """One transaction (for the worklist's multi-table updates); failures become StoreError
        naming ``operation``."""
        return self._session(operation)

    def retrying(self, operation: str, body: Callable[[Session], _T], *, attempts: int = 5) -> _T:
        """``body`` in one transaction, run again (up to ``attempts`` times) when it lost a race
        with another transaction: two threads or workers inserting the same new study."""
        for _attempt in range(attempts - 1):
            try:
                with self._session(operation, quiet_conflicts=True) as s:
                    return body(s)
            except StoreConflictError:
                logger.info("store %s: lost a race with another transaction, trying again", operation)
        with self._session(operation) as s:  # the last try: a conflict now is an error
            return body(s)

    @contextmanager
    def _session(self, operation: str, *, quiet_conflicts: bool = False) -> Iterator[Session]:
        try:
            with self._sessions.begin() as session:
                yield session
        except SQLAlchemyError as exc:
            if _is_conflict(exc):
                if not quiet_conflicts:
                    logger.error("store %s failed: %s", operation, type(exc).__name__)
                raise StoreConflictError(f"store conflict while trying to {operation}") from None
            logger.error("store %s failed: %s", operation, type(exc).__name__)
            raise StoreError(f"store unavailable while trying to {operation}") from None

    # -- jobs ---------------------------------------------------------------------------------
    # A job is claimed (queued -> running) with a lease that its worker renews while it works
    # (:meth:`renew_jobs`). Any worker takes over a running job whose lease lapsed, whatever its
    # name; a restarted worker of the same name takes its own running jobs back at once.
    def create_job(self, spool_dir: Path | str, *, claimed_by: str | None = None,
                   lease_seconds: float = DEFAULT_LEASE_SECONDS) -> str:
        """A new job over ``spool_dir`` (a local folder or a storage URL): queued, or already
        claimed by ``claimed_by``."""
        job_id = uuid.uuid4().hex
        with self._session("create a job") as s:
            if claimed_by is None:
                s.add(Job(id=job_id, status="queued", spool_dir=str(spool_dir), study_uids=[], unreadable=[]))
            else:
                s.add(Job(id=job_id, status="running", spool_dir=str(spool_dir), study_uids=[], unreadable=[],
                          claimed_by=claimed_by, lease_until=_lease(lease_seconds), attempts=1))
        return job_id

    def set_job(self, job_id: str, status: str, *, study_uids: list[str] | None = None,
                unreadable: list[dict[str, Any]] | None = None, error: str | None = None,
                worker: str | None = None) -> bool:
        """Record a job's state. With ``worker``, only while that worker holds the job (a worker
        whose lease lapsed and was taken over must not overwrite its successor); returns whether
        it was recorded."""
        if status not in JOB_STATES:
            raise ValueError(f"job status must be one of {JOB_STATES}, not {status!r}")
        with self._session("update a job") as s:
            job = s.get(Job, job_id, with_for_update=worker is not None and self.backend == "postgresql")
            if job is None:
                raise StoreError("no such job")
            if worker is not None and (job.status != "running" or job.claimed_by != worker):
                return False
            job.status = status
            if study_uids is not None:
                job.study_uids = study_uids
            if unreadable is not None:
                job.unreadable = unreadable
            job.error = error
            if status in ("done", "failed"):
                job.lease_until = None
            return True

    def answer_job(self, job_id: str, worker: str, *, study_uids: list[str],
                   unreadable: list[dict[str, Any]]) -> None:
        """Record a running job's answer (its studies' results are recorded; their outputs are
        still being written), so every replica shows it as answered, not only the one running it."""
        with self._session("answer a job") as s:
            s.execute(update(Job).where(Job.id == job_id, Job.status == "running", Job.claimed_by == worker)
                      .values(study_uids=study_uids, unreadable=unreadable))

    def claim_job(self, job_id: str, worker: str, *, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> bool:
        """Take a job for ``worker``: queued → running, atomically (a conditional UPDATE, so two
        workers sharing a PostgreSQL store never both run it). A running job is taken again by the
        same worker (it was restarted) or by any worker once its lease lapsed. False when another
        worker has it."""
        with self._session("claim a job") as s:
            taken = s.execute(
                update(Job)
                .where(Job.id == job_id,
                       or_(Job.status == "queued",
                           and_(Job.status == "running", or_(Job.claimed_by == worker, _expired()))))
                .values(status="running", claimed_by=worker, lease_until=_lease(lease_seconds),
                        attempts=Job.attempts + 1, updated_at=utcnow())
            )
            return bool(cast(CursorResult[Any], taken).rowcount)

    def claim_next_job(self, worker: str, *, lease_seconds: float = DEFAULT_LEASE_SECONDS,
                       grace_seconds: float = 0.0, max_attempts: int = MAX_JOB_ATTEMPTS) -> JobRecord | None:
        """The oldest claimable job, claimed for ``worker``: queued for over ``grace_seconds`` (the
        worker that queued it gets it first), or running with a lapsed lease (its worker died). On
        PostgreSQL rows other workers are claiming are skipped (``FOR UPDATE SKIP LOCKED``);
        everywhere the claim itself is a conditional UPDATE, so a job another worker took between
        the read and the write is passed by. A job claimed ``max_attempts`` times already is failed
        instead (it kills its workers)."""
        while True:
            with self._session("claim the next job") as s:
                now = utcnow()
                claimable = or_(and_(Job.status == "queued", Job.created_at <= now - timedelta(seconds=grace_seconds)),
                                and_(Job.status == "running", _expired()))
                stmt = select(Job.id, Job.attempts).where(claimable).order_by(Job.created_at, Job.id).limit(1)
                if self.backend == "postgresql":
                    stmt = stmt.with_for_update(skip_locked=True)
                row = s.execute(stmt).first()
                if row is None:
                    return None
                job_id, attempts = row
                if (attempts or 0) >= max_attempts:
                    s.execute(update(Job).where(Job.id == job_id, claimable)
                              .values(status="failed", lease_until=None, updated_at=utcnow(),
                                      error=f"given up after {attempts} attempts (its workers stopped)"))
                    logger.error("job %s failed: claimed %d times without finishing", job_id[:8], attempts)
                    continue
                taken = s.execute(update(Job).where(Job.id == job_id, claimable)
                                  .values(status="running", claimed_by=worker, lease_until=_lease(lease_seconds),
                                          attempts=Job.attempts + 1, updated_at=utcnow()))
                if cast(CursorResult[Any], taken).rowcount:
                    job = s.get(Job, job_id)
                    assert job is not None
                    return _job_record(job)

    def renew_jobs(self, worker: str, job_ids: Iterable[str], *,
                   lease_seconds: float = DEFAULT_LEASE_SECONDS) -> set[str]:
        """Extend ``worker``'s leases on ``job_ids``; returns the ids it still holds (a job missing
        from the answer was taken over, or finished, elsewhere)."""
        ids = list(job_ids)
        if not ids:
            return set()
        with self._session("renew job leases") as s:
            s.execute(update(Job).where(Job.id.in_(ids), Job.status == "running", Job.claimed_by == worker)
                      .values(lease_until=_lease(lease_seconds)))
            held = s.scalars(select(Job.id).where(Job.id.in_(ids), Job.status == "running",
                                                  Job.claimed_by == worker))
            return set(held)

    def get_job(self, job_id: str) -> JobRecord | None:
        with self._session("read a job") as s:
            job = s.get(Job, job_id)
            return None if job is None else _job_record(job)

    def unfinished_jobs(self) -> list[JobRecord]:
        """Jobs that were queued or running when the service stopped, oldest first."""
        with self._session("list unfinished jobs") as s:
            rows = s.scalars(select(Job).where(Job.status.in_(("queued", "running"))).order_by(Job.created_at))
            return [_job_record(j) for j in rows]

    # -- results ------------------------------------------------------------------------------
    def save_result(self, result: ResultInput) -> None:
        """Store a study result (contract 2) as the study's latest, plus its instances and history."""
        kept = kept_result(result)
        self.retrying("save a result", lambda s: write_result(s, kept))

    def get_study(self, study_uid: str) -> dict[str, Any] | None:
        """The study's latest result as kept (its JSON)."""
        with self._session("read a study") as s:
            study = s.get(Study, study_uid)
            return None if study is None else dict(study.result)

    def study_result(self, study_uid: str) -> StoredResult | None:
        """The study's latest result, typed (:func:`stored_result`)."""
        with self._session("read a study") as s:
            study = s.get(Study, study_uid)
            return None if study is None else stored_result(study.result)

    def results_count(self, study_uid: str) -> int:
        with self._session("count results") as s:
            count = s.scalar(select(func.count(Result.id)).where(Result.study_instance_uid == study_uid))
            return int(count or 0)


    # -- received instances and the outbox ------------------------------------------------------
    def record_inbound(self, study_uid: str, sop_uid: str, spool_dir: Path | str) -> bool:
        """Record a received instance; False when its SOP Instance UID was already received.
        Instances of one new study arriving on several associations at once may race to create it:
        the loser runs again."""

        def record(s: Session) -> bool:
            if s.get(InboundInstance, sop_uid) is not None:
                return False
            s.add(InboundInstance(sop_instance_uid=sop_uid, study_instance_uid=study_uid))
            study = s.get(InboundStudy, study_uid)
            if study is None:
                study = InboundStudy(study_instance_uid=study_uid, spool_dir=str(spool_dir))
                s.add(study)
            study.state = "receiving"
            study.last_received_at = utcnow()
            return True

        return self.retrying("record a received instance", record)


    def stable_studies(self, quiet_seconds: float) -> list[tuple[str, str]]:
        """Studies still receiving whose last instance came over ``quiet_seconds`` ago."""
        cutoff = utcnow() - timedelta(seconds=quiet_seconds)
        with self._session("list stable studies") as s:
            rows = s.scalars(select(InboundStudy).where(InboundStudy.state == "receiving",
                                                        InboundStudy.last_received_at <= cutoff))
            return [(r.study_instance_uid, r.spool_dir) for r in rows]


    def queue_stable_studies(self, quiet_seconds: float, *, limit: int = 16) -> list[JobRecord]:
        """Turn stable received studies into queued jobs, atomically: each stable study becomes
        exactly one job however many replicas poll at once (rows others hold are skipped on
        PostgreSQL; everywhere the study's state changes by a conditional UPDATE, and an instance
        arriving meanwhile keeps it receiving). A study whose previous job is still queued or
        running waits for it (one owner per study): its late instances are screened, with all the
        others, by the next job. The jobs are claimed like any other (:meth:`claim_job`)."""
        cutoff = utcnow() - timedelta(seconds=quiet_seconds)
        claimed: list[JobRecord] = []
        with self._session("queue stable studies") as s:
            stmt = (select(InboundStudy).where(InboundStudy.state == "receiving",
                                               InboundStudy.last_received_at <= cutoff)
                    .order_by(InboundStudy.last_received_at).limit(limit))
            if self.backend == "postgresql":
                stmt = stmt.with_for_update(skip_locked=True)
            for study in s.scalars(stmt).all():
                if study.job_id is not None:
                    previous = s.get(Job, study.job_id)
                    if previous is not None and previous.status in ("queued", "running"):
                        continue
                job_id = uuid.uuid4().hex
                taken = s.execute(update(InboundStudy)
                                  .where(InboundStudy.study_instance_uid == study.study_instance_uid,
                                         InboundStudy.state == "receiving", InboundStudy.last_received_at <= cutoff)
                                  .values(state="queued", job_id=job_id)
                                  .execution_options(synchronize_session=False))
                if not cast(CursorResult[Any], taken).rowcount:
                    continue
                job = Job(id=job_id, status="queued", spool_dir=study.spool_dir, study_uids=[], unreadable=[])
                s.add(job)
                claimed.append(_job_record(job))
        return claimed

    def mark_study_queued(self, study_uid: str, job_id: str) -> None:
        with self._session("queue a received study") as s:
            study = s.get(InboundStudy, study_uid)
            if study is not None:
                study.state, study.job_id = "queued", job_id

    # -- the outbox: one worker sends a row at a time (a claim with a lease); a failure delays
    # -- that row only; a row that can never be sent is dead-lettered with its reason ---------------
    def enqueue_outbox(self, study_uid: str, paths: list[Path] | list[str], destination: str) -> int:
        """Queue result objects for ``destination``; a file already waiting there is not queued
        twice (a job run again writes the same files). Returns how many rows were added."""
        added = 0
        with self._session("queue results for the PACS") as s:
            waiting = set(s.scalars(select(Outbox.path).where(Outbox.study_instance_uid == study_uid,
                                                              Outbox.destination == destination,
                                                              Outbox.status == "pending")))
            for path in map(str, paths):
                if path in waiting:
                    continue
                waiting.add(path)
                s.add(Outbox(study_instance_uid=study_uid, path=path, destination=destination, status="pending",
                             attempts=0, next_attempt_at=utcnow()))
                added += 1
        return added

    def claim_outbox(self, worker: str, *, limit: int = 16,
                     lease_seconds: float = DEFAULT_LEASE_SECONDS) -> list[OutboxItem]:
        """Due rows (pending, their retry time come, not claimed or their claim lapsed), claimed for
        ``worker``, oldest due first. Each row is claimed by one worker at a time."""
        def claimable() -> Any:
            now = utcnow()
            return and_(Outbox.status == "pending", Outbox.next_attempt_at <= now,
                        or_(Outbox.lease_until.is_(None), Outbox.lease_until < now))

        while True:  # another worker may claim the rows read between the read and the write: read again
            with self._session("claim outbox rows") as s:
                stmt = select(Outbox.id).where(claimable()).order_by(Outbox.next_attempt_at, Outbox.id).limit(limit)
                if self.backend == "postgresql":
                    stmt = stmt.with_for_update(skip_locked=True)
                ids = list(s.scalars(stmt))
                if not ids:
                    return []
                lease_until = _lease(lease_seconds)
                s.execute(update(Outbox).where(Outbox.id.in_(ids), claimable())
                          .values(claimed_by=worker, lease_until=lease_until)
                          .execution_options(synchronize_session=False))
                rows = s.scalars(select(Outbox).where(Outbox.id.in_(ids), Outbox.claimed_by == worker,
                                                      Outbox.lease_until == lease_until,
                                                      Outbox.status == "pending").order_by(Outbox.id)).all()
                if rows:
                    return [OutboxItem(r.id, r.study_instance_uid, r.path, r.destination, r.attempts) for r in rows]

    def outbox_release(self, item_ids: list[int], worker: str) -> None:
        """Give claimed rows back unsent (due again at once, for any worker)."""
        if not item_ids:
            return
        with self._session("release outbox rows") as s:
            s.execute(update(Outbox).where(Outbox.id.in_(item_ids), Outbox.claimed_by == worker,
                                           Outbox.status == "pending").values(lease_until=None))

    def outbox_sent(self, item_id: int, worker: str) -> None:
        with self._session("update the outbox") as s:
            s.execute(update(Outbox).where(Outbox.id == item_id)
                      .values(status="sent", sent_at=utcnow(), attempts=Outbox.attempts + 1, last_error=None,
                              claimed_by=worker, lease_until=None))

    def outbox_failed(self, item_id: int, worker: str, *, error: str, retry_in: float) -> None:
        """A failed try: this row waits ``retry_in`` seconds; other rows go on."""
        with self._session("update the outbox") as s:
            s.execute(update(Outbox).where(Outbox.id == item_id, Outbox.status == "pending")
                      .values(attempts=Outbox.attempts + 1, last_error=error[:500],
                              next_attempt_at=utcnow() + timedelta(seconds=retry_in), lease_until=None))

    def outbox_dead(self, item_id: int, worker: str, *, reason: str) -> None:
        """Dead-letter a row that can never be sent (its file is gone), keeping the reason."""
        with self._session("dead-letter an outbox row") as s:
            s.execute(update(Outbox).where(Outbox.id == item_id, Outbox.status == "pending")
                      .values(status="dead", attempts=Outbox.attempts + 1, last_error=reason[:500],
                              claimed_by=worker, lease_until=None))

    def outbox_rows(self, status: str, *, limit: int = 200) -> list[dict[str, Any]]:
        """Rows in ``status`` (pending, sent, dead), newest first, as the admin route shows them."""
        with self._session("read the outbox") as s:
            rows = s.scalars(select(Outbox).where(Outbox.status == status).order_by(Outbox.id.desc()).limit(limit))
            return [{"id": r.id, "study_instance_uid": r.study_instance_uid, "destination": r.destination,
                     "status": r.status, "attempts": r.attempts, "reason": r.last_error,
                     "object": Path(r.path).name, "created_at": r.created_at.isoformat(),
                     "next_attempt_at": r.next_attempt_at.isoformat() if r.status == "pending" else None}
                    for r in rows]

    def outbox_requeue(self, item_id: int) -> bool:
        """Put a dead-lettered row back in the queue (after its file was restored); False if no
        such dead row."""
        with self._session("requeue an outbox row") as s:
            taken = s.execute(update(Outbox).where(Outbox.id == item_id, Outbox.status == "dead")
                              .values(status="pending", next_attempt_at=utcnow(), lease_until=None))
            return bool(cast(CursorResult[Any], taken).rowcount)

    def outbox_counts(self) -> dict[str, int]:
        with self._session("count the outbox") as s:
            rows = s.execute(select(Outbox.status, func.count(Outbox.id)).group_by(Outbox.status))
            return {status: int(count) for status, count in rows}

    def outbox_oldest_pending_seconds(self) -> float:
        """Age of the oldest pending row (0 when none): a delivery stall shows here."""
        with self._session("read the outbox") as s:
            oldest = s.scalar(select(func.min(Outbox.created_at)).where(Outbox.status == "pending"))
        if oldest is None:
            return 0.0
        if oldest.tzinfo is None:  # SQLite hands back naive UTC
            oldest = oldest.replace(tzinfo=utcnow().tzinfo)
        return max(0.0, (utcnow() - oldest).total_seconds())

    def job_counts(self) -> dict[str, int]:
        with self._session("count jobs") as s:
            rows = s.execute(select(Job.status, func.count(Job.id)).where(Job.status.in_(("queued", "running")))
                             .group_by(Job.status))
            return {status: int(count) for status, count in rows}

    # -- HL7 messages: each once per (sending application, facility, control ID), whichever replica
    # -- receives it and however often it is resent (a UNIQUE key decides, not memory) ------------
    def claim_hl7_message(self, key: tuple[str, str, str], digest: str, *,
                          claim_seconds: float = DEFAULT_LEASE_SECONDS) -> Hl7Claim:
        """Record the HL7 message ``key`` (MSH-3, MSH-4, MSH-10) as being handled, unless it is known.
        The row is added by an insert that ignores a duplicate key, so of listeners racing on one
        message (threads, replicas) exactly one gets the claim; the others see it handled, or
        answered. A claim held over ``claim_seconds`` without an answer (its listener stopped) is
        taken over. ``digest`` (SHA-256 of the message) tells a resend from a reused control ID."""
        application, facility, control = key
        where = and_(Hl7Message.sending_application == application, Hl7Message.sending_facility == facility,
                     Hl7Message.control_id == control)

        def claim(s: Session) -> Hl7Claim:
            token, now = uuid.uuid4().hex, utcnow()
            values = {"sending_application": application, "sending_facility": facility, "control_id": control,
                      "digest": digest, "ack_text": "", "claim": token, "claim_until": _lease(claim_seconds),
                      "received_at": now}
            if self._insert_new(s, values):
                return Hl7Claim(token, None, "", True)
            row = s.scalars(select(Hl7Message).where(where)).one_or_none()
            if row is None:  # released (its first try failed) between the insert and the read
                raise StoreConflictError("store conflict while trying to record an HL7 message")
            if row.ack_code is not None:
                return Hl7Claim(None, row.ack_code, row.ack_text, row.digest == digest)
            taken = s.execute(update(Hl7Message)
                              .where(Hl7Message.id == row.id, Hl7Message.ack_code.is_(None),
                                     or_(Hl7Message.claim_until.is_(None), Hl7Message.claim_until < now))
                              .values(claim=token, claim_until=_lease(claim_seconds), digest=digest)
                              .execution_options(synchronize_session=False))
            if cast(CursorResult[Any], taken).rowcount:
                logger.warning("HL7 message claim lapsed unanswered; handling the message again")
                return Hl7Claim(token, None, "", True)
            return Hl7Claim(None, None, "", row.digest == digest)

        return self.retrying("record an HL7 message", claim)

    def _insert_new(self, s: Session, values: dict[str, Any]) -> bool:
        """Insert an ``hl7_messages`` row unless its key is taken (then nothing): False when taken."""
        keys = ["sending_application", "sending_facility", "control_id"]
        if self.backend in ("postgresql", "sqlite"):
            dialect = postgresql if self.backend == "postgresql" else sqlite
            stmt = (dialect.insert(Hl7Message).values(**values).on_conflict_do_nothing(index_elements=keys)
                    .returning(Hl7Message.id))  # no row back when ignored (a rowcount may read -1)
            return s.execute(stmt).first() is not None
        try:  # another backend: the UNIQUE constraint, inside a savepoint
            with s.begin_nested():
                s.add(Hl7Message(**values))
            return True
        except IntegrityError:
            return False

    def answer_hl7_message(self, claim: str, code: str, text: str = "") -> bool:
        """Record the ACK the claimed message got (a resend gets it again); False when the claim was
        taken over meanwhile."""
        with self._session("record an HL7 answer") as s:
            done = s.execute(update(Hl7Message).where(Hl7Message.claim == claim, Hl7Message.ack_code.is_(None))
                             .values(ack_code=code, ack_text=text[:80], answered_at=utcnow(), claim=None,
                                     claim_until=None))
            return bool(cast(CursorResult[Any], done).rowcount)

    def release_hl7_message(self, claim: str) -> None:
        """Forget a claimed message that was not recorded (answered AE): its resend is tried again."""
        with self._session("release an HL7 message") as s:
            s.execute(delete(Hl7Message).where(Hl7Message.claim == claim, Hl7Message.ack_code.is_(None)))

    # -- settings shared by the replicas ----------------------------------------------------------
    def shared_setting(self, name: str, make: Callable[[], str]) -> str:
        """The value every replica sharing this store uses for ``name``: the first replica to ask
        makes it (``make()``), the others read it."""
        def get_or_add(s: Session) -> str:
            row = s.get(SharedSetting, name)
            if row is None:
                row = SharedSetting(name=name, value=make())
                s.add(row)
                s.flush()
            return row.value

        return self.retrying("read a shared setting", get_or_add)


def _is_conflict(exc: SQLAlchemyError) -> bool:
    """A lost race, not a broken store: a duplicate key (SQLSTATE 23505, SQLite's UNIQUE constraint),
    SQLite's "database is locked" when two deferred transactions both want to write, PostgreSQL's
    deadlock or serialisation failure (40P01, 40001). Other integrity errors are bugs, not races."""
    code = getattr(exc.orig, "sqlstate", None) if isinstance(exc, IntegrityError | OperationalError) else None
    text = str(getattr(exc, "orig", exc)).lower()
    if isinstance(exc, IntegrityError):
        return code == "23505" or "unique constraint" in text
    if isinstance(exc, OperationalError):
        return code in ("40P01", "40001") or "locked" in text
    return False


@dataclass(frozen=True, slots=True)
class KeptResult:
    """A study result at the store's boundary, parsed once: ``result``, contract 2's typed model
    (read by attribute), and ``data``, the JSON kept for it: what its producer wrote, byte for byte
    (``to_json()`` of the pipeline's result, the mapping given, or the typed model's own dump)."""

    result: StudyResult
    data: dict[str, Any]


def kept_result(result: ResultInput) -> KeptResult:
    """``result`` typed, with the JSON to keep for it; ResultContractError (logged with where, never
    a value) when it breaks contract 2."""
    if isinstance(result, StudyResult):
        return KeptResult(result, result.model_dump(mode="json"))
    data = dict(result) if isinstance(result, Mapping) else result.to_json()
    return KeptResult(parsed(StudyResult, data, use="stored"), data)


def stored_result(data: Mapping[str, Any]) -> StoredResult:
    """A kept result (a study's latest, or a history entry), typed: parsed once, here. One kept
    before the worklist routed it (before migration 0003, or saved by :meth:`Store.save_result`)
    has no ``ai_priority``: the AI's priority is then its ``priority``. Older findings' mode,
    routes and scope take the model's defaults (live, routing, applicable)."""
    if "ai_priority" not in data:
        data = {**data, "ai_priority": data["priority"]}
    return parsed(StoredResult, data, use="read")


def write_result(s: Session, kept: KeptResult, *, job_id: str | None = None) -> Study:
    """Write ``kept`` (its JSON) as its study's latest (and into the history) inside session ``s``.
    A result of ``job_id`` replaces that job's earlier history entry for the study, if any: a job
    run again after the service was killed mid-way computes the same screening once more, not a
    new one."""
    result = kept.result
    uid = result.study_instance_uid
    if not uid:
        raise ValueError("only results with a Study Instance UID are stored")
    models = ",".join(sorted({f.model for f in result.findings}))
    study = s.get(Study, uid)
    if study is None:
        study = Study(study_instance_uid=uid)
        s.add(study)
    study.status = result.status
    study.priority_score = result.priority.score
    study.route = result.priority.route
    study.rule = result.priority.rule
    study.result = kept.data
    s.flush()
    for inst in result.instances:
        sop = inst.sop_instance_uid
        if not sop or inst.status == "duplicate":
            continue
        row = s.get(Instance, sop)
        if row is None:
            row = Instance(sop_instance_uid=sop, study_instance_uid=uid)
            s.add(row)
        row.source, row.status, row.reason = inst.source, inst.status, inst.reason
    if job_id is not None:  # removed and added again: the newest entry stays the one with the highest id
        s.execute(delete(Result).where(Result.study_instance_uid == uid, Result.job_id == job_id))
    s.add(Result(study_instance_uid=uid, models=models, result=kept.data, job_id=job_id))
    return study


def _sqlite_transactional_ddl(dbapi_connection: Any, record: Any) -> None:
    _sqlite_pragmas(dbapi_connection, record)
    # Batch migrations rebuild tables (copy, drop, rename); with foreign keys enforced, dropping a
    # referenced table would delete-check every referencing row and fail. They are checked after.
    dbapi_connection.execute("PRAGMA foreign_keys=OFF")
    dbapi_connection.isolation_level = None  # no implicit COMMIT before DDL; BEGIN comes from the "begin" event


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()

