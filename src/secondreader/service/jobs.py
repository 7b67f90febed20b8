"""The job queue of one replica over the store's job table: claims with leases, renewed while the
work goes on; idle polling for queued jobs and for jobs whose worker died.

Why the job table and not a PostgreSQL task queue (procrastinate and the like): the embedded
single-machine setup runs on SQLite, which those do not support, and a job here is already a row
that the HTTP API reads (``GET /v1/jobs/{id}``). Claims are atomic on both backends (a conditional
UPDATE; ``FOR UPDATE SKIP LOCKED`` on PostgreSQL), so a job runs on one worker at a time.

How a job moves: it is queued (by an upload, or by a stable received study) and put on this
replica's local heap; a screening thread claims it (queued → running, with a lease) and runs it.
A heartbeat renews the leases of every job this replica holds, including those whose outputs are
still being written. Idle threads poll the store: a job queued for over ``grace_seconds`` by any
replica, or running with a lapsed lease (its replica was killed), is claimed and run here. The
replica that queued a job gets it first (``grace_seconds``), so an upload someone waits on runs
where the answer is awaited.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from ..store import JobRecord, Store
from . import metrics

__all__ = ["JobQueue"]

logger = logging.getLogger(__name__)


class JobQueue:
    """Runs claimed jobs on ``workers`` threads; ``run(job)`` does the work and, once the job is
    finished (done, failed, or left for a restart), calls :meth:`release`."""

    def __init__(self, store: Store, run: Callable[[JobRecord], None], *, worker_id: str, workers: int,
                 lease_seconds: float = 60.0, poll_seconds: float = 1.0, grace_seconds: float = 2.0) -> None:
        if lease_seconds <= 0 or poll_seconds <= 0:
            raise ValueError("lease_seconds and poll_seconds must be positive")
        self.store = store
        self.worker_id = worker_id
        self.workers = workers
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self.grace_seconds = grace_seconds
        self._run = run
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="screen")
        self._lock = threading.Lock()
        # Jobs waiting for a thread: (priority, arrival, job id, claimed already). Someone waiting
        # on an HTTP answer (priority 0) goes before received, resumed and polled jobs (1).
        self._pending: list[tuple[int, int, str, bool]] = []
        self._arrivals = itertools.count()
        self._active = 0
        self._held: set[str] = set()  # claimed here and not released: their leases are renewed
        self._stop = threading.Event()
        self._closing = threading.Event()
        self._heartbeat: threading.Thread | None = None

    # -- local queue ----------------------------------------------------------------------------
    def enqueue(self, job_id: str, *, urgent: bool = False, claimed: bool = False) -> None:
        """Run ``job_id`` here when a thread is free (it is claimed then, unless ``claimed``)."""
        with self._lock:
            if claimed:
                self._held.add(job_id)
            heapq.heappush(self._pending, (0 if urgent else 1, next(self._arrivals), job_id, claimed))
            metrics.queue_depth(len(self._pending))
        self._executor.submit(self._run_next)

    def _run_next(self) -> None:
        with self._lock:
            _priority, _arrival, job_id, claimed = heapq.heappop(self._pending)
            metrics.queue_depth(len(self._pending))
            self._active += 1
        try:
            if not claimed:
                if not self.store.claim_job(job_id, self.worker_id, lease_seconds=self.lease_seconds):
                    return  # another replica runs it, or it is finished
                with self._lock:
                    self._held.add(job_id)
            job = self.store.get_job(job_id)
            if job is None:
                self.release(job_id)
                return
            self._run(job)
        except Exception as exc:  # noqa: BLE001 - boundary: the store failed; the lease lapses and it is retried
            logger.error("job %s not started: %s", job_id[:8], type(exc).__name__)
            self.release(job_id)
        finally:
            with self._lock:
                self._active -= 1

    def release(self, job_id: str) -> None:
        """This replica no longer works on ``job_id`` (its lease is no longer renewed)."""
        with self._lock:
            self._held.discard(job_id)

    def holds(self, job_id: str) -> bool:
        with self._lock:
            return job_id in self._held

    def free_threads(self) -> int:
        with self._lock:
            return self.workers - self._active - len(self._pending)

    # -- heartbeat and polling ----------------------------------------------------------------------
    def start(self, on_tick: Callable[[], None] | None = None) -> None:
        """Renew leases and poll for work in a background thread; ``on_tick`` runs on each poll
        (the stable-study watcher)."""
        def loop() -> None:
            renew_every = self.lease_seconds / 3
            last_renewal = time.monotonic()
            while not self._stop.wait(self.poll_seconds):
                try:
                    if time.monotonic() - last_renewal >= renew_every:
                        last_renewal = time.monotonic()
                        self.renew()
                    if not self._closing.is_set():
                        if on_tick is not None:
                            on_tick()
                        self.poll()
                except Exception as exc:  # noqa: BLE001 - the loop must outlive a store outage
                    logger.error("job queue loop: %s", type(exc).__name__)

        self._heartbeat = threading.Thread(target=loop, name="job-queue", daemon=True)
        self._heartbeat.start()

    def renew(self) -> None:
        """Extend the leases of the jobs held here; forget those taken over elsewhere."""
        with self._lock:
            held = set(self._held)
        if not held:
            return
        kept = self.store.renew_jobs(self.worker_id, held, lease_seconds=self.lease_seconds)
        lost = held - kept
        with self._lock:
            lost &= self._held  # released meanwhile: not lost
            self._held -= lost
        for job_id in lost:
            logger.warning("job %s: lease lost (taken over or finished elsewhere)", job_id[:8])

    def poll(self) -> int:
        """Claim claimable jobs while threads are free; returns how many were claimed."""
        claimed = 0
        while self.free_threads() > 0 and not self._closing.is_set():
            job = self.store.claim_next_job(self.worker_id, lease_seconds=self.lease_seconds,
                                            grace_seconds=self.grace_seconds)
            if job is None:
                break
            logger.info("job %s claimed from the shared queue", job.id[:8])
            self.enqueue(job.id, claimed=True)
            claimed += 1
        return claimed

    def drain(self) -> None:
        """Stop polling and wait for the screening threads (leases are still renewed: call
        :meth:`stop` after whatever else holds jobs has finished)."""
        self._closing.set()
        self._executor.shutdown(wait=True, cancel_futures=False)

    def stop(self) -> None:
        """Stop the heartbeat (after :meth:`drain`)."""
        self._closing.set()
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=10)
