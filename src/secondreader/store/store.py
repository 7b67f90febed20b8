"""``Store``: results and jobs, on any SQLAlchemy URL (SQLite by default, PostgreSQL at scale).

Every method is one short transaction. Database failures surface as ``StoreError`` with a message
that names the operation, never a value.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, event, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from ..errors import StoreError
from .models import Instance, Job, Result, Study

__all__ = ["JOB_STATES", "JobRecord", "Store"]

logger = logging.getLogger(__name__)

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

    def migrate(self) -> None:
        config = Config()
        config.set_main_option("script_location", str(_MIGRATIONS))
        try:
            with self.engine.begin() as connection:
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
        except SQLAlchemyError as exc:
            raise StoreError(f"store migration failed ({type(exc).__name__})") from None

    @contextmanager
    def _session(self, operation: str) -> Iterator[Session]:
        try:
            with self._sessions.begin() as session:
                yield session
        except SQLAlchemyError as exc:
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
        uid = result.get("study_instance_uid")
        if not uid:
            raise ValueError("only results with a Study Instance UID are stored")
        priority = result["priority"]
        models = ",".join(sorted({f["model"] for f in result.get("findings", [])}))
        with self._session("save a result") as s:
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
            s.add(Result(study_instance_uid=uid, models=models, result=result))

    def get_study(self, study_uid: str) -> dict[str, Any] | None:
        with self._session("read a study") as s:
            study = s.get(Study, study_uid)
            return None if study is None else dict(study.result)

    def results_count(self, study_uid: str) -> int:
        with self._session("count results") as s:
            return len(list(s.scalars(select(Result.id).where(Result.study_instance_uid == study_uid))))


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()
