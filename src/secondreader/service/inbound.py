"""Inbound study assembly: instances received by DICOM (C-STORE) or STOW-RS, by any replica, into
one study per Study Instance UID, screened once it is stable.

An instance is written to the shared spool (durably) and recorded in the store before its sender
hears Success. Every replica writes a study's instances into the same spool folder and the same
``inbound_studies`` row, so a study whose instances a load balancer spread over several replicas
is screened once, with all of them. When no instance arrived for ``stable_seconds``, one replica
(whichever claims the row first) turns it into a queued job; an instance arriving later makes the
study receiving again, and it is screened again, with everything, after the job that holds it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pydicom.dataset import Dataset

from ..outputs.provenance import is_own_result
from ..store import JobRecord, Store
from .spool import Spool

__all__ = ["InboundAssembly"]

logger = logging.getLogger(__name__)


class InboundAssembly:
    """Receives instances into ``spool`` and ``store``; :meth:`queue_stable` makes jobs."""

    def __init__(self, store: Store, spool: Spool) -> None:
        self.store = store
        self.spool = spool

    def receive(self, data: bytes | Path, ds: Dataset) -> bool:
        """Keep one instance (``data`` its Part 10 bytes, or a file of the caller's holding them,
        moved into the spool; ``ds`` their parsed header). Returns
        False for an instance already received, and for secondreader's own results coming back.

        Raises
        ------
        StorageError, StoreError
            When it is not both durable and recorded: the sender must not hear Success.
        """
        if is_own_result(ds):
            return False
        study_uid, sop_uid = str(ds.StudyInstanceUID), str(ds.SOPInstanceUID)
        folder = self.spool.write_instance(study_uid, sop_uid, data)
        return self.store.record_inbound(study_uid, sop_uid, folder)

    def queue_stable(self, stable_seconds: float) -> list[JobRecord]:
        """Queue a job for each study stable for ``stable_seconds`` that no other replica took."""
        jobs = self.store.queue_stable_studies(stable_seconds)
        if jobs:
            logger.info("%d stable received stud%s queued", len(jobs), "y" if len(jobs) == 1 else "ies")
        return jobs
