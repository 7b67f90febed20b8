"""Issue 30: an HL7 message is stored once, keyed by sending source and message control ID, never
again on a resend: across listener restarts and across replicas sharing the store (SQLite and
PostgreSQL), used or not, each resend answered with the ACK code the first send got."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from secondreader.errors import StoreError
from secondreader.reports.firstread import ReportIn
from secondreader.reports.hl7 import Hl7Listener
from secondreader.store import Store
from secondreader.store.models import FirstReadRow, Hl7Message
from secondreader.worklist import Worklist

from ..conftest import CANARY_NAME

VALID = "\r".join([
    "MSH|^~\\&|RIS|HOSP|SECONDREADER|HOSP|20261128101500||ORU^R01|CTRL-OK-1|P|2.5",
    f"PID|1||PID123^^^HOSP||{CANARY_NAME}||19700101|F",
    "OBR|1||ACC-HL7-1|71046^XR CHEST^CPT|||20261128100000|||||||||||ACC-HL7-1",
    f"OBX|1|TX|18782-3^Radiology Study observation^LN||No focal consolidation. {CANARY_NAME}||||||F",
])
#: a short MSH (no MSH-11/12), and no OBR: cannot be used (AR), but has a control ID
SHORT_MSH = f"MSH|^~\\&|RIS|HOSP|SR|HOSP|20261128||ORU^R01|CTRL-BAD-1\rPID|1||X||{CANARY_NAME}"
#: does not parse at all (one encoding character twice), but MSH-10 is still there to key it by
UNPARSEABLE = f"MSH|^^\\&|RIS|HOSP|SR|HOSP|20261128||ORU^R01|CTRL-UNP-1|P|2.5\rPID|1||X||{CANARY_NAME}"
#: no control ID (MSH-10): keyed by the SHA-256 of its text
NO_CONTROL_ID = (f"MSH|^~\\&|RIS|HOSP|SR|HOSP|20261128||ORU^R01\rPID|1||X||{CANARY_NAME}"
                 "\rOBR|1|||||||||||||||||ACC-NOCTRL\rOBX|1|TX|F||No effusion.||||||F")
#: parses, but its OBX text has an escape the hl7 package cannot decode (it used to log the value)
BAD_ESCAPE = ("MSH|^~\\&|RIS|HOSP|SR|HOSP|20261128||ORU^R01|CTRL-ESC-1|P|2.5\rOBR|1|||||||||||||||||ACC-ESC"
              f"\rOBX|1|TX|F||{CANARY_NAME} \\Zzz\\||||||F")
MESSAGES = [VALID, SHORT_MSH, UNPARSEABLE, NO_CONTROL_ID, BAD_ESCAPE]


def _mllp(message: str) -> bytes:
    return b"\x0b" + message.encode() + b"\x1c\r"


def _codes(port: int, messages: list[str]) -> list[str]:
    """Send ``messages`` on one connection; the MSA-1 code of each reply."""
    codes = []
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        for message in messages:
            sock.sendall(_mllp(message))
            reply = b""
            while not reply.endswith(b"\x1c\r"):
                chunk = sock.recv(4096)
                assert chunk, "the listener closed the connection without an ACK"
                reply += chunk
            assert CANARY_NAME.encode() not in reply
            codes.append(reply.split(b"\rMSA|")[1][:2].decode())
    return codes


@contextmanager
def _replica(url: str, handler: Callable[[Worklist, ReportIn], None] | None = None) -> Iterator[Hl7Listener]:
    """A listener as the service runs one: over a Store of its own (a restarted process, or another
    replica) on the shared database, first reads into the worklist."""
    store = Store(url)
    store.migrate()
    worklist = Worklist(store)
    listener = Hl7Listener("127.0.0.1", 0, (lambda r: handler(worklist, r)) if handler else
                           (lambda r: worklist.add_report(r, actor="hl7")), ledger=store)
    listener.start()
    try:
        yield listener
    finally:
        listener.stop()
        store.engine.dispose()


def _counts(store: Store) -> tuple[int, int]:
    with store.engine.connect() as c:
        return (int(c.execute(select(func.count()).select_from(Hl7Message)).scalar_one()),
                int(c.execute(select(func.count()).select_from(FirstReadRow)).scalar_one()))


def test_each_message_is_stored_once_across_restarts(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    answers = []
    for _restart in range(3):
        with _replica(store.url) as listener:
            answers.append(_codes(listener.port, MESSAGES))
    assert answers == [["AA", "AR", "AR", "AR", "AA"]] * 3, answers
    assert _counts(store) == (5, 2)  # one row per message; first reads from the two usable ones
    with store.engine.connect() as c:
        rows = c.execute(select(Hl7Message.control_id, Hl7Message.ack_code, Hl7Message.ack_text)
                         .order_by(Hl7Message.id)).all()
    assert [(r.control_id[:7], r.ack_code) for r in rows] == [
        ("CTRL-OK", "AA"), ("CTRL-BA", "AR"), ("CTRL-UN", "AR"), ("sha256:", "AR"), ("CTRL-ES", "AA")]
    assert [r.ack_text for r in rows[1:4]] == ["ORU^R01 message has no OBR segment", "HL7 v2 message cannot be parsed",
                                               "message control ID (MSH-10) is missing"]
    assert "resent; answered again without storing it" in caplog.text
    assert CANARY_NAME not in caplog.text


def test_replicas_racing_on_one_message_store_it_once(store: Store) -> None:
    """Two replicas (Store objects of their own) get the same message at the same moment, over and
    over: one first read and one row for each, and both senders hear the same code. Recording is
    slowed down, so the replica that lost the claim waits for the winner's answer."""
    def slow(worklist: Worklist, report: ReportIn) -> None:
        time.sleep(0.2)
        worklist.add_report(report, actor="hl7")

    rounds = 6
    with _replica(store.url, slow) as one, _replica(store.url, slow) as two:
        codes: dict[int, list[str]] = {}
        errors: list[BaseException] = []

        def send(port: int, message: str, barrier: threading.Barrier, k: int) -> None:
            barrier.wait()
            try:
                codes.setdefault(k, []).extend(_codes(port, [message]))
            except BaseException as exc:  # noqa: BLE001 - every failure is the finding
                errors.append(exc)

        for k in range(rounds):
            message = VALID.replace("CTRL-OK-1", f"RACE-{k}") if k % 2 == 0 else SHORT_MSH.replace("-BAD-", f"-R{k}-")
            barrier = threading.Barrier(2)
            threads = [threading.Thread(target=send, args=(p, message, barrier, k)) for p in (one.port, two.port)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    assert errors == []
    assert [codes[k] for k in range(rounds)] == [["AA", "AA"], ["AR", "AR"]] * (rounds // 2)
    assert _counts(store) == (rounds, rounds // 2)


def test_store_claims_race_on_one_key(store: Store) -> None:
    """The UNIQUE key decides, not a read-then-write: of eight claims at once on two Store objects,
    exactly one wins; the rest see the message being handled, then answered."""
    other = Store(store.url)
    won: list[str] = []
    barrier = threading.Barrier(8)

    def claim(s: Store) -> None:
        barrier.wait()
        found = s.claim_hl7_message(("RIS", "HOSP", "SAME-1"), "d" * 64)
        if found.claim is not None:
            won.append(found.claim)
        else:
            assert found.ack_code is None and found.same_content

    try:
        threads = [threading.Thread(target=claim, args=(store if i % 2 else other,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) == 1
        assert store.answer_hl7_message(won[0], "AA")
        again = other.claim_hl7_message(("RIS", "HOSP", "SAME-1"), "e" * 64)
        assert (again.claim, again.ack_code, again.same_content) == (None, "AA", False)
    finally:
        other.engine.dispose()
    assert _counts(store)[0] == 1


def test_a_lapsed_claim_is_taken_over_and_an_ae_is_tried_again(store: Store) -> None:
    first = store.claim_hl7_message(("A", "B", "LAPSE-1"), "0" * 64, claim_seconds=-1)  # its listener died
    second = store.claim_hl7_message(("A", "B", "LAPSE-1"), "0" * 64)
    assert first.claim and second.claim and first.claim != second.claim
    assert not store.answer_hl7_message(first.claim, "AA")  # the old claim no longer answers
    assert store.answer_hl7_message(second.claim, "AR", "why")
    assert store.claim_hl7_message(("A", "B", "LAPSE-1"), "0" * 64).ack_code == "AR"

    failures = [StoreError("store unavailable while trying to record a first read")]

    def flaky(worklist: Worklist, report: ReportIn) -> None:
        if failures:
            raise failures.pop()
        worklist.add_report(report, actor="hl7")

    with _replica(store.url, flaky) as listener:
        assert _codes(listener.port, [VALID, VALID, VALID]) == ["AE", "AA", "AA"]
    with store.engine.connect() as c:
        assert c.execute(select(func.count()).select_from(Hl7Message)
                         .where(Hl7Message.control_id == "CTRL-OK-1")).scalar_one() == 1
    assert _counts(store)[1] == 1


def test_migration_from_0005_keeps_rows_and_adds_the_unique_key(store: Store) -> None:
    """A database made at 0005, with rows, upgraded: its rows stay and HL7 messages are stored once."""
    schema = getattr(store, "cleanup_schema", None)
    if schema:
        with store.engine.begin() as c:
            c.execute(text(f"create schema {schema}_old"))
        old = Store(store.url.replace(f"%3D{schema}", f"%3D{schema}_old"))
    else:
        old = Store(store.url.replace("sr.db", "old.db"))
        assert Path(old.url.split("///", 1)[1]).name == "old.db"
    try:
        old.migrate("0005")
        with old.engine.begin() as c:  # as the 0005 code wrote them
            c.execute(text("insert into first_reads (study_instance_uid, accession_number, source, text, labels, "
                           "received_at) values (null, 'ACC-OLD', 'hl7', 'old read', '{}', CURRENT_TIMESTAMP)"))
            c.execute(text("insert into shared_settings (name, value, created_at) "
                           "values ('pseudonym_secret', 'abc', CURRENT_TIMESTAMP)"))
            assert c.execute(text("select version_num from alembic_version")).scalar_one() == "0005"
        old.migrate()
        with old.engine.connect() as c:
            assert c.execute(text("select version_num from alembic_version")).scalar_one() == "0006"
            assert c.execute(text("select accession_number from first_reads")).scalar_one() == "ACC-OLD"
        assert old.shared_setting("pseudonym_secret", lambda: "new") == "abc"
        with _replica(old.url) as listener:
            assert _codes(listener.port, [VALID, VALID]) == ["AA", "AA"]
        assert _counts(old) == (1, 2)
        with pytest.raises(StoreError), old.transaction("add a duplicate") as s:  # the database enforces it
            s.add(Hl7Message(sending_application="RIS", sending_facility="HOSP", control_id="CTRL-OK-1",
                             digest="f" * 64, ack_text=""))
    finally:
        old.engine.dispose()
        if schema:
            with store.engine.begin() as c:
                c.execute(text(f"drop schema {schema}_old cascade"))
