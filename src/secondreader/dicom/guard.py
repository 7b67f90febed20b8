"""Bounds on the DICOM receiver's transport, before pynetdicom sees a byte.

pynetdicom reads a whole PDU (its length field allows 4 GiB) before any handler runs, counts a TCP
connection as an association from the moment it is accepted, and waits ``acse_timeout`` (30 s) for
an A-ASSOCIATE-RQ. So, unauthenticated, a peer could fill the memory with one announced PDU, or hold
every association slot with idle connections. This module closes those doors at the transport:

* **PDU length.** :class:`GuardedSocket` reads each PDU's 6-byte header and refuses (closes the
  connection) a PDU longer than its type allows: an A-ASSOCIATE-RQ at most :data:`MAX_ASSOCIATE_BYTES`,
  a P-DATA-TF at most the maximum PDU length this receiver announced (PS3.8 9.3.1: the peer may not
  exceed it), release and abort PDUs a few bytes. The refused PDU's body is never read.
* **Idle connections.** :class:`GuardedHandler` waits at most ``idle_seconds`` for the first byte before
  it creates the association (until then the connection holds no association slot), and the
  A-ASSOCIATE-RQ must then arrive whole within ``idle_seconds`` more: a peer that is not authenticated
  (the calling-AE allow-list answers the request) is closed within seconds.
* **Per address.** :class:`GuardedServer` accepts at most ``max_per_address`` connections from one
  peer address at a time, pending or associated; more are closed at once.

Refusals are logged with the rule, never with a peer's data.
"""

from __future__ import annotations

import logging
import select
import ssl
import struct
import threading
import time
from collections import Counter
from copy import deepcopy
from typing import Any

from pynetdicom import evt
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

__all__ = ["MAX_ASSOCIATE_BYTES", "GuardedHandler", "GuardedServer", "GuardedSocket", "pdu_limit"]

logger = logging.getLogger(__name__)

MAX_ASSOCIATE_BYTES = 1024 * 1024  # 128 presentation contexts with 20 transfer syntaxes each fit in ~80 KiB
_SMALL_PDU_BYTES = 64  # A-RELEASE-RQ/RP and A-ABORT have a 4-byte variable field
_PDATA_SLACK = 64  # a sender that counts the PDU header into the maximum length is still served


def pdu_limit(pdu_type: int, max_pdu: int) -> int:
    """The longest PDU (length field, bytes after the 6-byte header) accepted of ``pdu_type``;
    ``max_pdu`` is this receiver's announced maximum PDU length (0: unlimited, then the associate cap)."""
    if pdu_type == 0x04:
        return (max_pdu or MAX_ASSOCIATE_BYTES) + _PDATA_SLACK
    if pdu_type in (0x01, 0x02, 0x03):
        return MAX_ASSOCIATE_BYTES
    return _SMALL_PDU_BYTES


class GuardedSocket(AssociationSocket):
    """An acceptor's AssociationSocket that refuses an over-long PDU when its header arrives, and
    bounds the time the first PDU (the A-ASSOCIATE-RQ) may take to arrive whole."""

    def __init__(self, assoc: Any, client_socket: Any, *, max_pdu: int, first_pdu_deadline: float) -> None:
        super().__init__(assoc, client_socket=client_socket)
        self._max_pdu = max_pdu
        self._at_header = True
        self._deadline: float | None = first_pdu_deadline  # monotonic; None once the first PDU is in
        self._timeout = client_socket.gettimeout()
        self._pdus = 0

    def recv(self, nr_bytes: int) -> bytearray:
        if self._deadline is not None and self.socket is not None:
            left = self._deadline - time.monotonic()
            if left <= 0:
                logger.warning("DICOM connection closed: the association request did not arrive in time")
                self._close_now()
                return bytearray()
            self.socket.settimeout(left)
        if not self._at_header:
            data = super().recv(nr_bytes)
            self._at_header = True
            self._pdus += 1
            if self._deadline is not None:
                self._deadline = None
                if self.socket is not None:
                    self.socket.settimeout(self._timeout)
            return data
        data = super().recv(nr_bytes)
        if nr_bytes != 6 or len(data) != 6:
            return data
        pdu_type, _, length = struct.unpack(">BBL", bytes(data))
        if self._pdus == 0 and pdu_type != 0x01:
            logger.warning("DICOM connection closed: its first PDU is not an association request")
            self._close_now()
            return bytearray()  # pynetdicom reads it as a closed connection
        if length > pdu_limit(pdu_type, self._max_pdu):
            logger.warning("DICOM connection closed: a PDU of type 0x%02X announced %d bytes, over the %d "
                           "allowed", pdu_type, length, pdu_limit(pdu_type, self._max_pdu))
            self._close_now()
            return bytearray()
        self._at_header = False
        return data

    def _close_now(self) -> None:
        sock = self.socket
        if sock is not None:
            try:
                sock.shutdown(2)  # SHUT_RDWR: the peer's sends fail at once; nothing more is read
            except OSError:
                pass


class GuardedHandler(RequestHandler):
    """Waits for the peer's first byte before creating the association; uses :class:`GuardedSocket`."""

    server: GuardedServer

    def handle(self) -> None:
        sock = self.request
        idle = self.server.idle_seconds
        try:
            pending = isinstance(sock, ssl.SSLSocket) and sock.pending() > 0
            if not pending:
                readable, _, _ = select.select([sock], [], [], idle)
                if not readable:
                    logger.info("DICOM connection closed: nothing sent within %g s", idle)
                    self.server.shutdown_request(sock)
                    return
        except (OSError, ValueError):
            self.server.shutdown_request(sock)
            return
        self._first_pdu_deadline = time.monotonic() + idle
        assoc = self._create_association()
        evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
        assoc.start()
        assoc.join()  # this thread, and the address's count, last as long as the association

    def _create_association(self) -> Any:
        """pynetdicom's ``RequestHandler._create_association`` (3.0), with a :class:`GuardedSocket`
        (an AssociationSocket queues its transport-connected event when made: it is made once)."""
        from datetime import datetime

        from pynetdicom._globals import MODE_ACCEPTOR
        from pynetdicom.association import Association

        assoc = Association(self.ae, MODE_ACCEPTOR)
        assoc._server = self.server
        assoc.name = f"AcceptorThread@{datetime.now():%Y%m%d%H%M%S}"
        assoc.set_socket(GuardedSocket(assoc, client_socket=self.request,
                                       max_pdu=int(self.ae.maximum_pdu_size or 0),
                                       first_pdu_deadline=self._first_pdu_deadline))
        assoc.acceptor.maximum_length = self.ae.maximum_pdu_size
        assoc.acceptor.ae_title = self.server.ae_title
        assoc.acceptor.address_info = self.local
        assoc.acceptor.implementation_class_uid = self.ae.implementation_class_uid
        assoc.acceptor.implementation_version_name = self.ae.implementation_version_name
        assoc.acceptor.supported_contexts = deepcopy(self.server.contexts)
        assoc.requestor.address_info = self.remote
        handlers: dict[Any, Any] = self.server._handlers
        for event, bound in handlers.items():
            if event.is_intervention and bound:
                assoc.bind(event, *bound)
            elif isinstance(event, evt.NotificationEvent):
                for handler, args in bound:
                    assoc.bind(event, handler, args)
        return assoc


class GuardedServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with a per-address connection cap and :class:`GuardedHandler`."""

    def __init__(self, *args: Any, max_per_address: int, idle_seconds: float, **kwargs: Any) -> None:
        if max_per_address < 1:
            raise ValueError(f"max_per_address must be at least 1, not {max_per_address}")
        if idle_seconds <= 0:
            raise ValueError(f"idle_seconds must be positive, not {idle_seconds}")
        self.max_per_address = max_per_address
        self.idle_seconds = idle_seconds
        self._per_address: Counter[str] = Counter()
        self._count_lock = threading.Lock()
        kwargs.setdefault("request_handler", GuardedHandler)
        super().__init__(*args, **kwargs)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        peer = str(client_address[0])
        with self._count_lock:
            if self._per_address[peer] >= self.max_per_address:
                refused = True
            else:
                self._per_address[peer] += 1
                refused = False
        if refused:
            logger.warning("DICOM connection refused: already %d connections from this address",
                           self.max_per_address)
        return not refused

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._count_lock:
                peer = str(client_address[0])
                self._per_address[peer] -= 1
                if self._per_address[peer] <= 0:
                    del self._per_address[peer]

    def connections_from(self, address: str) -> int:
        with self._count_lock:
            return self._per_address.get(address, 0)
