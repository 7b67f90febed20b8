"""Result delivery to the PACS from the store's outbox, by any replica.

Each row is claimed by one replica at a time (a claim with a lease, so a replica killed mid-send
leaves it to another once the lease lapses: at most a re-send of the same SOP Instance UID, which
the PACS takes as a replacement since output UIDs are deterministic). A failed send delays that
row only (exponential back-off, up to ``max_backoff_seconds``); other rows, for the same
destination too, go on. A row whose file is gone for good is dead-lettered with its reason: it is
counted in ``/metrics`` and listed at ``GET /v1/admin/outbox?status=dead``.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path

from ..errors import PacsError, StorageError
from ..store import Store
from ..store.store import OutboxItem
from . import metrics
from .storage import Storage

__all__ = ["OutboxDelivery"]

logger = logging.getLogger(__name__)


class OutboxDelivery:
    """Sends due outbox rows with ``calling_ae`` (C-STORE) or STOW-RS, claimed as ``worker``."""

    def __init__(self, store: Store, storage: Storage, *, worker: str, calling_ae: str = "SECONDREADER",
                 lease_seconds: float = 60.0, max_backoff_seconds: float = 60.0, batch: int = 16) -> None:
        self.store = store
        self.storage = storage
        self.worker = worker
        self.calling_ae = calling_ae
        self.lease_seconds = lease_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self.batch = batch

    def backoff(self, attempts: int) -> float:
        """Seconds before the next try of a row that failed ``attempts + 1`` times."""
        return float(min(self.max_backoff_seconds, 0.5 * 2 ** min(attempts, 16)))

    def deliver_due(self) -> int:
        """Claim and send due rows until none is due; returns how many were sent."""
        sent = 0
        while True:
            items = self.store.claim_outbox(self.worker, limit=self.batch, lease_seconds=self.lease_seconds)
            if not items:
                return sent
            claimed_at = time.monotonic()
            for index, item in enumerate(items):
                if time.monotonic() - claimed_at > self.lease_seconds / 2:
                    # a slow PACS: give the rest back before their lease lapses, rather than risk
                    # another replica sending them too
                    self.store.outbox_release([i.id for i in items[index:]], self.worker)
                    break
                sent += self._deliver(item)

    def _deliver(self, item: OutboxItem) -> int:
        from ..dicom.scu import send_files
        from ..dicom.stow import send_stow

        scratch = Path(tempfile.mkdtemp(prefix="secondreader-outbox-"))
        try:
            try:
                path = self.storage.fetch(item.path, scratch / "object.dcm") if item.path.startswith("s3://") \
                    else Path(item.path)
                if not path.is_file():
                    raise FileNotFoundError("no such file")
            except FileNotFoundError:
                reason = "the result object's file is gone (it cannot be sent)"
                self.store.outbox_dead(item.id, self.worker, reason=reason)
                metrics.outbox_dead_lettered()
                logger.error("outbox row %d dead-lettered: %s", item.id, reason)
                return 0
            try:
                if item.destination.startswith(("http://", "https://")):
                    send_stow([path], item.destination)
                else:
                    send_files([path], item.destination, calling_ae=self.calling_ae)
            except (PacsError, StorageError, OSError, ValueError) as exc:
                delay = self.backoff(item.attempts)
                self.store.outbox_failed(item.id, self.worker, error=str(exc)[:200], retry_in=delay)
                logger.warning("result delivery failed (attempt %d), retrying this object in %.1f s",
                               item.attempts + 1, delay)
                return 0
        except StorageError as exc:  # the storage is down: this row waits, like a PACS failure
            delay = self.backoff(item.attempts)
            self.store.outbox_failed(item.id, self.worker, error=str(exc)[:200], retry_in=delay)
            return 0
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        self.store.outbox_sent(item.id, self.worker)
        metrics.outbox_sent()
        return 1
