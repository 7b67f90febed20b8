"""``ScreeningService``: uploads and received studies → the shared spool → jobs in the store → the
pipeline → results in the store → outputs in the storage → the PACS.

Framework-free (the HTTP layer and the BentoML service wrap it), and one of several replicas that
may share one store and one storage. It composes the pieces, each in its own module:

- :mod:`.storage` and :mod:`.spool`: uploads and received instances are written durably (fsync'd
  files, or S3 objects) and their job or instance recorded in the store *before* the caller hears
  back, so nothing accepted is lost to a restart or to the loss of a replica;
- :mod:`.jobs`: jobs claimed with leases, renewed while they run; any replica takes over a job whose
  lease lapsed, and idle replicas poll for queued work;
- :mod:`.inbound`: received instances assembled into one study per UID, whichever replica got them,
  and screened once stable;
- :mod:`.outbox`: outputs delivered to the PACS, one claimed row at a time, with per-row back-off
  and a dead letter.

Output encoding is off the request path: a job's results are recorded and answered as soon as its
studies are screened (``artifacts.status`` "pending"); encoder threads then write the overlays and
DICOM outputs, store them, queue them for the PACS, and only then mark the job done. A job killed
in between is unfinished, so whoever takes it over screens it again and writes them.
"""

from __future__ import annotations

import logging
import shutil
import socket
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from ..dicom.io import remove_stale_scratch, sniff_non_dicom
from ..errors import InvalidInputError, StorageError
from ..logsafe import study_key
from ..model.modes import ModelMode
from ..model.predictor import Predictor
from ..outputs.provenance import SeriesSettings
from ..pipeline import ScreeningOptions, screen_paths
from ..quarantine import Quarantine
from ..results import DeferredOutputs, WrittenOutputs
from ..schema import JobView, served
from ..store import JobRecord, Store
from ..store.models import Instance
from ..worklist import RoutingRules, Worklist
from . import metrics
from .inbound import InboundAssembly
from .jobs import JobQueue
from .outbox import OutboxDelivery
from .spool import Spool, Upload, has_dicom, safe_name
from .storage import LocalStorage, Storage

__all__ = ["Leases", "ScreeningService", "Upload", "has_dicom", "safe_name"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Leases:
    """How replicas share work: a claim holds ``lease_seconds`` unless renewed; idle replicas poll
    every ``poll_seconds``; a queued job is left to the replica that queued it for
    ``grace_seconds`` first."""

    lease_seconds: float = 60.0
    poll_seconds: float = 1.0
    grace_seconds: float = 2.0

    def __post_init__(self) -> None:
        if self.lease_seconds <= 0 or self.poll_seconds <= 0 or self.grace_seconds < 0:
            raise ValueError("lease_seconds and poll_seconds must be positive, grace_seconds not negative")
        if self.poll_seconds * 3 > self.lease_seconds:
            raise ValueError("lease_seconds must be at least three poll_seconds (leases are renewed while polling)")


class ScreeningService:
    """Jobs over the store, screened by a thread pool through the one pipeline."""

    def __init__(self, store: Store, predictors: Sequence[Predictor], *, home: Path, max_image_pixels: int,
                 workers: int = 4, pacs_destination: str | None = None, calling_ae: str = "SECONDREADER",
                 series: SeriesSettings | None = None, routing: RoutingRules | None = None,
                 worker_id: str | None = None, encode_workers: int | None = None,
                 modes: Mapping[str, ModelMode] | None = None, storage: Storage | None = None,
                 leases: Leases | None = None) -> None:
        self.store = store
        self.worklist = Worklist(store, routing)
        # who claims jobs and outbox rows in a shared store (stable across restarts of this process,
        # so a job it was running when killed is taken again at once by its restart; any other
        # replica takes it once its lease lapsed)
        self.worker_id = (worker_id or socket.gethostname())[:64]
        self.predictors = list(predictors)
        self.home = home
        self.storage = storage if storage is not None else LocalStorage(home)
        self.spool = Spool(self.storage, home / "work")
        # Outputs are written here; with shared storage this is a local copy, stored once written.
        self.artifacts = (self.storage.root if isinstance(self.storage, LocalStorage) else home) / "artifacts"
        self.artifacts.mkdir(parents=True, exist_ok=True)
        self.quarantine = Quarantine(home / "quarantine")
        self.inbound = InboundAssembly(store, self.spool)
        self.leases = leases or Leases()
        self.options = ScreeningOptions(predictors=self.predictors, max_pixels=max_image_pixels,
                                        out_dir=self.artifacts, series=series or SeriesSettings(),
                                        quarantine=self.quarantine, quarantine_channel="job",
                                        defer_outputs=True, modes=dict(modes or {}))
        scratch = self.options.scratch()
        stale = remove_stale_scratch(scratch) if scratch is not None else 0
        if stale:
            logger.warning("removed %d unpacked zip member(s) left in scratch by a process that was killed", stale)
        self.jobs = JobQueue(store, self._run_job, worker_id=self.worker_id, workers=workers,
                             lease_seconds=self.leases.lease_seconds, poll_seconds=self.leases.poll_seconds,
                             grace_seconds=self.leases.grace_seconds)
        # Overlays and DICOM outputs are encoded here, after the job's answer. A screened job holds
        # its decoded images and heatmaps (about 50 MB for a 2k CR with two models) until its outputs
        # are written, so no job waits for a free encoder: a screening worker that would queue one
        # blocks instead (back-pressure), and at most ``workers + encoders`` studies are in memory.
        encoders = max(1, encode_workers if encode_workers is not None else workers)
        self._encoder = ThreadPoolExecutor(max_workers=encoders, thread_name_prefix="encode")
        self._encode_slots = threading.BoundedSemaphore(encoders)
        self._answers: dict[str, tuple[list[str], list[dict[str, Any]]]] = {}  # screened, outputs pending
        self._outputs_pending: dict[str, threading.Event] = {}  # study UID -> set when its outputs are written
        self._events: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self.pacs_destination = pacs_destination
        self.calling_ae = calling_ae
        self.outbox = OutboxDelivery(store, self.storage, worker=self.worker_id, calling_ae=calling_ae,
                                     lease_seconds=self.leases.lease_seconds)
        self._stop = threading.Event()
        self._delivery: threading.Thread | None = None
        self.ready = True

    # -- submitting ---------------------------------------------------------------------------
    def submit(self, uploads: Sequence[Upload]) -> str:
        """Spool ``uploads`` (durably), record the job, queue it; returns the job id.

        Raises
        ------
        InvalidInputError
            When nothing in the upload is DICOM (nothing is queued then).
        StorageError, StoreError
            When the files cannot be kept or the job cannot be recorded (nothing is kept then).
        """
        if not uploads:
            raise InvalidInputError("the upload holds no files")
        if not any(has_dicom(u) for u in uploads):
            heads = [u.head(1024) for u in uploads]
            kinds = sorted({(sniff_non_dicom(head) or "a file of another kind") if head else "an empty file"
                            for head in heads})
            reason = ("nothing in the upload is DICOM (no Part 10 file, no zip holding one): "
                      + ", ".join(kinds))
            for upload in uploads:
                self.quarantine.keep(upload.content, reason=reason, channel="http", kind="upload",
                                     move=upload.path is not None)
            raise InvalidInputError(reason)
        folder = self.spool.write_upload(uploads)
        try:
            job_id = self.store.create_job(folder)
        except Exception:
            self.spool.remove(folder)
            raise
        with self._lock:
            self._events.setdefault(job_id, threading.Event())
        self.jobs.enqueue(job_id, urgent=True)
        return job_id

    def resume_unfinished(self) -> int:
        """Queue the jobs a previous run accepted but did not finish; returns how many. Those
        another live replica holds are left to it (their claims fail here)."""
        jobs = self.store.unfinished_jobs()
        for job in jobs:
            self.jobs.enqueue(job.id)  # behind uploads someone is waiting on now
        if jobs:
            logger.info("resumed %d unfinished job(s)", len(jobs))
        return len(jobs)

    # -- running ------------------------------------------------------------------------------
    def _run_job(self, job: JobRecord) -> None:
        """A screening thread, with ``job`` claimed: screen it, record its results, hand its
        outputs to an encoder."""
        job_id = job.id
        encoding = False
        deferred: list[tuple[str, DeferredOutputs]] = []
        try:
            local = self.spool.stage(job_id, job.spool_dir)
            if not local.exists() or not any(p.is_file() for p in local.rglob("*")):
                # never "done with no study": what was accepted must not vanish unnoticed
                raise FileNotFoundError("the job's spooled files are gone")
            study_uids: list[str] = []
            unreadable: list[dict[str, Any]] = []
            for result in screen_paths([local], self.options):
                data = result.to_json()
                metrics.study_done(data)
                if result.study_instance_uid is None:
                    unreadable.append(data)
                    continue
                uid = result.study_instance_uid
                if result.outputs is not None:
                    with self._lock:
                        self._outputs_pending.setdefault(uid, threading.Event())
                        metrics.outputs_pending(len(self._outputs_pending))
                    deferred.append((uid, result.outputs))
                files = {sop: (self.spool.local_ref(job_id, job.spool_dir, path), member)
                         for sop, (path, member) in (result.files or {}).items()}
                self.worklist.record_result(result, files=files, job_id=job_id)
                study_uids.append(uid)
                logger.info("job %s: study %s %s", job_id[:8], study_key(uid), result.status.value)
            if deferred:
                # answer whoever waits now (here, and on every replica through the store); the job is
                # done once its outputs are written
                self.store.answer_job(job_id, self.worker_id, study_uids=study_uids, unreadable=unreadable)
                with self._lock:
                    self._answers[job_id] = (study_uids, unreadable)
                self._answered(job_id, keep=True)
                self._encode_slots.acquire()  # back-pressure: this worker waits while the encoders are behind
                self._encoder.submit(self._write_outputs, job_id, deferred, study_uids, unreadable)
                encoding = True
            else:
                self._finish(job_id, "done", study_uids=study_uids, unreadable=unreadable)
        except FileNotFoundError as exc:
            self._job_failed(job_id, exc, reason="its files are gone from the spool")
        except StorageError as exc:  # the storage is down: leave the job to a retry (its lease lapses)
            logger.error("job %s: storage unavailable (%s); it will be retried", job_id[:8], type(exc).__name__)
        except Exception as exc:  # noqa: BLE001 - boundary: the job fails, the service lives
            self._job_failed(job_id, exc)
        finally:
            if not encoding:  # nobody will write these: heatmap requests must not wait for them
                self._outputs_written(uid for uid, _ in deferred)
                self._release(job_id)
            self._answered(job_id, keep=encoding)

    def _write_outputs(self, job_id: str, deferred: list[tuple[str, DeferredOutputs]], study_uids: list[str],
                       unreadable: list[dict[str, Any]]) -> None:
        """Encoder thread: write each study's outputs, store them, record them, queue the DICOM
        ones for the PACS, then mark the job done."""
        try:
            for uid, outputs in deferred:
                try:
                    written = outputs.write()
                    metrics.stage_time("encode", written.encode_ms / 1000.0)
                    dicom_refs = self._store_outputs(written)
                    self.worklist.record_artifacts(uid, written.artifacts(), encode_ms=written.encode_ms)
                    if self.pacs_destination and dicom_refs:  # results reach the PACS once stored
                        self.store.enqueue_outbox(uid, dicom_refs, self.pacs_destination)
                    if self.storage.shared:  # the bucket holds them now; this pod's disk need not
                        shutil.rmtree(self.artifacts / uid, ignore_errors=True)
                finally:
                    self._outputs_written([uid])
            self._finish(job_id, "done", study_uids=study_uids, unreadable=unreadable)
        except Exception as exc:  # noqa: BLE001 - boundary: the job stays unfinished (taken over or resumed)
            logger.error("job %s: outputs not recorded: %s", job_id[:8], type(exc).__name__)
        finally:
            with self._lock:
                self._answers.pop(job_id, None)
            self._encode_slots.release()
            self._release(job_id)

    def _store_outputs(self, written: WrittenOutputs) -> list[str]:
        """Put the written outputs in the storage (shared storage only; a local one holds them
        already); returns the refs of the DICOM ones."""
        if not self.storage.shared:
            return [str(self.artifacts / p) for p in written.dicom]
        for relative in written.heatmaps:
            self.storage.put_file(f"artifacts/{relative}", self.artifacts / relative)
            layer = (self.artifacts / relative).with_suffix(".layer.png")
            if layer.is_file():
                self.storage.put_file(f"artifacts/{Path(relative).with_suffix('.layer.png').as_posix()}", layer)
        return [self.storage.put_file(f"artifacts/{p}", self.artifacts / p) for p in written.dicom]

    def _finish(self, job_id: str, status: str, **fields: Any) -> None:
        if not self.store.set_job(job_id, status, worker=self.worker_id, **fields):
            logger.warning("job %s: finished here after its lease was taken over; not recorded twice", job_id[:8])

    def _release(self, job_id: str) -> None:
        self.jobs.release(job_id)
        self.spool.unstage(job_id)

    def _outputs_written(self, study_uids: Iterable[str]) -> None:
        """Wake heatmap requests waiting on these studies' outputs."""
        with self._lock:
            events = [self._outputs_pending.pop(uid, None) for uid in study_uids]
            metrics.outputs_pending(len(self._outputs_pending))
        for event in events:
            if event is not None:
                event.set()

    def _job_failed(self, job_id: str, exc: Exception, *, reason: str | None = None) -> None:
        logger.error("job %s failed: %s", job_id[:8], reason or type(exc).__name__)
        try:
            self._finish(job_id, "failed", error=reason or f"internal error ({type(exc).__name__})")
        except Exception:  # noqa: BLE001 - the store itself is down; the job stays queued/running
            logger.error("job %s: could not record the failure", job_id[:8])

    def _answered(self, job_id: str, *, keep: bool) -> None:
        """Wake whoever waits on ``job_id`` (its answer is in the store, or in ``_answers`` while
        its outputs are written when ``keep``)."""
        with self._lock:
            event = self._events.pop(job_id, None)  # waiters hold their own reference
            if not keep:
                self._answers.pop(job_id, None)
        if event is not None:
            event.set()

    # -- reading ------------------------------------------------------------------------------
    def wait(self, job_id: str, timeout: float, *, poll: float = 0.5) -> JobRecord | None:
        """The job, after waiting up to ``timeout`` seconds for it to be answered (here, or by
        another replica that took it: the store is polled every ``poll`` seconds)."""
        deadline = time.monotonic() + max(0.0, timeout)
        with self._lock:
            event = self._events.get(job_id)
        while True:
            remaining = deadline - time.monotonic()
            if event is not None:
                if event.wait(timeout=max(0.0, min(remaining, poll))):
                    return self.job(job_id)
            elif remaining > 0:
                time.sleep(min(remaining, poll))
            record = self.job(job_id)
            if record is None or record.status in ("done", "failed"):
                with self._lock:  # answered by another replica: this one's event is never set
                    self._events.pop(job_id, None)
                return record
            if deadline - time.monotonic() <= 0:
                return record

    def job(self, job_id: str) -> JobRecord | None:
        """The job as a client sees it: done as soon as its results are recorded, although its
        overlays and DICOM outputs may still be being written (their ``artifacts.status`` says)."""
        with self._lock:
            answer = self._answers.get(job_id)
        record = self.store.get_job(job_id)
        if record is not None and answer is not None and record.status in ("queued", "running"):
            return replace(record, status="done", study_uids=tuple(answer[0]), unreadable=tuple(answer[1]))
        if record is not None and record.status == "running" and (record.study_uids or record.unreadable):
            return replace(record, status="done")  # answered by the replica running it
        return record

    def job_view(self, job: JobRecord) -> dict[str, Any]:
        """``{"job_id", "status", "studies"}`` as contract 3 answers ``GET /v1/jobs/{id}``, through
        contract 2's typed :class:`~secondreader.schema.JobView`."""
        studies: list[dict[str, Any]] = []
        if job.status == "done":
            for uid in job.study_uids:
                found = self.worklist.study(uid)  # as GET /v1/studies/{uid} shows it (state, reviews)
                if found is not None:
                    studies.append(found)
            studies.extend(job.unreadable)
        view: dict[str, Any] = {"job_id": job.id, "status": job.status, "studies": studies}
        if job.error:
            view["reason"] = job.error
        return served(JobView, view)  # contract 2's typed models: ResultContractError (a 500) if broken

    def heatmap(self, study_uid: str, sop_uid: str, finding: str, *, wait: float = 30.0) -> Path | None:
        """An overlay's file; while the study's outputs are being written here, after waiting up to
        ``wait`` seconds for them. With shared storage, one another replica wrote is fetched."""
        relative = f"{study_uid}/{sop_uid}/{finding}.png"
        path = self.artifacts / relative
        if not path.is_file():
            with self._lock:
                pending = self._outputs_pending.get(study_uid)
            if pending is not None:
                pending.wait(timeout=wait)
        if self.storage.shared:
            # the encoders' folder is scratch (emptied once the bucket holds a study's outputs):
            # served from a cache of what the bucket holds
            path = self.home / "cache" / "artifacts" / relative
        if not path.is_file() and self.storage.shared:
            # written by another replica: fetched from the storage, after waiting for it while the
            # study's outputs are still being written there
            deadline = time.monotonic() + wait
            while True:
                try:
                    self.storage.fetch(self.storage.ref(f"artifacts/{relative}"), path)
                    break
                except FileNotFoundError:
                    kept = self.store.study_result(study_uid)
                    if kept is None or kept.artifacts.status != "pending" or time.monotonic() > deadline:
                        return None
                    time.sleep(0.25)
        return path if path.is_file() else None

    def instance_source(self, study_uid: str, sop_uid: str) -> tuple[bytes | Path, str | None] | None:
        """A screened instance's bytes as received: a local file (and zip member), or its bytes
        read from the shared storage. None when not kept."""
        with self.store.transaction("find an instance") as s:
            row = s.get(Instance, sop_uid)
            if row is None or row.study_instance_uid != study_uid or not row.path:
                return None
            ref, member = row.path, row.member
        if ref.startswith("s3://"):
            try:
                return self.storage.read(ref), member
            except FileNotFoundError:
                return None
        path = Path(ref)
        return (path, member) if path.is_file() else None

    # -- DICOM in, results out ---------------------------------------------------------------
    def receive(self, data: bytes | Path, ds: Dataset, calling_ae: str = "") -> bool:
        """A C-STORE'd (or STOW-RS'd) instance, ``data`` its Part 10 bytes (or a file of the
        caller's holding them, moved into the spool) and ``ds`` their parsed header: kept durably in
        the spool, then recorded (:class:`InboundAssembly`). Returns False for an instance already
        received, and for secondreader's own results coming back."""
        return self.inbound.receive(data, ds)

    def start_background(self, *, stable_seconds: float, interval: float | None = None) -> None:
        """Renew leases, queue stable received studies, take queued or abandoned jobs when idle,
        and deliver queued results to the PACS."""
        if interval is not None:
            self.jobs.poll_seconds = interval

        def queue_stable() -> None:
            for job in self.inbound.queue_stable(stable_seconds):
                self.jobs.enqueue(job.id)

        self.jobs.start(on_tick=queue_stable)

        def deliver() -> None:
            last_figures = 0.0
            while not self._stop.wait(self.jobs.poll_seconds):
                try:
                    if self.pacs_destination:
                        self.outbox.deliver_due()
                    if time.monotonic() - last_figures >= 5.0:
                        self.refresh_metrics()
                        last_figures = time.monotonic()
                except Exception as exc:  # noqa: BLE001 - the loop must outlive a store outage
                    logger.error("result delivery loop: %s", type(exc).__name__)

        self._delivery = threading.Thread(target=deliver, name="outbox", daemon=True)
        self._delivery.start()

    def refresh_metrics(self) -> None:
        """The store-wide figures in ``/metrics``: outbox rows by status, the oldest undelivered
        one's age, jobs queued and running."""
        metrics.shared_queues(self.store.outbox_counts(), self.store.outbox_oldest_pending_seconds(),
                              self.store.job_counts())

    def deliver_due(self) -> int:
        """Send due outbox rows (each retried with its own back-off); returns how many were sent."""
        return self.outbox.deliver_due()

    def close(self) -> None:
        self._stop.set()
        if self._delivery is not None:
            self._delivery.join(timeout=10)
        self.jobs.drain()  # leases are still renewed while the encoders finish
        self._encoder.shutdown(wait=True, cancel_futures=False)  # after the screening: it feeds this
        self.jobs.stop()
        for predictor in self.predictors:
            close = getattr(predictor, "close", None)
            if close is not None:
                close()


def wait_seconds(raw: str | None, default: float = 30.0) -> float:
    """``?wait=S``: seconds, 0–600."""
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise InvalidInputError("wait must be a number of seconds") from None
    if not 0 <= value <= 600 or value != value:
        raise InvalidInputError("wait must be between 0 and 600 seconds")
    return value


