"""Contract 3's ``/v1`` routes as a Starlette app (mounted in the BentoML service at ``/v1``).

Every error is JSON ``{"error", "reason"}`` with a 4xx; a 500 only for our own bugs, and then with
no detail. Nothing a client sends is echoed back in an error.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import re
from collections.abc import AsyncGenerator, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from ..dicom.io import read_dataset
from ..errors import InfrastructureError, InvalidInputError, SecondReaderError
from .core import ScreeningService, Upload, wait_seconds
from .validation import is_uid, strict_int, strict_number
from .worklist_http import worklist_routes

__all__ = ["build_app"]

logger = logging.getLogger(__name__)

_FINDING = re.compile(r"^[a-z0-9_-]{1,32}$")


class _TooLarge(Exception):
    pass


def _error(status: int, error: str, reason: str) -> JSONResponse:
    return JSONResponse({"error": error, "reason": reason}, status_code=status)


async def _limited(request: Request, limit: int) -> AsyncGenerator[bytes, None]:
    seen = 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > limit:
            raise _TooLarge
        yield chunk


async def _read_uploads(request: Request, limit: int) -> list[Upload]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        parser = MultiPartParser(request.headers, _limited(request, limit), max_files=10_000, max_fields=100)
        form = await parser.parse()
        try:
            uploads = []
            for index, (_field, value) in enumerate(form.multi_items()):
                if not isinstance(value, UploadFile):
                    # A string field (a URL, say) is refused: we never fetch what a client points at.
                    raise InvalidInputError("a form field is not a file; send files only (URLs are never fetched)")
                uploads.append(Upload(value.filename or f"upload-{index:04d}", await value.read()))
            return uploads
        finally:
            await form.close()
    if content_type in ("application/dicom", "application/zip", "application/octet-stream"):
        body = b"".join([chunk async for chunk in _limited(request, limit)])
        name = "upload.zip" if content_type == "application/zip" else "upload.dcm"
        return [Upload(name, body)]
    raise InvalidInputError("Content-Type must be multipart/form-data, application/dicom or application/zip")


#: Parts accepted in one STOW-RS request: each may end in the quarantine, so a flood of tiny parts
#: is refused before any is read (a larger study is sent in several requests).
MAX_STOW_PARTS = 1_000
_BOUNDARY = re.compile(r'boundary\s*=\s*(?:"([^"]{1,200})"|([^;\s"]{1,200}))', re.IGNORECASE)


class _TooManyParts(Exception):
    pass


def _part_spans(content_type: str, body: bytes, max_parts: int) -> list[tuple[int, int]]:
    """Where each part of a multipart body lies (RFC 2046), found without copying the body;
    raises _TooManyParts past ``max_parts``."""
    match = _BOUNDARY.search(content_type)
    if match is None:
        return []
    delimiter = b"--" + (match.group(1) or match.group(2)).encode("latin-1")
    spans: list[tuple[int, int]] = []
    at = body.find(delimiter)
    if at < 0 or (at > 0 and body[at - 1:at] != b"\n"):
        return []
    while True:
        after = at + len(delimiter)
        if body[after:after + 2] == b"--":
            return spans  # the close delimiter
        line_end = body.find(b"\n", after)
        if line_end < 0:
            return spans
        start = line_end + 1
        nxt = body.find(b"\n" + delimiter, start)
        if nxt < 0:
            return spans  # no closing delimiter: the unterminated part is dropped
        end = nxt - 1 if nxt > start and body[nxt - 1:nxt] == b"\r" else nxt
        if len(spans) >= max_parts:
            raise _TooManyParts
        spans.append((start, end))
        at = nxt + 1


def _dicom_part(body: bytes, span: tuple[int, int]) -> bytes | None:
    """The payload of one part when it is application/dicom (or octet-stream), else None. Only this
    part is copied out of the body."""
    start, end = span
    limit = min(end, start + 65536)  # part headers are short
    if body.startswith(b"\r\n", start) or body.startswith(b"\n", start):
        head_end, gap = start, (2 if body.startswith(b"\r\n", start) else 1)
    else:
        found = [(at, len(sep)) for sep in (b"\r\n\r\n", b"\n\n") if (at := body.find(sep, start, limit)) >= 0]
        if not found:
            return None
        head_end, gap = min(found)
    headers: dict[str, str] = {}
    for line in body[start:head_end].decode("latin-1").splitlines():
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    media = headers.get("content-type", "text/plain").split(";")[0].strip().lower()
    if media not in ("application/dicom", "application/octet-stream"):
        return None
    payload = body[head_end + gap:end]
    if headers.get("content-transfer-encoding", "").lower() == "base64":
        try:
            payload = base64.b64decode(payload)
        except (binascii.Error, ValueError):
            return None
    return payload or None


def build_app(get_service: Callable[[], ScreeningService], *, max_upload_bytes: Callable[[], int]) -> Starlette:
    """The ``/v1`` app. ``get_service`` finds the worker's ScreeningService at request time."""

    async def screen(request: Request) -> Response:
        limit = max_upload_bytes()
        try:
            length = strict_int(request.headers.get("content-length"), "Content-Length", low=0, high=2**62, default=0)
        except InvalidInputError as exc:
            return _error(400, "bad request", str(exc))
        if length > limit:
            return _error(413, "payload too large", f"uploads are limited to {limit // 1024**2} MiB")
        try:
            strict_number(request.query_params.get("wait"), "wait", low=0, high=600)
            wait = wait_seconds(request.query_params.get("wait"))
            uploads = await _read_uploads(request, limit)
            service = get_service()
            job_id = await asyncio.to_thread(service.submit, uploads)
            job = await asyncio.to_thread(service.wait, job_id, wait)
        except _TooLarge:
            return _error(413, "payload too large", f"uploads are limited to {limit // 1024**2} MiB")
        except MultiPartException:
            return _error(400, "bad request", "the multipart body is malformed")
        except InvalidInputError as exc:
            return _error(400, "bad request", str(exc))
        except InfrastructureError as exc:
            return _error(503, "unavailable", str(exc))
        if job is None or job.status in ("queued", "running"):
            return JSONResponse({"job_id": job_id, "status_url": f"/v1/jobs/{job_id}"}, status_code=202)
        view = service.job_view(job)
        if job.status == "failed":
            return _error(500, "screening failed", view.get("reason", "internal error"))
        return JSONResponse({"studies": view["studies"]})

    async def job(request: Request) -> Response:
        job_id = request.path_params["job_id"]
        if not re.fullmatch(r"[0-9a-f]{32}", job_id):
            return _error(404, "not found", "no such job")
        service = get_service()
        record = await asyncio.to_thread(service.job, job_id)
        if record is None:
            return _error(404, "not found", "no such job")
        return JSONResponse(service.job_view(record))

    async def heatmap(request: Request) -> Response:
        uid, sop, finding = (request.path_params[k] for k in ("study_uid", "sop_uid", "finding"))
        if not (is_uid(uid) and is_uid(sop) and _FINDING.fullmatch(finding)):
            return _error(400, "bad request", "UIDs must be DICOM UIDs and the finding a finding code")
        path = await asyncio.to_thread(get_service().heatmap, uid, sop, finding)
        if path is None:
            return _error(404, "not found", "no heatmap for this instance and finding")
        return FileResponse(path, media_type="image/png")

    async def heatmap_layer(request: Request) -> Response:
        """The heatmap alone as a transparent RGBA layer over the source grid (the viewer's overlay)."""
        uid, sop, finding = (request.path_params[k] for k in ("study_uid", "sop_uid", "finding"))
        if not (is_uid(uid) and is_uid(sop) and _FINDING.fullmatch(finding)):
            return _error(400, "bad request", "UIDs must be DICOM UIDs and the finding a finding code")
        path = await asyncio.to_thread(get_service().heatmap, uid, sop, f"{finding}.layer")
        if path is None:
            return _error(404, "not found", "no heatmap layer for this instance and finding")
        return FileResponse(path, media_type="image/png")

    async def stow(request: Request) -> Response:
        """STOW-RS: multipart/related DICOM parts into the same spool and store as the receiver."""
        limit = max_upload_bytes()
        content_type = request.headers.get("content-type", "")
        if not content_type.lower().startswith("multipart/related"):
            return _error(415, "unsupported media type", "STOW-RS takes multipart/related; type=\"application/dicom\"")
        try:
            body = b"".join([chunk async for chunk in _limited(request, limit)])
        except _TooLarge:
            return _error(413, "payload too large", f"uploads are limited to {limit // 1024**2} MiB")
        try:
            spans = _part_spans(content_type, body, MAX_STOW_PARTS)
        except _TooManyParts:
            return _error(413, "payload too large", f"a STOW-RS request is limited to {MAX_STOW_PARTS} parts; "
                                                    "send the study in several requests")
        service = get_service()
        referenced, failed = [], []
        dicom_parts = 0
        for span in spans:
            part = _dicom_part(body, span)  # one part's copy at a time, never the whole body parsed
            if part is None:
                continue
            dicom_parts += 1
            try:
                dicom = read_dataset(part)
                ds = dicom.dataset
                sop_class, sop = str(ds.SOPClassUID), str(ds.SOPInstanceUID)
                ds.StudyInstanceUID  # noqa: B018 - must be readable
            except (SecondReaderError, AttributeError) as exc:
                reason = str(exc) if isinstance(exc, SecondReaderError) else "DICOM header lacks a required UID"
                await asyncio.to_thread(service.quarantine.keep, part, reason=reason, channel="stow")
                failed.append({"00081197": {"vr": "US", "Value": [0xC000]}})
                continue
            try:
                await asyncio.to_thread(service.receive, part, ds, "STOW-RS")
            except InfrastructureError:
                failed.append({"00081150": {"vr": "UI", "Value": [sop_class]},
                               "00081155": {"vr": "UI", "Value": [sop]}, "00081197": {"vr": "US", "Value": [0xA700]}})
                continue
            referenced.append({"00081150": {"vr": "UI", "Value": [sop_class]},
                               "00081155": {"vr": "UI", "Value": [sop]}})
        if not dicom_parts:
            return _error(400, "bad request", "no DICOM part in the multipart body")
        answer: dict[str, Any] = {"00081199": {"vr": "SQ", "Value": referenced}}
        if failed:
            answer["00081198"] = {"vr": "SQ", "Value": failed}
        status = 200 if not failed else (202 if referenced else 409)
        return JSONResponse(answer, status_code=status, media_type="application/dicom+json")

    async def outbox(request: Request) -> Response:
        """Admin: the shared outbox's rows by status (``dead`` by default: what can never be sent,
        with its reason) and the counts of every status."""
        status = request.query_params.get("status", "dead")
        if status not in ("pending", "sent", "dead"):
            return _error(400, "bad request", "status must be pending, sent or dead")
        service = get_service()
        try:
            items = await asyncio.to_thread(service.store.outbox_rows, status)
            counts = await asyncio.to_thread(service.store.outbox_counts)
        except InfrastructureError as exc:
            return _error(503, "unavailable", str(exc))
        return JSONResponse({"status": status, "counts": counts, "items": items})

    async def outbox_retry(request: Request) -> Response:
        """Admin: put a dead-lettered row back in the queue (once its file is restored)."""
        try:
            item_id = strict_int(request.path_params["item_id"], "item_id", low=0, high=2**62)
        except InvalidInputError:
            return _error(404, "not found", "no such outbox row")
        try:
            requeued = await asyncio.to_thread(get_service().store.outbox_requeue, item_id)
        except InfrastructureError as exc:
            return _error(503, "unavailable", str(exc))
        if not requeued:
            return _error(404, "not found", "no dead-lettered outbox row with this id")
        return JSONResponse({"id": item_id, "status": "pending"})

    async def not_found(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 404
        return _error(status, "not found" if status == 404 else "bad request", "no such route or method")

    async def internal(request: Request, exc: Exception) -> Response:
        logger.error("unhandled %s on %s", type(exc).__name__, request.url.path.split("/")[2:3])
        return _error(500, "internal error", "an internal error occurred; the upload was kept")

    routes = [
        Route("/screen", screen, methods=["POST"]),
        Route("/jobs/{job_id}", job, methods=["GET"]),
        *worklist_routes(get_service),  # reports, worklist, a study with its state, reviews, instances
        # Before the overlay route, whose {finding} would also match "pneumonia.layer".
        Route("/studies/{study_uid}/instances/{sop_uid}/heatmaps/{finding}.layer.png", heatmap_layer, methods=["GET"]),
        Route("/studies/{study_uid}/instances/{sop_uid}/heatmaps/{finding}.png", heatmap, methods=["GET"]),
        Route("/dicomweb/studies", stow, methods=["POST"]),
        Route("/admin/outbox", outbox, methods=["GET"]),
        Route("/admin/outbox/{item_id}/retry", outbox_retry, methods=["POST"]),
    ]
    handlers: dict[Any, Any] = {HTTPException: not_found, Exception: internal}
    return Starlette(routes=routes, exception_handlers=handlers)
