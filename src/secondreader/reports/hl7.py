"""First reads over HL7 v2: ORU^R01 messages, parsed with the ``hl7`` package, received over MLLP.

Identifiers: the Study Instance UID from a ``ZDS`` segment (IHE) or an OBX whose observation is
DCM 113014 "Study Instance UID"; the Accession Number from OBR-18 (placer field 1, IHE), else the
filler order number OBR-3. Report text: the TX/FT/ST OBX values (and NTE comments), in order.
A coded OBX (CE, CWE or CNE) whose value is a SNOMED CT code the vocabulary accepts for a finding
(:mod:`secondreader.vocabulary`) is a structured "present" label for that finding.

Segment separators are normalised to ``\\r`` before parsing: a message split by ``\\n`` would
otherwise parse as a single segment.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from collections.abc import Callable, Iterator

import hl7
from hl7.mllp import start_hl7_server

from ..errors import InvalidReportError, SecondReaderError
from ..vocabulary import finding_for_snomed
from .firstread import ReportIn
from .labeler import Label

__all__ = ["Hl7Listener", "ack", "parse_message", "report_from_oru", "split_messages"]

logger = logging.getLogger(__name__)

_TEXT_TYPES = {"TX", "FT", "ST", "CF"}
_CODED_TYPES = {"CE", "CWE", "CNE"}
_SNOMED_SYSTEMS = {"SCT", "SNM", "SNOMED", "SNOMEDCT", "SNOMED CT", "2.16.840.1.113883.6.96"}
_STUDY_UID_CODES = {"113014", "STUDY INSTANCE UID", "STUDYINSTANCEUID"}
_MLLP_FRAME = str.maketrans({"\x0b": None, "\x1c": None})
_MAX_MESSAGE_CHARS = 1_000_000


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
    """The first read in an ORU^R01 message."""
    kind = message_type(message)
    if kind != "ORU^R01":
        raise InvalidReportError(f"HL7 message type {kind} is not a result (ORU^R01)")
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
        system = parts[2].strip().upper() if len(parts) > 2 else ""
        if system in _SNOMED_SYSTEMS:
            finding = finding_for_snomed(parts[0])
            if finding is not None:
                return finding
    return None


def ack(message: hl7.Message | None, code: str, text: str = "") -> bytes:
    """An ACK (``AA``) or NAK (``AE``/``AR``) for ``message``, as bytes ready for MLLP framing.
    ``text`` (never patient data) goes to MSA-3."""
    if message is None or "MSH" not in {str(s[0]).strip() for s in message}:
        fallback = "MSH|^~\\&|SECONDREADER||||||ACK|0|P|2.5\rMSA|AR|0"
        return (fallback + (f"|{_escape(text)}" if text else "")).encode()
    reply = message.create_ack(code, application="SECONDREADER")
    if text:
        reply.segment("MSA").assign_field(_escape(text), 3)
    return str(reply).encode()


def _escape(text: str) -> str:
    return re.sub(r"[|^~\\&\r\n]", " ", text)[:80]


Handler = Callable[[ReportIn], None]


class Hl7Listener:
    """An MLLP listener: each ORU^R01 becomes a first read passed to ``handler``; the sender gets
    ``AA`` when it was recorded, ``AR`` for a message we cannot use (with the reason), ``AE`` when
    recording it failed (the sender should retry). Runs its own event loop in a thread."""

    def __init__(self, host: str, port: int, handler: Handler) -> None:
        self.host, self.port, self.handler = host, port, handler
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="hl7-listener", daemon=True)

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
                except asyncio.IncompleteReadError:
                    break
                except (hl7.mllp.InvalidBlockError, ValueError):
                    writer.writeblock(ack(None, "AR", "not an MLLP-framed HL7 message"))
                    await writer.drain()
                    break
                writer.writeblock(await asyncio.get_running_loop().run_in_executor(None, self._handle, block))
                await writer.drain()
        finally:
            writer.close()

    def _handle(self, block: bytes) -> bytes:
        message: hl7.Message | None = None
        try:
            message = parse_message(block.decode("utf-8", errors="replace"))
            report = report_from_oru(message)
        except InvalidReportError as exc:
            logger.warning("HL7 message rejected: %s", exc)
            return ack(message, "AR", str(exc))
        try:
            self.handler(report)
        except InvalidReportError as exc:
            return ack(message, "AR", str(exc))
        except SecondReaderError as exc:
            logger.error("HL7 first read not recorded: %s", exc)
            return ack(message, "AE", "first read not recorded; retry")
        except Exception as exc:  # noqa: BLE001 - boundary: the listener lives, the sender retries
            logger.error("HL7 first read not recorded (%s)", type(exc).__name__)
            return ack(message, "AE", "first read not recorded; retry")
        return ack(message, "AA")

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
