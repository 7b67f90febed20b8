"""First reads over HL7 v2: ORU^R01 messages, parsed with the ``hl7`` package, received over MLLP.

Identifiers: the Study Instance UID from a ``ZDS`` segment (IHE) or an OBX whose observation is
DCM 113014 "Study Instance UID"; the Accession Number from OBR-18 (placer field 1, IHE), else the
filler order number OBR-3. Report text: the TX/FT/ST OBX values (and NTE comments), in order.
A coded OBX (CE, CWE or CNE) whose value is a SNOMED CT code the vocabulary accepts for a finding
(:mod:`secondreader.vocabulary`) is a structured "present" label for that finding.

Segment separators are normalised to ``\\r`` before parsing: a message split by ``\\n`` would
otherwise parse as a single segment.

A message is known by its key (:func:`message_key`): sending application MSH-3, sending facility
MSH-4 and message control ID MSH-10. The listener answers a resend of a known message with the ACK
the message got the first time and stores nothing again; with a :class:`MessageLedger` (the store)
that holds across restarts and across replicas sharing the store.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Protocol

import hl7
from hl7.mllp import start_hl7_server

from ..errors import InvalidReportError, SecondReaderError
from ..vocabulary import finding_for_coding
from .firstread import ReportIn
from .labeler import Label

__all__ = ["Hl7Listener", "MessageLedger", "ack", "message_key", "parse_message", "report_from_oru",
           "split_messages"]

logger = logging.getLogger(__name__)
# The hl7 package logs the values it cannot unescape (an OBX's text, a whole segment) under a logger
# named by its file: patient data must never reach the logs, so that logger is off.
logging.getLogger(hl7.util.__file__).disabled = True

_TEXT_TYPES = {"TX", "FT", "ST", "CF"}
_CODED_TYPES = {"CE", "CWE", "CNE"}
_STUDY_UID_CODES = {"113014", "STUDY INSTANCE UID", "STUDYINSTANCEUID"}
_MLLP_FRAME = str.maketrans({"\x0b": None, "\x1c": None})
_MAX_MESSAGE_CHARS = 1_000_000
_ANSWERED_KEPT = 10_000  # keys remembered in memory: a cheap first check before the ledger
_WAIT_POLL_SECONDS = 0.05


def _normalise(text: str) -> str:
    text = text.translate(_MLLP_FRAME).replace("\r\n", "\r").replace("\n", "\r")
    return "\r".join(line for line in text.split("\r") if line.strip())


def split_messages(text: str) -> Iterator[str]:
    """The messages in a file or stream of HL7 v2 messages (each begins with an MSH segment)."""
    current: list[str] = []
    for segment in _normalise(text).split("\r"):
        if segment.startswith("MSH") and current:
            yield "\r".join(current)
            current = []
        current.append(segment)
    if current:
        yield "\r".join(current)


def parse_message(text: str) -> hl7.Message:
    """Parse one HL7 v2 message; raises InvalidReportError naming what is wrong."""
    if len(text) > _MAX_MESSAGE_CHARS:
        raise InvalidReportError(f"HL7 message is over {_MAX_MESSAGE_CHARS} characters")
    text = _normalise(text)
    if not text.startswith("MSH") or len(text) < 8:
        raise InvalidReportError("not an HL7 v2 message: it does not begin with an MSH segment")
    try:
        return hl7.parse(text)
    except Exception:  # noqa: BLE001 - the parser raises many types on malformed input
        raise InvalidReportError("HL7 v2 message cannot be parsed") from None


def _field(segment: hl7.Segment, index: int) -> str:
    """Field ``index`` (1-based, HL7 numbering) as text with its separators, or ""."""
    try:
        return str(segment(index)).strip()
    except (IndexError, KeyError, TypeError):
        return ""


def _component(segment: hl7.Segment, index: int, component: int = 1) -> str:
    """Component ``component`` of the first repetition of field ``index``, or ""."""
    parts = _field(segment, index).split("~")[0].split("^")
    return parts[component - 1].strip() if len(parts) >= component else ""


def message_type(message: hl7.Message) -> str:
    msh = message.segment("MSH")
    return f"{_component(msh, 9, 1)}^{_component(msh, 9, 2)}"


def report_from_oru(message: hl7.Message) -> ReportIn:
    """The first read in an ORU^R01 message. Any malformation raises InvalidReportError, whose
    message names the segment or field and never quotes its value."""
    try:
        return _report_from_oru(message)
    except InvalidReportError:
        raise
    except Exception:  # noqa: BLE001 - hl7 raises KeyError/IndexError/TypeError on malformed segments
        raise InvalidReportError("ORU^R01 message has a malformed segment") from None


def _report_from_oru(message: hl7.Message) -> ReportIn:
    try:
        kind = message_type(message)
    except Exception:  # noqa: BLE001 - a malformed MSH
        kind = ""
    if kind != "ORU^R01":
        raise InvalidReportError("HL7 message type (MSH-9) is not a result (ORU^R01)")
    segments = {str(s[0]).strip() for s in message}
    if "OBR" not in segments:
        raise InvalidReportError("ORU^R01 message has no OBR segment")
    obr = message.segment("OBR")
    accession = _component(obr, 18) or _component(obr, 3) or None
    study_uid: str | None = None
    for segment in message:
        if str(segment[0]).strip() == "ZDS":
            study_uid = _component(segment, 1) or study_uid
    lines: list[str] = []
    labels: dict[str, Label] = {}
    for segment in message:
        name = str(segment[0]).strip()
        if name == "OBX":
            code = _component(segment, 3, 1).upper()
            label = _component(segment, 3, 2).upper()
            value = message.unescape(_field(segment, 5))
            if code in _STUDY_UID_CODES or label in _STUDY_UID_CODES:
                study_uid = study_uid or value.split("^")[0].strip() or None
                continue
            status = _field(segment, 11).upper()
            if status in ("X", "D", "W"):  # cancelled, deleted, wrong: not part of the report
                continue
            kind = _field(segment, 2).upper()
            if kind in _TEXT_TYPES and value:
                lines.append(value.replace("~", "\n").replace("\r", "\n"))
            elif kind in _CODED_TYPES:
                finding = _coded_finding(value)
                if finding is not None:
                    labels[finding] = Label.PRESENT
        elif name == "NTE":
            note = message.unescape(_field(segment, 3))
            if note:
                lines.append(note)
    if study_uid is not None and not re.fullmatch(r"[0-9.]{1,64}", study_uid):
        raise InvalidReportError("ORU^R01 message has a malformed Study Instance UID")
    text = "\n".join(lines)
    return ReportIn(study_uid, accession, text, labels, source="hl7")


def _coded_finding(value: str) -> str | None:
    """The finding a coded OBX value (``code^text^system``, repetitions by ``~``) names, if any."""
    for repetition in value.split("~"):
        parts = repetition.split("^")
        finding = finding_for_coding(parts[2], parts[0]) if len(parts) > 2 else None
        if finding is not None:
            return finding
    return None


def msh_fields(message: hl7.Message | str | None) -> list[str]:
    """The raw MSH fields, HL7-numbered (index 1 is the field separator, 3 the sending application,
    10 the control ID); a short MSH gives a short list, never an error. ``message`` may be the raw
    text of a message the parser refused: its first segment is read as it stands."""
    if message is None:
        return []
    if isinstance(message, str):
        text = _normalise(message[:_MAX_MESSAGE_CHARS]).split("\r", 1)[0]
    else:
        try:
            text = str(message.segment("MSH"))
        except Exception:  # noqa: BLE001 - hl7 raises KeyError/IndexError on a malformed message
            return []
    if not text.startswith("MSH") or len(text) < 4:
        return []
    separator = text[3]
    return ["MSH", separator, *text[4:].split(separator)]


def control_id(message: hl7.Message | None) -> str:
    """MSH-10, the message control ID (separators and control characters removed), or ""."""
    fields = msh_fields(message)
    return _token(fields[10], 199) if len(fields) > 10 else ""


def message_key(text: str) -> tuple[str, str, str]:
    """The key a message is stored once under: (sending application MSH-3, sending facility MSH-4,
    message control ID MSH-10), each the first component stripped of separators and control
    characters (:func:`_token`), read from the first segment whether or not the message parses.

    A message without a control ID (MSH-10 empty or absent, or no MSH at all) is keyed on
    ``sha256:`` and the SHA-256 of its text (segment separators normalised): HL7 requires MSH-10, so
    such a message is answered AR, but a resend of the same text is still known (same AR, no second
    row), while any other message without one is a message of its own. The key holds no patient data
    (MSH-3/4/10 identify systems and messages), but it is never logged: field values are not echoed.
    """
    text = _normalise(text[:_MAX_MESSAGE_CHARS + 1])
    first = text.split("\r", 1)[0]
    fields = ["MSH", first[3], *first[4:].split(first[3])] if first.startswith("MSH") and len(first) > 3 else []

    def token(index: int, size: int) -> str:
        return _token(fields[index], size) if len(fields) > index else ""

    return token(3, 64), token(4, 64), token(10, 199) or f"sha256:{_digest(text)}"


def _digest(text: str) -> str:
    return hashlib.sha256(_normalise(text).encode("utf-8", errors="replace")).hexdigest()


def ack(message: hl7.Message | str | None, code: str, text: str = "") -> bytes:
    """An ACK (``AA``) or NAK (``AE``/``AR``) for ``message`` (parsed, or the raw text of one the
    parser refused), as bytes ready for MLLP framing. ``text`` (never patient data) goes to MSA-3.
    Built from whatever MSH fields are present, so a short or malformed MSH still gets an answer that
    names its control ID (MSA-2) for the sender to match; the sender's fields are echoed only where
    HL7 needs them (MSH-5/6, MSA-2), stripped of separators."""
    fields = msh_fields(message)

    def field(index: int, default: str = "", size: int = 64) -> str:
        return (_token(fields[index], size) if len(fields) > index else "") or default

    kind = fields[9].split("^") if len(fields) > 9 else []
    trigger = _token(kind[1], 3) if len(kind) > 1 else ""
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime())
    msh = "|".join(["MSH", "^~\\&", "SECONDREADER", field(6), field(3), field(4), stamp, "",
                    f"ACK^{trigger}^ACK" if trigger else "ACK", uuid.uuid4().hex[:20], field(11, "P", 3),
                    field(12, "2.5", 16)])
    msa = f"MSA|{code}|{field(10, '0', 199)}" + (f"|{_escape(text)}" if text else "")
    return f"{msh}\r{msa}\r".encode()


def _token(value: str, size: int) -> str:
    """A sender's field, safe to echo: no field or segment separators, no control characters."""
    return re.sub(r"[|^~\\&\x00-\x1f\x7f]", "", value.split("^")[0]).strip()[:size]


def _escape(text: str) -> str:
    return re.sub(r"[|^~\\&\r\n]", " ", text)[:80]


Handler = Callable[[ReportIn], None]


class Claim(Protocol):
    """What a :class:`MessageLedger` says of a message: claimed for this caller, answered before
    (``ack_code``), or being handled elsewhere (neither)."""

    @property
    def claim(self) -> str | None: ...
    @property
    def ack_code(self) -> str | None: ...
    @property
    def ack_text(self) -> str: ...
    @property
    def same_content(self) -> bool: ...


class MessageLedger(Protocol):
    """Where each message is recorded once by its key, with the ACK it got (the store: a UNIQUE key
    on the table ``hl7_messages``, see :meth:`secondreader.store.Store.claim_hl7_message`)."""

    def claim_hl7_message(self, key: tuple[str, str, str], digest: str, *, claim_seconds: float) -> Claim: ...

    def answer_hl7_message(self, claim: str, code: str, text: str = "") -> bool: ...

    def release_hl7_message(self, claim: str) -> None: ...


class Hl7Listener:
    """An MLLP listener: each ORU^R01 becomes a first read passed to ``handler``; the sender gets
    ``AA`` when it was recorded, ``AR`` for a message we cannot use (with the reason), ``AE`` when
    recording it failed (the sender should retry). Runs its own event loop in a thread.

    Each message is handled once per key (:func:`message_key`), used or not: a resend gets the ACK
    code and text the first send got, and ``handler`` is not called again. With ``ledger`` (the
    store) the ledger decides, across restarts and replicas: a message is claimed there before
    ``handler`` runs and its ACK recorded after; a resend arriving while another listener handles
    the message waits up to ``wait_seconds`` for that answer (else AE: retry); a claim left
    unanswered for ``claim_seconds`` (its listener died) is taken over. An AE is not recorded: the
    sender's retry is tried again. Without a ledger, keys are remembered in this process only."""

    def __init__(self, host: str, port: int, handler: Handler, *, ledger: MessageLedger | None = None,
                 claim_seconds: float = 60.0, wait_seconds: float = 10.0) -> None:
        self.host, self.port, self.handler = host, port, handler
        self.ledger, self.claim_seconds, self.wait_seconds = ledger, claim_seconds, wait_seconds
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="hl7-listener", daemon=True)
        self._lock = threading.Lock()
        self._answered: OrderedDict[tuple[str, ...], tuple[str, str]] = OrderedDict()

    def start(self) -> None:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        future.result(timeout=10)
        sockets = self._server.sockets if self._server else ()
        if sockets:
            self.port = sockets[0].getsockname()[1]
        logger.info("HL7 v2 MLLP listener on %s:%d", self.host, self.port)

    async def _start(self) -> None:
        self._server = await start_hl7_server(self._client, self.host, self.port, limit=_MAX_MESSAGE_CHARS)

    async def _client(self, reader: hl7.mllp.HL7StreamReader, writer: hl7.mllp.HL7StreamWriter) -> None:
        try:
            while not reader.at_eof():
                try:
                    block = await reader.readblock()
                except asyncio.IncompleteReadError as exc:
                    if exc.partial.strip():
                        logger.warning("HL7 connection closed inside a frame (no MLLP end block)")
                    break
                except hl7.mllp.InvalidBlockError:
                    logger.warning("HL7 frame rejected: it does not begin with the MLLP start block")
                    writer.writeblock(ack(None, "AR", "not an MLLP-framed HL7 message"))
                    await writer.drain()
                    break
                except ValueError:
                    logger.warning("HL7 frame rejected: over %d characters", _MAX_MESSAGE_CHARS)
                    writer.writeblock(ack(None, "AR", "message is too long"))
                    await writer.drain()
                    break
                writer.writeblock(await asyncio.get_running_loop().run_in_executor(None, self._handle, block))
                await writer.drain()
        except (ConnectionError, TimeoutError) as exc:
            logger.info("HL7 connection dropped by the peer (%s)", type(exc).__name__)
        finally:
            writer.close()

    def _handle(self, block: bytes) -> bytes:
        """The ACK for one frame; never raises."""
        try:
            return self._answer(block)
        except Exception as exc:  # noqa: BLE001 - boundary: every frame gets an answer
            logger.error("HL7 frame not handled (%s)", type(exc).__name__)
            return ack(None, "AE", "message not handled; retry")

    def _answer(self, block: bytes) -> bytes:
        text = block.decode("utf-8", errors="replace")
        message: hl7.Message | None = None
        report: ReportIn | None = None
        try:
            message = parse_message(text)
            report = report_from_oru(message)
        except InvalidReportError as exc:
            rejection = str(exc)
        else:
            rejection = "" if control_id(message) else "message control ID (MSH-10) is missing"
        key = message_key(text)
        reply_to = message if message is not None else text  # a refused message's MSH, as it stands
        with self._lock:
            answered = self._answered.get(key)
            if answered is not None:
                self._answered.move_to_end(key)
                logger.info("HL7 message resent; answered again without storing it")
                return ack(reply_to, *answered)
            if self.ledger is None:  # one message at a time: a resend racing its original is not stored twice
                return ack(reply_to, *self._remember(key, self._first_answer(report, rejection)))
        return ack(reply_to, *self._answer_once(self.ledger, key, _digest(text), report, rejection))

    def _answer_once(self, ledger: MessageLedger, key: tuple[str, str, str], digest: str,
                     report: ReportIn | None, rejection: str) -> tuple[str, str]:
        """The answer to a message, handled once by whichever listener claims it in ``ledger``."""
        deadline = time.monotonic() + self.wait_seconds
        while True:
            found = ledger.claim_hl7_message(key, digest, claim_seconds=self.claim_seconds)
            if found.ack_code is not None:
                if not found.same_content:
                    logger.warning("HL7 message control ID reused for a different message; answered as the first")
                logger.info("HL7 message resent; answered again without storing it")
                with self._lock:
                    return self._remember(key, (found.ack_code, found.ack_text))
            if found.claim is not None:
                claim = found.claim
                break
            if time.monotonic() >= deadline:
                logger.warning("HL7 message still being handled by another listener; the sender is asked to retry")
                return "AE", "message is being handled; retry"
            time.sleep(_WAIT_POLL_SECONDS)
        try:
            answer = self._first_answer(report, rejection)
        except BaseException:
            _quietly(lambda: ledger.release_hl7_message(claim), "released")
            raise
        if answer[0] == "AE":  # not recorded: the sender's retry is tried again
            _quietly(lambda: ledger.release_hl7_message(claim), "released")
            return answer
        # The first read is recorded: the sender hears so even if the ACK cannot be noted (the claim
        # then lapses, and only a resend after that would be handled again).
        _quietly(lambda: ledger.answer_hl7_message(claim, *answer), "answered")
        with self._lock:
            return self._remember(key, answer)

    def _first_answer(self, report: ReportIn | None, rejection: str) -> tuple[str, str]:
        if rejection or report is None:
            logger.warning("HL7 message rejected: %s", rejection)
            return "AR", rejection
        return self._record(report)

    def _record(self, report: ReportIn) -> tuple[str, str]:
        try:
            self.handler(report)
        except InvalidReportError as exc:
            return "AR", str(exc)
        except SecondReaderError as exc:
            logger.error("HL7 first read not recorded: %s", exc)
            return "AE", "first read not recorded; retry"
        except Exception as exc:  # noqa: BLE001 - boundary: the listener lives, the sender retries
            logger.error("HL7 first read not recorded (%s)", type(exc).__name__)
            return "AE", "first read not recorded; retry"
        return "AA", ""

    def _remember(self, key: tuple[str, str, str], answer: tuple[str, str]) -> tuple[str, str]:
        """Keep ``answer`` for ``key`` in memory (the caller holds the lock); an AE is not kept."""
        if answer[0] != "AE":  # an AE asks the sender to retry: its resend must be tried again
            self._answered[key] = answer
            self._answered.move_to_end(key)
            while len(self._answered) > _ANSWERED_KEPT:
                self._answered.popitem(last=False)
        return answer

    def stop(self) -> None:
        if self._server is not None:
            server = self._server

            async def close() -> None:
                server.close()
                await server.wait_closed()

            asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()


def _quietly(step: Callable[[], object], what: str) -> None:
    """A ledger step after the answer is settled: a failure is logged (its type only), not raised."""
    try:
        step()
    except Exception as exc:  # noqa: BLE001 - the sender's answer stands; the claim lapses in time
        logger.error("HL7 message could not be %s in the store (%s)", what, type(exc).__name__)
