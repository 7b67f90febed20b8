"""``Store``: results and jobs, on any SQLAlchemy URL (SQLite by default, PostgreSQL at scale).

Every method is one short transaction. Database failures surface as ``StoreError`` with a message
that names the operation, never a value.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar, cast

from alembic import command
from alembic.config import Config
from sqlalchemy import and_, create_engine, delete, event, func, or_, select, update
from sqlalchemy.engine import CursorResult, Engine
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from ..errors import StoreConflictError, StoreError
from .models import InboundInstance, InboundStudy, Instance, Job, Outbox, Result, Study, utcnow

__all__ = ["JOB_STATES", "JobRecord", "Store", "write_result"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

JOB_STATES = ("queued", "running", "done", "failed")
_MIGRATIONS = Path(__file__).parent / "migrations"


@dataclass(frozen=True, slots=True)
class JobRecord:
    id: str
    status: str
    spool_dir: str
    study_uids: tuple[str, ...]
    unreadable: tuple[dict[str, Any], ...]
    error: str | None


def _job_record(job: Job) -> JobRecord:
    return JobRecord(job.id, job.status, job.spool_dir, tuple(job.study_uids or ()),
                     tuple(job.unreadable or ()), job.error)


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
        try:
            with engine.begin() as connection:
                config.attributes["connection"] = connection
                command.upgrade(config, revision)
                if self.backend == "sqlite" and connection.exec_driver_sql("PRAGMA foreign_key_check").first():
                    raise StoreError("store migration failed (a foreign key no longer holds)")
        except SQLAlchemyError as exc:
            raise StoreError(f"store migration failed ({type(exc).__name__})") from None
        finally:
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
    def create_job(self, spool_dir: Path) -> str:
        job_id = uuid.uuid4().hex
        with self._session("create a job") as s:
            s.add(Job(id=job_id, status="queued", spool_dir=str(spool_dir), study_uids=[], unreadable=[]))
        return job_id

    def set_job(self, job_id: str, status: str, *, study_uids: list[str] | None = None,
                unreadable: list[dict[str, Any]] | None = None, error: str | None = None) -> None:
        if status not in JOB_STATES:
            raise ValueError(f"job status must be one of {JOB_STATES}, not {status!r}")
        with self._session("update a job") as s:
            job = s.get(Job, job_id)
            if job is None:
                raise StoreError("no such job")
            job.status = status
            if study_uids is not None:
                job.study_uids = study_uids
            if unreadable is not None:
                job.unreadable = unreadable
            job.error = error

    def claim_job(self, job_id: str, worker: str) -> bool:
        """Take a job for ``worker``: queued → running, atomically (a conditional UPDATE, so two
        workers sharing a PostgreSQL store never both run it). A job left running by this same
        worker (it was restarted) can be taken again. False when another worker has it."""
        with self._session("claim a job") as s:
            taken = s.execute(
                update(Job)
                .where(Job.id == job_id,
                       or_(Job.status == "queued", and_(Job.status == "running", Job.claimed_by == worker)))
                .values(status="running", claimed_by=worker, updated_at=utcnow())
            )
            return bool(cast(CursorResult[Any], taken).rowcount)

    def claim_next_job(self, worker: str) -> JobRecord | None:
        """The oldest queued job, claimed for ``worker``. On PostgreSQL rows other workers are
        claiming are skipped (``FOR UPDATE SKIP LOCKED``); everywhere the claim itself is a
        conditional UPDATE, so a job another worker took between the read and the write is passed by."""
        while True:
            with self._session("claim the next job") as s:
                stmt = select(Job.id).where(Job.status == "queued").order_by(Job.created_at, Job.id).limit(1)
                if self.backend == "postgresql":
                    stmt = stmt.with_for_update(skip_locked=True)
                job_id = s.scalars(stmt).first()
                if job_id is None:
                    return None
                taken = s.execute(update(Job).where(Job.id == job_id, Job.status == "queued")
                                  .values(status="running", claimed_by=worker, updated_at=utcnow()))
                if cast(CursorResult[Any], taken).rowcount:
                    job = s.get(Job, job_id)
                    assert job is not None
                    return _job_record(job)

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
    def save_result(self, result: dict[str, Any]) -> None:
        """Store a study result (contract 2) as the study's latest, plus its instances and history."""
        self.retrying("save a result", lambda s: write_result(s, result))

    def get_study(self, study_uid: str) -> dict[str, Any] | None:
        with self._session("read a study") as s:
            study = s.get(Study, study_uid)
            return None if study is None else dict(study.result)

    def results_count(self, study_uid: str) -> int:
        with self._session("count results") as s:
            count = s.scalar(select(func.count(Result.id)).where(Result.study_instance_uid == study_uid))
            return int(count or 0)


    # -- received instances and the outbox ------------------------------------------------------
    def record_inbound(self, study_uid: str, sop_uid: str, spool_dir: Path) -> bool:
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


    def mark_study_queued(self, study_uid: str, job_id: str) -> None:
        with self._session("queue a received study") as s:
            study = s.get(InboundStudy, study_uid)
            if study is not None:
                study.state, study.job_id = "queued", job_id


    def enqueue_outbox(self, study_uid: str, paths: list[Path], destination: str) -> None:
        with self._session("queue results for the PACS") as s:
            for path in paths:
                s.add(Outbox(study_instance_uid=study_uid, path=str(path), destination=destination, status="pending",
                             attempts=0, next_attempt_at=utcnow()))


    def due_outbox(self, limit: int = 50) -> list[tuple[int, str, str, int]]:
        with self._session("read the outbox") as s:
            rows = s.scalars(select(Outbox).where(Outbox.status == "pending", Outbox.next_attempt_at <= utcnow())
                             .order_by(Outbox.id).limit(limit))
            return [(r.id, r.path, r.destination, r.attempts) for r in rows]


    def outbox_done(self, item_id: int, *, sent: bool, error: str | None = None,
                    retry_in: float = 0.0) -> None:
        with self._session("update the outbox") as s:
            item = s.get(Outbox, item_id)
            if item is None:
                return
            item.attempts += 1
            if sent:
                item.status, item.last_error = "sent", None
            else:
                item.last_error = error
                item.next_attempt_at = utcnow() + timedelta(seconds=retry_in)


    def outbox_counts(self) -> dict[str, int]:
        with self._session("count the outbox") as s:
            counts: dict[str, int] = {}
            for status in s.scalars(select(Outbox.status)):
                counts[status] = counts.get(status, 0) + 1
            return counts


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


def write_result(s: Session, result: dict[str, Any], *, job_id: str | None = None) -> Study:
    """Write ``result`` as its study's latest (and into the history) inside session ``s``. A result
    of ``job_id`` replaces that job's earlier history entry for the study, if any: a job run again
    after the service was killed mid-way computes the same screening once more, not a new one."""
    uid = result.get("study_instance_uid")
    if not uid:
        raise ValueError("only results with a Study Instance UID are stored")
    priority = result["priority"]
    models = ",".join(sorted({f["model"] for f in result.get("findings", [])}))
    study = s.get(Study, uid)
    if study is None:
        study = Study(study_instance_uid=uid)
        s.add(study)
    study.status = result["status"]
    study.priority_score = int(priority["score"])
    study.route = priority["route"]
    study.rule = priority["rule"]
    study.result = result
    s.flush()
    for inst in result.get("instances", []):
        sop = inst.get("sop_instance_uid")
        if not sop or inst["status"] == "duplicate":
            continue
        row = s.get(Instance, sop)
        if row is None:
            row = Instance(sop_instance_uid=sop, study_instance_uid=uid)
            s.add(row)
        row.source, row.status, row.reason = inst["source"], inst["status"], inst.get("reason")
    if job_id is not None:  # removed and added again: the newest entry stays the one with the highest id
        s.execute(delete(Result).where(Result.study_instance_uid == uid, Result.job_id == job_id))
    s.add(Result(study_instance_uid=uid, models=models, result=result, job_id=job_id))
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

