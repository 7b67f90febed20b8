"""Sending results to a DICOMweb destination by STOW-RS (dicomweb-client)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient
from dicomweb_client.session_utils import create_session

from ..errors import PacsError

__all__ = ["send_stow"]


def send_stow(paths: Sequence[Path], base_url: str, *, timeout: float = 60.0) -> None:
    """STOW-RS every file to ``base_url`` (the DICOMweb root). Raises ``PacsError`` on failure."""
    session = create_session()
    session.request = _with_timeout(session.request, timeout)  # type: ignore[method-assign, no-untyped-call]
    try:
        answer = DICOMwebClient(url=base_url.rstrip("/"), session=session).store_instances(
            [pydicom.dcmread(p) for p in paths])
    except (requests.RequestException, OSError, ValueError) as exc:
        raise PacsError(f"the DICOMweb destination did not store the results ({type(exc).__name__})") from None
    finally:
        session.close()  # its pooled sockets; a long-running service sends a study at a time
    if "FailedSOPSequence" in answer and len(answer.FailedSOPSequence) > 0:
        raise PacsError("the DICOMweb destination refused some results")


def _with_timeout(request, timeout):  # type: ignore[no-untyped-def]
    def call(*args, **kwargs):  # type: ignore[no-untyped-def]
        kwargs.setdefault("timeout", timeout)
        return request(*args, **kwargs)

    return call
