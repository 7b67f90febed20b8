"""The HTTP access log without identifiers: study UIDs in request paths become pseudonymous study
keys (``logsafe.study_key``), other UIDs ``<uid>``, the query string is dropped, and health probes
are not logged.

uvicorn (inside BentoML's worker) writes one ``uvicorn.access`` record per request, with the raw
path among its arguments; :class:`AccessLogFilter` rewrites it on that logger, before any handler
(and before the redacting filter, which would only mask the UIDs) sees it::

    127.0.0.1:50912 - "GET /v1/studies/study:3f9c0a1be2d44c07 HTTP/1.1" 200
"""

from __future__ import annotations

import logging
import re

from ..logsafe import study_key

__all__ = ["AccessLogFilter", "install_access_log_filter", "pseudonymous_path"]

_PROBES = ("/healthz", "/livez", "/readyz", "/metrics")
_STUDY = re.compile(r"(/studies/)([^/?#]+)")
_UID = re.compile(r"(?<![0-9A-Za-z])[0-9]+(?:\.[0-9]+){2,}(?![0-9A-Za-z])")


def pseudonymous_path(path: str) -> str:
    """``path`` without its query, study UIDs as ``study:<key>`` and any other UID as ``<uid>``."""
    path = path.split("?", 1)[0].split("#", 1)[0]
    path = _STUDY.sub(lambda m: f"{m.group(1)}study:{study_key(m.group(2))}", path)
    return _UID.sub("<uid>", path)


class AccessLogFilter(logging.Filter):
    """On ``uvicorn.access``: pseudonymise the path argument; drop health probes."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            path = args[2]
            if path.split("?", 1)[0] in _PROBES:
                return False
            record.args = (*args[:2], pseudonymous_path(path), *args[3:])
        return True


def install_access_log_filter(logger_name: str = "uvicorn.access") -> None:
    """Add :class:`AccessLogFilter` to the access logger once (entry points call this)."""
    access = logging.getLogger(logger_name)
    if not any(isinstance(f, AccessLogFilter) for f in access.filters):
        access.addFilter(AccessLogFilter())
