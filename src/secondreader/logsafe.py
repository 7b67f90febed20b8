"""Logging without patient data.

``configure_logging`` is called by entry points only. ``study_key`` turns a Study Instance UID into
a pseudonym (HMAC-SHA256 with the site secret, 16 hex characters) that can be logged.
``PhiRedactingFilter`` is a last line of defence: it masks anything that looks like a DICOM UID,
a DICOM person name (``A^B``) or a file path in log records, in case a library logs one.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import logging.config
import re
import sys
import threading
import warnings

__all__ = ["PhiRedactingFilter", "configure_logging", "install_redaction", "redact", "redact_report_text",
           "set_secret", "study_key"]

_secret: bytes = b"secondreader-unset-secret"

_UID = re.compile(r"\b[0-2](?:\.\d+){3,}\b")
_PERSON_NAME = re.compile(r"[^\s^=]+\^[^\s=]*")
_PATH = re.compile(r"(?:[A-Za-z]:)?(?:/[^\s/:'\"]+){2,}")


def set_secret(secret: bytes) -> None:
    """Set the key used by :func:`study_key` (entry points call this once)."""
    global _secret
    _secret = secret


def study_key(study_instance_uid: str | None) -> str:
    """Pseudonym of a study for logs: ``HMAC-SHA256(secret, uid)[:16]``, or ``"-"`` when unknown."""
    if not study_instance_uid:
        return "-"
    return hmac.new(_secret, study_instance_uid.encode(), hashlib.sha256).hexdigest()[:16]


#: An HTTP request line in an access log: its path is shown as the route's shape.
_REQUEST = re.compile(r"\b(GET|HEAD|POST|PUT|PATCH|DELETE|OPTIONS) (/[^\s\"]*)")
#: The words of the service's routes; any other segment (a UID, a pseudonym, a name) is masked.
_ROUTE_WORDS = frozenset({"v1", "dicomweb", "studies", "instances", "dicom", "heatmaps", "jobs", "reports",
                          "reviews", "manifest.csv", "screen", "worklist", "rates", "viewer", "assets", "healthz",
                          "livez",
                          "readyz", "metrics", "docs", "docs.json", "index.html"})
_HEATMAP = re.compile(r"[a-z][a-z0-9_-]*(?:\.layer)?\.png")
#: HL7 v2 message types (ORU^R01, ADT^A08^ADT_A01) look like person names; an IPv4 address like a UID.
_HL7_TYPE = re.compile(r"[A-Z]{3}\^[A-Z]\d{2}(?:\^[A-Z0-9_]+)?[,.;:]?")
_IPV4 = re.compile(r"(?:25[0-5]|2[0-4]\d|1?\d?\d)(?:\.(?:25[0-5]|2[0-4]\d|1?\d?\d)){3}")


def _route(match: re.Match[str]) -> str:
    """``GET /v1/studies/1.2.3/heatmaps/nodule.png?x=1`` → ``GET /v1/studies/<id>/heatmaps/nodule.png?...``."""
    path, _, query = match.group(2).partition("?")
    parts = path.split("/")
    segments = [s if not s or s in _ROUTE_WORDS or (k and parts[k - 1] == "heatmaps" and _HEATMAP.fullmatch(s))
                else "<id>" for k, s in enumerate(parts)]
    return f"{match.group(1)} {'/'.join(segments)}{'?...' if query else ''}"


def _redact_text(text: str) -> str:
    text = _UID.sub(lambda m: m.group(0) if _IPV4.fullmatch(m.group(0)) else "<uid>", text)
    text = _PERSON_NAME.sub(lambda m: m.group(0) if _HL7_TYPE.fullmatch(m.group(0)) else "<name>", text)
    return _PATH.sub("<path>", text)


def redact(text: str) -> str:
    """Mask UIDs, person names and paths in ``text``. Request lines keep their route's shape, HL7
    message types and IPv4 addresses stay."""
    out, last = [], 0
    for match in _REQUEST.finditer(text):
        out += [_redact_text(text[last:match.start()]), _route(match)]
        last = match.end()
    return "".join(out) + _redact_text(text[last:])


#: In report free text: a name after a cue that introduces one, an identifier after its label, dates,
#: and tokens that mix letters and digits or run to five digits (record numbers).
_NAME_AFTER_CUE = re.compile(
    r"\b(patient'?s? name|name|mrs?|ms|miss|dr|(?:electronically )?signed by|seen by|dictated by|reported by|"
    r"read by|referred by|transcribed by|verified by)(\.?:?\s+)((?:(?:dr|mrs?|ms|prof)\.?\s+)?"
    r"[a-z][a-z'-]*(?:\s+[a-z][a-z'-]*){0,2})",
    re.IGNORECASE)
_ID_AFTER_CUE = re.compile(r"\b(mrn|id|accession(?: number)?|dob|date of birth|nhs(?: number)?)"
                           r"(\.?:?\s*#?\s*)([a-z0-9][a-z0-9/-]*)", re.IGNORECASE)
_DATE = re.compile(r"\b\d{1,4}[/.-]\d{1,2}[/.-]\d{1,4}\b")
_ID_TOKEN = re.compile(r"\b(?:(?=[a-z]*\d)(?=\d*[a-z])[a-z0-9]{5,}|\d{5,})\b", re.IGNORECASE)


def redact_report_text(text: str) -> str:
    """:func:`redact` for a sentence of a report, which may name the patient, the readers, record
    numbers and dates in any spelling: a name after a cue ("seen by", "Dr", "name:"), an identifier
    after its label (MRN, ID, accession, DOB), dates and letter-digit or long digit tokens are masked
    too. A heuristic: free text can name someone no pattern foresees."""
    text = _NAME_AFTER_CUE.sub(lambda m: f"{m.group(1)}{m.group(2)}<name>", text)
    text = _ID_AFTER_CUE.sub(lambda m: f"{m.group(1)}{m.group(2)}<id>", text)
    text = _DATE.sub("<date>", text)
    return redact(_ID_TOKEN.sub("<id>", text))


#: The DICOM libraries, whose warnings quote header values (a person name in any spelling, an ID).
_DICOM_LIBRARIES = ("pydicom", "highdicom", "pynetdicom")
_WARNING_SOURCE = re.compile(r"[/\\](" + "|".join(_DICOM_LIBRARIES) + r")[/\\]\S*?:\d+: (\w+):")


def _dicom_warning(message: str) -> str | None:
    """A captured warning raised inside a DICOM library, told by its library and category only: its
    text may quote a header value that no pattern recognises as a name (``JOHN SMITH``)."""
    found = _WARNING_SOURCE.search(message)
    if found is None:
        return None
    return f"a {found.group(2)} from {found.group(1)} (its text may quote header values: not logged)"


class PhiRedactingFilter(logging.Filter):
    """Rewrites every record's message with :func:`redact` (args are merged first)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            message = str(record.msg)
        if record.name == "py.warnings":
            message = _dicom_warning(message) or message
        record.msg = redact(message)
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            # Tracebacks carry paths and exception texts from libraries: keep the type only.
            exc = record.exc_info[1]
            record.msg = f"{record.msg} [{type(exc).__name__}]"
            record.exc_info = None
            record.exc_text = None
        return True


#: Loggers whose own filter rewrites the record's arguments first (it then redacts): the access log.
_REDACTED_BY_THEIR_FILTER = frozenset({"uvicorn.access"})
_installed = False


def install_redaction() -> None:
    """Redact every log record when it is made, whichever handler prints it: BentoML's, uvicorn's
    and any library's own handlers (on stdout or stderr) never see a UID, a name, a path or a
    traceback. Uncaught exceptions, in the main thread or any other, are logged by type only instead
    of printing their traceback. Idempotent; entry points call it through :func:`configure_logging`."""
    global _installed
    if _installed:
        return
    _installed = True
    make_record = logging.getLogRecordFactory()
    phi = PhiRedactingFilter()

    def redacted_record(*args: object, **kwargs: object) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        if record.name not in _REDACTED_BY_THEIR_FILTER:
            phi.filter(record)
        record.stack_info = None
        return record

    logging.setLogRecordFactory(redacted_record)

    def log_uncaught(kind: type[BaseException], value: BaseException, tb: object) -> None:
        logging.getLogger("secondreader").critical("uncaught %s (traceback not printed: it may hold "
                                                   "identifiers)", kind.__name__)

    def log_uncaught_in_thread(hook: threading.ExceptHookArgs) -> None:
        if hook.exc_type is SystemExit:
            return
        logging.getLogger("secondreader").error("uncaught %s in a thread (traceback not printed: it may hold "
                                                "identifiers)", hook.exc_type.__name__)

    sys.excepthook = log_uncaught
    threading.excepthook = log_uncaught_in_thread
    # handlers made before this (BentoML's, uvicorn's) get the filter too, for records made elsewhere
    for logger in [logging.getLogger(), *(v for v in logging.root.manager.loggerDict.values()
                                          if isinstance(v, logging.Logger))]:
        for handler in logger.handlers:
            if not any(isinstance(f, PhiRedactingFilter) for f in handler.filters):
                handler.addFilter(phi if logger.name not in _REDACTED_BY_THEIR_FILTER else _TracebackFilter())


class _TracebackFilter(logging.Filter):
    """Drops a record's traceback (the access log's own filter handles its text)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info:
            record.exc_info = None
            record.exc_text = None
        return True


def configure_logging(level: str = "INFO") -> None:
    """Log to stderr through the redacting filter (stdout is reserved for results)."""
    import pydicom  # noqa: F401 - pydicom sets its logger's level on import; ours must come after

    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "filters": {"phi": {"()": PhiRedactingFilter}},
            "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
            "handlers": {
                "stderr": {
                    "class": "logging.StreamHandler",
                    "stream": "ext://sys.stderr",
                    "formatter": "plain",
                    "filters": ["phi"],
                }
            },
            "root": {"level": level, "handlers": ["stderr"]},
            "loggers": {"pydicom": {"level": "CRITICAL"}, "highdicom": {"level": "WARNING"},
                        "pynetdicom": {"level": "WARNING"}},
        }
    )
    logging.captureWarnings(True)
    install_redaction()
    # The DICOM libraries' warnings quote header values (names, IDs). The read paths catch them, but
    # warnings.catch_warnings() swaps one process-global filter list, which the service's screening
    # threads race on; so they are also ignored process-wide, never printed.
    # highdicom's too: it warns about a PatientName it finds odd by quoting it, from the output
    # encoder's threads (a leak a new user saw once, under concurrent uploads).
    for library in _DICOM_LIBRARIES:
        warnings.filterwarnings("ignore", category=UserWarning, module=rf"{library}(\.|$)")
