"""A real Storage SCP on loopback (pynetdicom, AE title ``PACS``) standing for the PACS that results
are sent to: it keeps every dataset it receives, in arrival order. Shared by the tests that check
what reached it."""

from __future__ import annotations

import threading
from collections import Counter

import pydicom
from pynetdicom import AE, AllStoragePresentationContexts, evt


class Pacs:
    def __init__(self, port: int = 0, *, max_associations: int = 10) -> None:
        self._received: list[pydicom.Dataset] = []
        self._lock = threading.Lock()
        ae = AE(ae_title="PACS")
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax)
        ae.maximum_associations = max_associations
        self.server = ae.start_server(("127.0.0.1", port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._store)])
        self.port = int(self.server.server_address[1])

    def _store(self, event) -> int:  # type: ignore[no-untyped-def]
        with self._lock:
            self._received.append(event.dataset)
        return 0x0000

    @property
    def received(self) -> list[pydicom.Dataset]:
        """Every copy received so far, in arrival order."""
        with self._lock:
            return list(self._received)

    def copies(self) -> list[tuple[str, str, str]]:
        """(Study Instance UID, SOP Class UID, SOP Instance UID) of every copy, in arrival order."""
        return [(str(ds.StudyInstanceUID), str(ds.SOPClassUID), str(ds.SOPInstanceUID)) for ds in self.received]

    def distinct(self) -> set[tuple[str, str, str]]:
        return set(self.copies())

    def stores(self) -> Counter[str]:
        """How many times each SOP Instance UID was stored."""
        return Counter(sop for _, _, sop in self.copies())

    def stop(self) -> None:
        self.server.shutdown()
