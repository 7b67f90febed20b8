"""The DICOM receiver: a pynetdicom Storage SCP (C-STORE, C-ECHO), calling-AE allow-list.

The C-STORE handler writes the instance to the spool (fsync) and records it in the store through
``receive`` before it answers Success; a full disk or a store failure answers Out of Resources
(0xA700), never Success. It never runs inference: screening happens when the study is stable.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, VerificationPresentationContexts, _config, evt
from pynetdicom.transport import ThreadedAssociationServer

from ..errors import InfrastructureError
from .status import CANNOT_UNDERSTAND, OUT_OF_RESOURCES, SUCCESS

__all__ = ["Receiver", "start_receiver"]

logger = logging.getLogger(__name__)

#: ``receive(part10_bytes, dataset, calling_ae) -> bool`` (False: already had it, or not to screen).
Receive = Callable[[bytes, Dataset, str], bool]

_TRANSFER_SYNTAXES = [
    "1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.5",
]


def _handle_store(event: Any, receive: Receive) -> int:
    try:
        ds = event.dataset
        ds.StudyInstanceUID, ds.SOPInstanceUID  # noqa: B018 - both must be readable
        data = bytes(event.encoded_dataset())
    except (AttributeError, ValueError, TypeError, KeyError, EOFError):
        logger.warning("C-STORE refused: the dataset cannot be read")
        return CANNOT_UNDERSTAND
    try:
        receive(data, ds, str(event.assoc.requestor.ae_title))
    except (OSError, InfrastructureError) as exc:
        logger.error("C-STORE answered Out of Resources: %s", type(exc).__name__)
        return OUT_OF_RESOURCES
    return SUCCESS


class Receiver:
    """A running Storage SCP; ``stop()`` shuts it down."""

    def __init__(self, server: ThreadedAssociationServer, ae: AE) -> None:
        self.server = server
        self.ae = ae

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def stop(self) -> None:
        self.server.shutdown()


def start_receiver(host: str, port: int, ae_title: str, allowed_aes: Sequence[str], receive: Receive) -> Receiver:
    """Start the SCP in background threads (``port`` 0 picks a free one)."""
    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    ae = AE(ae_title=ae_title)
    allowed = [a for a in allowed_aes if a and a != "*"]
    if allowed:
        ae.require_calling_aet = allowed
    ae.maximum_associations = 16
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(str(context.abstract_syntax), _TRANSFER_SYNTAXES)
    for context in VerificationPresentationContexts:
        ae.add_supported_context(str(context.abstract_syntax))
    handlers: Any = [(evt.EVT_C_STORE, _handle_store, [receive])]
    server = ae.start_server((host, port), block=False, evt_handlers=handlers)
    assert server is not None
    logger.info("DICOM receiver %s listening on port %d", ae_title, server.server_address[1])
    return Receiver(server, ae)
