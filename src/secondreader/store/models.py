"""Tables. Identifiers only (UIDs, file names without paths); no patient attributes are stored."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class Study(Base):
    """The latest state of a study (its newest result is ``result``)."""

    __tablename__ = "studies"

    study_instance_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    priority_score: Mapped[int] = mapped_column(Integer, default=0, index=True)
    route: Mapped[str] = mapped_column(String(16), default="none")
    rule: Mapped[str] = mapped_column(String(64), default="")
    result: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)
    # worklist (0003)
    state: Mapped[str] = mapped_column(String(24), default="new", index=True)
    accession_number: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    state_since: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Instance(Base):
    """One SOP instance, once (idempotent on SOP Instance UID)."""

    __tablename__ = "instances"

    sop_instance_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), ForeignKey("studies.study_instance_uid"), index=True)
    source: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # where its bytes are kept (0003): the spooled file, and the member when it came in a zip
    path: Mapped[str | None] = mapped_column(Text, nullable=True)
    member: Mapped[str | None] = mapped_column(Text, nullable=True)


class Result(Base):
    """Every result ever computed for a study (history; the newest is also on ``studies``)."""

    __tablename__ = "results"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), ForeignKey("studies.study_instance_uid"), index=True)
    models: Mapped[str] = mapped_column(String(255), default="")
    result: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # the job that computed it (0004): a job run again after a crash replaces its entry, never adds one
    job_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)


class Job(Base):
    """A screening job (an upload). Survives restarts: queued/running jobs are resumed."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    spool_dir: Mapped[str] = mapped_column(Text)
    study_uids: Mapped[list[str]] = mapped_column(JSON, default=list)
    unreadable: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)
    claimed_by: Mapped[str | None] = mapped_column(String(64), nullable=True)  # 0003: the worker running it
    # 0005: the claim holds until then (renewed by its worker while it works); after that any worker
    # may take the job over. ``attempts`` counts the claims, so a job that kills its workers stops.
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class InboundStudy(Base):
    """A study arriving by DICOM (or STOW-RS); screened once no instance came for a while."""

    __tablename__ = "inbound_studies"

    study_instance_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    state: Mapped[str] = mapped_column(String(16))  # receiving | queued
    spool_dir: Mapped[str] = mapped_column(Text)
    last_received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    job_id: Mapped[str | None] = mapped_column(String(32), nullable=True)


class InboundInstance(Base):
    """One received SOP instance, once (idempotent on SOP Instance UID)."""

    __tablename__ = "inbound_instances"

    sop_instance_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Outbox(Base):
    """A result object to deliver to the PACS; retried with backoff (per row) until sent, or
    dead-lettered (``status`` "dead", ``last_error`` the reason) when it can never be sent."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    destination: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending | sent | dead
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # 0005: the worker sending it and until when (a row is sent by one worker at a time)
    claimed_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class SharedSetting(Base):
    """A value every replica sharing the store must agree on (0005): the pseudonym secret."""

    __tablename__ = "shared_settings"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


# -- the worklist (0003) ---------------------------------------------------------------------------
class Finding(Base):
    """The latest result's findings, one row per finding code (replaced on every new result)."""

    __tablename__ = "findings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), ForeignKey("studies.study_instance_uid"), index=True)
    code: Mapped[str] = mapped_column(String(64))
    probability: Mapped[float] = mapped_column(Float)
    positive: Mapped[bool] = mapped_column(Boolean)
    operating_point: Mapped[float] = mapped_column(Float)
    model: Mapped[str] = mapped_column(String(128))


class RegionRow(Base):
    """The latest result's regions (contract 2's ``regions[]``; ``region_id`` is what reviews cite)."""

    __tablename__ = "regions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), ForeignKey("studies.study_instance_uid"), index=True)
    region_id: Mapped[str] = mapped_column(String(64))
    finding: Mapped[str] = mapped_column(String(64))
    score: Mapped[float] = mapped_column(Float)
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    frame: Mapped[int] = mapped_column(Integer)
    bbox: Mapped[list[int]] = mapped_column(JSON)
    centroid: Mapped[list[float]] = mapped_column(JSON)
    area_mm2: Mapped[float | None] = mapped_column(Float, nullable=True)


class FirstReadRow(Base):
    """A first read as received (text may hold patient data: it stays here, never in logs).
    Matched to its study by UID or accession, whichever arrives first."""

    __tablename__ = "first_reads"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_instance_uid: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    accession_number: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    source: Mapped[str] = mapped_column(String(16))
    text: Mapped[str] = mapped_column(Text)
    labels: Mapped[dict[str, str]] = mapped_column(JSON)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Hl7Message(Base):
    """An HL7 v2 message received over MLLP, once per sending source and message control ID (0006):
    the UNIQUE key that makes a resend, to any replica and after any restart, answered again with
    ``ack_code``/``ack_text`` instead of stored twice. ``ack_code`` is NULL while a listener is
    handling the message (its claim holds until ``claim_until``). Keeps no field values beyond the
    key (sending application MSH-3, facility MSH-4, control ID MSH-10, or ``sha256:<digest>`` of a
    message without one): the first read it carried is a ``first_reads`` row, and a message that
    could not be used is kept as this row with its reason (``ack_text``, which never quotes a value)
    and ``digest`` (SHA-256 of the message), not its text."""

    __tablename__ = "hl7_messages"
    __table_args__ = (UniqueConstraint("sending_application", "sending_facility", "control_id",
                                       name="uq_hl7_messages_source_control_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    sending_application: Mapped[str] = mapped_column(String(64))
    sending_facility: Mapped[str] = mapped_column(String(64))
    control_id: Mapped[str] = mapped_column(String(200))
    digest: Mapped[str] = mapped_column(String(64))
    ack_code: Mapped[str | None] = mapped_column(String(2), nullable=True)
    ack_text: Mapped[str] = mapped_column(String(80), default="")
    claim: Mapped[str | None] = mapped_column(String(32), nullable=True)
    claim_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    answered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Review(Base):
    """A radiologist's verdict on one region (confirmed_miss, false_positive, already_reported).
    The region's geometry is copied so the review stays meaningful after a re-screen."""

    __tablename__ = "reviews"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), ForeignKey("studies.study_instance_uid"), index=True)
    region_id: Mapped[str] = mapped_column(String(64))
    finding: Mapped[str] = mapped_column(String(64))
    verdict: Mapped[str] = mapped_column(String(24))
    reviewer: Mapped[str] = mapped_column(String(128))
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    frame: Mapped[int] = mapped_column(Integer)
    bbox: Mapped[list[int]] = mapped_column(JSON)
    model: Mapped[str] = mapped_column(String(128), default="")
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AuditEvent(Base):
    """Who did what to which study: ``study_key`` is the pseudonymous key (logsafe), ``actor`` the
    reviewer's name or the API key's fingerprint; ``detail`` holds no patient data."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(32))
    study_key: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
