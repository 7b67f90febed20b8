"""``ScreeningService``: uploads → spool → jobs in the store → the pipeline → results in the store.

Framework-free (the HTTP layer and the BentoML service wrap it). Uploads are written to the spool
with fsync and their job recorded in the store *before* the caller hears back, so a job that was
accepted survives a restart: unfinished jobs are resumed at start-up.

Output encoding is off the request path: a job's results are recorded and answered as soon as its
studies are screened (``artifacts.status`` "pending"); encoder threads then write the overlays and
DICOM outputs, record them, queue them for the PACS, and only then mark the job done. A job killed
in between is unfinished, so its restart screens it again and writes them.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import logging
import os
import re
import shutil
import socket
import threading
import time
import uuid
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from ..dicom.io import sniff_non_dicom
from ..errors import InvalidInputError
from ..logsafe import study_key
from ..model.modes import ModelMode
from ..model.predictor import Predictor
from ..outputs.provenance import SeriesSettings, is_own_result
from ..pipeline import ScreeningOptions, screen_paths
from ..quarantine import Quarantine
from ..results import DeferredOutputs
from ..store import JobRecord, Store
from ..worklist import RoutingRules, Worklist
from . import metrics

__all__ = ["ScreeningService", "Upload", "has_dicom", "safe_name"]

logger = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True, slots=True)
class Upload:
    """One uploaded file: the client's file name (reduced to a safe base name) and its bytes."""

    name: str
    data: bytes


def safe_name(name: str | None, index: int) -> str:
    """A file name without folders, odd characters or leading dots (never empty)."""
    base = os.path.basename((name or "").replace("\\", "/"))
    base = _UNSAFE.sub("_", base).lstrip("._")[:120]
    return base or f"upload-{index:04d}"


def _is_dicom(head: bytes) -> bool:
    return len(head) >= 132 and head[128:132] == b"DICM"


def has_dicom(upload: Upload) -> bool:
    """Whether the upload is a DICOM Part 10 file, or a zip holding at least one."""
    if _is_dicom(upload.data[:132]):
        return True
    if upload.data[:4] != b"PK\x03\x04":
        return False
    import io

    try:
        with zipfile.ZipFile(io.BytesIO(upload.data)) as archive:
            for info in archive.infolist()[:10_000]:
                if info.is_dir() or info.file_size < 132:
                    continue
                with archive.open(info) as member:
                    if _is_dicom(member.read(132)):
                        return True
    except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError, EOFError):
        return False
    return False


class ScreeningService:
    """Jobs over the store, screened by a thread pool through the one pipeline."""

    def __init__(self, store: Store, predictors: Sequence[Predictor], *, home: Path, max_image_pixels: int,
                 workers: int = 4, pacs_destination: str | None = None, calling_ae: str = "SECONDREADER",
                 series: SeriesSettings | None = None, routing: RoutingRules | None = None,
                 worker_id: str | None = None, encode_workers: int | None = None,
                 modes: Mapping[str, ModelMode] | None = None) -> None:
        self.store = store
        self.worklist = Worklist(store, routing)
        # who claims jobs in a shared store (stable across restarts of this process, so a job it was
        # running when killed is taken again by its restart)
        self.worker_id = (worker_id or socket.gethostname())[:64]
        self.predictors = list(predictors)
        self.home = home
        self.spool = home / "spool"
        self.artifacts = home / "artifacts"
        self.spool.mkdir(parents=True, exist_ok=True)
        self.artifacts.mkdir(parents=True, exist_ok=True)
        self.quarantine = Quarantine(home / "quarantine")
        self.options = ScreeningOptions(predictors=self.predictors, max_pixels=max_image_pixels,
                                        out_dir=self.artifacts, series=series or SeriesSettings(),
                                        quarantine=self.quarantine, quarantine_channel="job",
                                        defer_outputs=True, modes=dict(modes or {}))
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="screen")
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
        self._queued = 0
        # Jobs waiting for a worker: (priority, arrival, job id). Someone waiting on an HTTP answer
        # (priority 0) goes before received and resumed studies (1), which would otherwise keep
        # interactive uploads behind a whole DICOM backlog.
        self._pending: list[tuple[int, int, str]] = []
        self._arrivals = itertools.count()
        self.pacs_destination = pacs_destination
        self.calling_ae = calling_ae
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._blocked: dict[str, float] = {}  # destination -> monotonic time before which it is not retried
        self.ready = True

    # -- submitting ---------------------------------------------------------------------------
    def submit(self, uploads: Sequence[Upload]) -> str:
        """Spool ``uploads`` (fsync), record the job, queue it; returns the job id.

        Raises
        ------
        InvalidInputError
            When nothing in the upload is DICOM (nothing is queued then).
        StoreError
            When the job cannot be recorded (the spooled files are removed again).
        """
        if not uploads:
            raise InvalidInputError("the upload holds no files")
        if not any(has_dicom(u) for u in uploads):
            kinds = sorted({(sniff_non_dicom(u.data[:1024]) or "a file of another kind") if u.data else "an empty file"
                            for u in uploads})
            reason = ("nothing in the upload is DICOM (no Part 10 file, no zip holding one): "
                      + ", ".join(kinds))
            for upload in uploads:
                self.quarantine.keep(upload.data, reason=reason, channel="http", kind="upload")
            raise InvalidInputError(reason)
        job_dir = self.spool / uuid.uuid4().hex
        for index, upload in enumerate(uploads):
            target = job_dir / f"{index:04d}" / safe_name(upload.name, index)
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "wb") as fh:
                fh.write(upload.data)
                fh.flush()
                os.fsync(fh.fileno())
        _fsync_dir(job_dir)
        try:
            job_id = self.store.create_job(job_dir)
        except Exception:
            shutil.rmtree(job_dir, ignore_errors=True)
            raise
        self._enqueue(job_id)
        return job_id

    def resume_unfinished(self) -> int:
        """Queue the jobs a previous run accepted but did not finish; returns how many."""
        jobs = self.store.unfinished_jobs()
        for job in jobs:
            self._enqueue(job.id, interactive=False)  # behind uploads someone is waiting on now
        if jobs:
            logger.info("resumed %d unfinished job(s)", len(jobs))
        return len(jobs)

    def _enqueue(self, job_id: str, *, waited_on: bool = True, interactive: bool | None = None) -> None:
        """Queue a job; ``waited_on`` jobs (HTTP uploads) get an event :meth:`wait` can block on.
        ``interactive`` jobs (by default the waited-on ones) run before the others."""
        with self._lock:
            if waited_on:
                self._events.setdefault(job_id, threading.Event())
            self._queued += 1
            metrics.queue_depth(self._queued)
            urgent = waited_on if interactive is None else interactive
            heapq.heappush(self._pending, (0 if urgent else 1, next(self._arrivals), job_id))
        self._executor.submit(self._run_next)

    def _run_next(self) -> None:
        """One worker turn: the most urgent pending job (each submission adds exactly one)."""
        with self._lock:
            _priority, _arrival, job_id = heapq.heappop(self._pending)
        self._run_job(job_id)

    # -- running ------------------------------------------------------------------------------
    def _run_job(self, job_id: str) -> None:
        with self._lock:
            self._queued -= 1
            metrics.queue_depth(self._queued)
        encoding = False
        deferred: list[tuple[str, DeferredOutputs]] = []
        try:
            job = self.store.get_job(job_id)
            if job is None or not self.store.claim_job(job_id, self.worker_id):
                return  # gone, or another worker sharing the store runs it
            study_uids: list[str] = []
            unreadable: list[dict[str, Any]] = []
            for result in screen_paths([Path(job.spool_dir)], self.options):
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
                self.worklist.record_result(data, accession_number=result.accession_number, files=result.files,
                                            job_id=job_id)
                study_uids.append(uid)
                logger.info("job %s: study %s %s", job_id[:8], study_key(uid), result.status.value)
            if deferred:
                # answer whoever waits now; the job is done once its outputs are written
                with self._lock:
                    self._answers[job_id] = (study_uids, unreadable)
                self._answered(job_id, keep=True)
                self._encode_slots.acquire()  # back-pressure: this worker waits while the encoders are behind
                self._encoder.submit(self._write_outputs, job_id, deferred, study_uids, unreadable)
                encoding = True
            else:
                self.store.set_job(job_id, "done", study_uids=study_uids, unreadable=unreadable)
        except Exception as exc:  # noqa: BLE001 - boundary: the job fails, the service lives
            self._job_failed(job_id, exc)
        finally:
            if not encoding:  # nobody will write these: heatmap requests must not wait for them
                self._outputs_written(uid for uid, _ in deferred)
            self._answered(job_id, keep=encoding)

    def _write_outputs(self, job_id: str, deferred: list[tuple[str, DeferredOutputs]], study_uids: list[str],
                       unreadable: list[dict[str, Any]]) -> None:
        """Encoder thread: write each study's outputs, record them, queue the DICOM ones for the
        PACS, then mark the job done."""
        try:
            for uid, outputs in deferred:
                try:
                    written = outputs.write()
                    metrics.stage_time("encode", written.encode_ms / 1000.0)
                    self.worklist.record_artifacts(uid, written.artifacts(), encode_ms=written.encode_ms)
                    if self.pacs_destination and written.dicom:  # results reach the PACS once written
                        self.store.enqueue_outbox(uid, [self.artifacts / p for p in written.dicom],
                                                  self.pacs_destination)
                finally:
                    self._outputs_written([uid])
            self.store.set_job(job_id, "done", study_uids=study_uids, unreadable=unreadable)
        except Exception as exc:  # noqa: BLE001 - boundary: the job stays unfinished (resumed at restart)
            logger.error("job %s: outputs not recorded: %s", job_id[:8], type(exc).__name__)
        finally:
            with self._lock:
                self._answers.pop(job_id, None)
            self._encode_slots.release()

    def _outputs_written(self, study_uids: Iterable[str]) -> None:
        """Wake heatmap requests waiting on these studies' outputs."""
        with self._lock:
            events = [self._outputs_pending.pop(uid, None) for uid in study_uids]
            metrics.outputs_pending(len(self._outputs_pending))
        for event in events:
            if event is not None:
                event.set()

    def _job_failed(self, job_id: str, exc: Exception) -> None:
        logger.error("job %s failed: %s", job_id[:8], type(exc).__name__)
        try:
            self.store.set_job(job_id, "failed", error=f"internal error ({type(exc).__name__})")
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
    def wait(self, job_id: str, timeout: float) -> JobRecord | None:
        """The job, after waiting up to ``timeout`` seconds for it to be answered."""
        with self._lock:
            event = self._events.get(job_id)
        if event is not None:
            event.wait(timeout=max(0.0, timeout))
        return self.job(job_id)

    def job(self, job_id: str) -> JobRecord | None:
        """The job as a client sees it: done as soon as its results are recorded, although its
        overlays and DICOM outputs may still be being written (their ``artifacts.status`` says)."""
        with self._lock:
            answer = self._answers.get(job_id)
        record = self.store.get_job(job_id)
        if record is not None and answer is not None and record.status in ("queued", "running"):
            return replace(record, status="done", study_uids=tuple(answer[0]), unreadable=tuple(answer[1]))
        return record

    def job_view(self, job: JobRecord) -> dict[str, Any]:
        """``{"status", "studies"}`` as contract 3 answers ``GET /v1/jobs/{id}``."""
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
        return view

    def heatmap(self, study_uid: str, sop_uid: str, finding: str, *, wait: float = 30.0) -> Path | None:
        """An overlay's file; while the study's outputs are being written, after waiting up to
        ``wait`` seconds for them."""
        path = self.artifacts / study_uid / sop_uid / f"{finding}.png"
        if not path.is_file():
            with self._lock:
                pending = self._outputs_pending.get(study_uid)
            if pending is not None:
                pending.wait(timeout=wait)
        return path if path.is_file() else None

    # -- DICOM in, results out ---------------------------------------------------------------
    def receive(self, data: bytes, ds: Dataset, calling_ae: str = "") -> bool:
        """A C-STORE'd (or STOW-RS'd) instance, ``data`` its Part 10 bytes and ``ds`` their parsed
        header: spool it with fsync, then record it. Returns False for an instance already received,
        and for secondreader's own results coming back."""
        if is_own_result(ds):
            return False
        study_uid, sop_uid = str(ds.StudyInstanceUID), str(ds.SOPInstanceUID)
        study_dir = self.spool / "inbound" / _digest(study_uid)
        study_dir.mkdir(parents=True, exist_ok=True)
        target = study_dir / f"{_digest(sop_uid)}.dcm"
        if not target.exists():
            tmp = target.with_suffix(".tmp")
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            tmp.replace(target)
            _fsync_dir(study_dir)
        return self.store.record_inbound(study_uid, sop_uid, study_dir)

    def start_background(self, *, stable_seconds: float, interval: float = 0.2) -> None:
        """Screen received studies once stable; deliver queued results to the PACS."""
        def loop() -> None:
            while not self._stop.wait(interval):
                try:
                    for study_uid, spool_dir in self.store.stable_studies(stable_seconds):
                        job_id = self.store.create_job(Path(spool_dir))
                        self.store.mark_study_queued(study_uid, job_id)
                        self._enqueue(job_id, waited_on=False)
                    if self.pacs_destination:
                        self.deliver_due()
                except Exception as exc:  # noqa: BLE001 - the loop must outlive a store outage
                    logger.error("background loop: %s", type(exc).__name__)

        self._watcher = threading.Thread(target=loop, name="stable-studies", daemon=True)
        self._watcher.start()

    def deliver_due(self) -> int:
        """Send due outbox items (retries back off up to a minute); returns how many were sent."""
        from ..dicom.scu import send_files
        from ..dicom.stow import send_stow
        from ..errors import PacsError

        sent = 0
        now = time.monotonic()
        for item_id, path, destination, attempts in self.store.due_outbox():
            # In order per destination: after a failure nothing later goes to that destination until
            # the oldest pending item got through (the back-off is per destination, in memory).
            if self._blocked.get(destination, 0.0) > now:
                continue
            try:
                if destination.startswith(("http://", "https://")):
                    send_stow([Path(path)], destination)
                else:
                    send_files([Path(path)], destination, calling_ae=self.calling_ae)
            except (PacsError, OSError, ValueError) as exc:
                delay = min(60.0, 0.5 * 2 ** attempts)
                self._blocked[destination] = now + delay
                self.store.outbox_done(item_id, sent=False, error=str(exc)[:200], retry_in=0.0)
                logger.warning("result delivery failed (attempt %d), retrying in %.1f s", attempts + 1, delay)
                continue
            self.store.outbox_done(item_id, sent=True)
            sent += 1
        return sent

    def close(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
        self._executor.shutdown(wait=True, cancel_futures=False)
        self._encoder.shutdown(wait=True, cancel_futures=False)  # after the screening: it feeds this
        for predictor in self.predictors:
            close = getattr(predictor, "close", None)
            if close is not None:
                close()


def _digest(uid: str) -> str:
    return hashlib.sha256(uid.encode()).hexdigest()[:32]


def _fsync_dir(path: Path) -> None:
    for folder in [*(p for p in path.iterdir() if p.is_dir()), path, path.parent]:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


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


