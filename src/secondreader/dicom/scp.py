"""The DICOM receiver: a pynetdicom Storage SCP (C-STORE, C-ECHO), calling-AE allow-list.

The C-STORE handler writes the instance to the spool (fsync) and records it in the store through
``receive`` before it answers Success; a full disk or a store failure answers Out of Resources
(0xA700), never Success. A data set that cannot be read answers Cannot Understand (0xC210) and its
bytes go to the quarantine with the reason. It never runs inference: screening happens when the
study is stable.

Optional TLS (DICOM PS3.15 B.1, "The Basic TLS Secure Transport Connection Profile"): pass an
``ssl.SSLContext`` built by :func:`server_ssl_context`; with a CA, callers must present a
certificate that CA signed. ``max_associations`` bounds the concurrent associations (more are
rejected, transiently, by pynetdicom: "local limit exceeded").

``max_dataset_bytes`` bounds one C-STORE's data set (and command set) as it arrives. DICOM
announces no size before the data, and pynetdicom gathers a message's fragments in memory until the
last one, so a sender of an oversized instance, or of fragments that never end, would otherwise
fill the memory before any handler runs. The receiver counts the bytes PDU by PDU (pynetdicom reads
each PDU whole first, so this bounds the fragments, not one PDU's announced length) and, past the
limit, aborts the association (A-ABORT): the fragments still in flight are read and dropped (the
upper layer ignores them while the connection closes), the sender keeps its instance and reports
the failure, and the refusal is logged without any patient data. Other associations go on.
"""

from __future__ import annotations

import logging
import ssl
import threading
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, VerificationPresentationContexts, _config, evt
from pynetdicom.transport import ThreadedAssociationServer

from ..errors import InfrastructureError
from ..quarantine import Quarantine
from .guard import GuardedServer
from .status import CANNOT_UNDERSTAND, OUT_OF_RESOURCES, SUCCESS

__all__ = ["Receiver", "server_ssl_context", "start_receiver"]

logger = logging.getLogger(__name__)

#: ``receive(part10_bytes, dataset, calling_ae) -> bool`` (False: already had it, or not to screen).
Receive = Callable[[bytes, Dataset, str], bool]

_TRANSFER_SYNTAXES = [
    "1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.5",
]


def _handle_store(event: Any, receive: Receive, quarantine: Quarantine | None = None,
                  guard: _DatasetSizeGuard | None = None) -> int:
    if guard is not None and guard.refused(event.assoc):
        return OUT_OF_RESOURCES  # over the size limit: its association is being aborted, nothing is kept
    try:
        ds = event.dataset
        ds.StudyInstanceUID, ds.SOPInstanceUID  # noqa: B018 - both must be readable
        data = bytes(event.encoded_dataset())
    except (AttributeError, ValueError, TypeError, KeyError, EOFError, OverflowError, NotImplementedError,
            RecursionError) as exc:
        reason = ("the C-STORE data set lacks its Study or SOP Instance UID" if isinstance(exc, AttributeError)
                  else "the C-STORE data set cannot be decoded")
        logger.warning("C-STORE refused: %s", reason)
        if quarantine is not None:
            try:
                raw = event.request.DataSet.getvalue()
            except AttributeError:
                raw = b""
            quarantine.keep(raw, reason=reason, channel="dicom", kind="dataset")
        return CANNOT_UNDERSTAND
    try:
        receive(data, ds, str(event.assoc.requestor.ae_title))
    except (OSError, InfrastructureError) as exc:
        logger.error("C-STORE answered Out of Resources: %s", type(exc).__name__)
        return OUT_OF_RESOURCES
    return SUCCESS


class _DatasetSizeGuard:
    """``EVT_PDU_RECV`` handler: aborts an association whose current command set or data set passes
    ``limit`` bytes, counted over its P-DATA fragments (each kind's last fragment starts a new
    count). An association it aborted is remembered (:meth:`refused`): a data set whose last
    fragment crossed the limit has reached pynetdicom whole, and the C-STORE handler must not
    store it."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        # per association: bytes of the current command set and data set; None once aborted
        self._sizes: weakref.WeakKeyDictionary[Any, tuple[int, int] | None] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def refused(self, assoc: Any) -> bool:
        with self._lock:
            return assoc in self._sizes and self._sizes[assoc] is None

    def __call__(self, event: Any) -> None:
        items = getattr(event.pdu, "presentation_data_value_items", None)
        if not items:
            return
        assoc = event.assoc
        with self._lock:
            sizes = self._sizes.get(assoc, (0, 0))
            if sizes is None:  # aborted already: what is still in flight is dropped with the association
                return
            command, dataset = sizes
            for item in items:
                value = item.presentation_data_value or b"\x00"
                header, length = value[0], len(value) - 1
                if header & 0x01:
                    command += length
                else:
                    dataset += length
                if max(command, dataset) > self.limit:
                    self._sizes[assoc] = None
                    break
                if header & 0x02:  # the last fragment of a command set or a data set
                    command, dataset = (0, dataset) if header & 0x01 else (0, 0)
            else:
                self._sizes[assoc] = (command, dataset)
                return
        logger.warning("C-STORE refused: a data set passed the %s MiB limit; association aborted",
                       f"{self.limit / 1024**2:g}")
        assoc.abort(block=False)


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


def server_ssl_context(cert: Path, key: Path, ca: Path | None = None) -> ssl.SSLContext:
    """A TLS server context (TLS 1.2 or newer) from a PEM certificate and key; with ``ca``, callers
    must present a certificate signed by it (mutual TLS).

    Raises
    ------
    ValueError
        When a file is missing or the certificate and key do not belong together.
    """
    for name, path in (("certificate", cert), ("key", key), ("CA", ca)):
        if path is not None and not Path(path).is_file():
            raise ValueError(f"DICOM TLS {name} file does not exist")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile=str(cert), keyfile=str(key))
        if ca is not None:
            context.load_verify_locations(cafile=str(ca))
            context.verify_mode = ssl.CERT_REQUIRED
    except ssl.SSLError:
        raise ValueError("DICOM TLS certificate, key or CA cannot be loaded (PEM expected, key must match)") from None
    return context


def start_receiver(host: str, port: int, ae_title: str, allowed_aes: Sequence[str], receive: Receive, *,
                   max_associations: int = 16, ssl_context: ssl.SSLContext | None = None,
                   quarantine: Quarantine | None = None, max_dataset_bytes: int | None = None,
                   max_per_address: int = 8, idle_seconds: float = 5.0) -> Receiver:
    """Start the SCP in background threads (``port`` 0 picks a free one); a C-STORE data set over
    ``max_dataset_bytes`` aborts its association (see the module's notes). The transport is bounded
    by :mod:`.guard`: PDU lengths checked at their header, at most ``max_per_address`` connections
    per peer address, ``idle_seconds`` for the first byte and again for the association request."""
    if max_associations < 1:
        raise ValueError(f"max_associations must be at least 1, not {max_associations}")
    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    ae = AE(ae_title=ae_title)
    allowed = [a for a in allowed_aes if a and a != "*"]
    if allowed:
        ae.require_calling_aet = allowed
    ae.maximum_associations = max_associations
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(str(context.abstract_syntax), _TRANSFER_SYNTAXES)
    for context in VerificationPresentationContexts:
        ae.add_supported_context(str(context.abstract_syntax))
    guard = None
    if max_dataset_bytes is not None:
        if max_dataset_bytes < 1:
            raise ValueError(f"max_dataset_bytes must be at least 1, not {max_dataset_bytes}")
        guard = _DatasetSizeGuard(max_dataset_bytes)
    handlers: Any = [(evt.EVT_C_STORE, _handle_store, [receive, quarantine, guard])]
    if guard is not None:
        handlers.append((evt.EVT_PDU_RECV, guard))
    server = ae.make_server((host, port), evt_handlers=handlers, ssl_context=ssl_context, server_class=GuardedServer,
                            max_per_address=max_per_address, idle_seconds=idle_seconds)
    ae._servers.append(server)  # as AE.start_server does: the server's shutdown() takes it out again
    threading.Thread(target=server.serve_forever, name="dicom-receiver", daemon=True).start()
    logger.info("DICOM receiver %s listening on port %d%s (at most %d associations)", ae_title,
                server.server_address[1], " with TLS" if ssl_context is not None else "", max_associations)
    return Receiver(server, ae)
