"""Sending results to the PACS by C-STORE (``AE@host:port``)."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

import pydicom
from pynetdicom import AE, _config

from ..errors import PacsError

__all__ = ["parse_destination", "send_files"]

logger = logging.getLogger(__name__)

_DESTINATION = re.compile(r"^(?P<ae>[^@]{1,16})@(?P<host>[^:]+):(?P<port>\d{1,5})$")
_CONTEXTS = ("1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.88.34",
             "1.2.840.10008.5.1.4.1.1.11.1")


def parse_destination(value: str) -> tuple[str, str, int]:
    match = _DESTINATION.match(value.strip())
    if not match:
        raise ValueError("PACS destination must look like AE@host:port")
    return match["ae"], match["host"], int(match["port"])


def send_files(paths: Sequence[Path], destination: str, *, calling_ae: str = "SECONDREADER",
               timeout: float = 30.0) -> None:
    """C-STORE every file in one association. Raises ``PacsError`` when any is not stored."""
    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False
    called, host, port = parse_destination(destination)
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    for context in _CONTEXTS:
        ae.add_requested_context(context)
    assoc = ae.associate(host, port, ae_title=called)
    if not assoc.is_established:
        raise PacsError("the PACS refused or did not answer the association")
    try:
        for path in paths:
            status = assoc.send_c_store(pydicom.dcmread(path))
            code = getattr(status, "Status", None)
            if code is None or code not in (0x0000, 0xB000, 0xB007, 0xB006):
                raise PacsError(f"the PACS did not store a result (status {code})")
    finally:
        assoc.release()
