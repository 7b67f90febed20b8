"""Contract 3's ``/v1`` routes as a Starlette app (mounted in the BentoML service at ``/v1``).

Every error is JSON ``{"error", "reason"}`` with a 4xx; a 500 only for our own bugs, and then with
no detail. Nothing a client sends is echoed back in an error.

Request bodies are streamed, never held whole: an upload's body into a file of the spool's
``incoming`` folder (a multipart form's files are spooled by Starlette), a STOW-RS body through a
streaming multipart parser, each DICOM part into a file of its own as it arrives, with the part cap
and the byte cap counted on the way; memory holds a chunk, not the body.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import re
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser
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
from .spool import Spool

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks
from .validation import error_response, is_uid, strict_int, strict_number
from .worklist_http import worklist_routes

__all__ = ["build_app"]

logger = logging.getLogger(__name__)

_FINDING = re.compile(r"^[a-z0-9_-]{1,32}$")


class _TooLarge(Exception):
    pass


async def _limited(request: Request, limit: int) -> AsyncGenerator[bytes, None]:
    seen = 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > limit:
            raise _TooLarge
        yield chunk


#: Request bodies are handed on (to a file, to the STOW-RS parser) in pieces of about this size.
_PIECE = 1024 * 1024


async def _body_to_file(request: Request, limit: int, target: Path) -> None:
    """Stream the request body into ``target`` (raises _TooLarge past ``limit`` bytes)."""
    with open(target, "wb") as out:
        pending = bytearray()
        async for chunk in _limited(request, limit):
            pending += chunk
            if len(pending) >= _PIECE:
                await asyncio.to_thread(out.write, bytes(pending))
                pending.clear()
        if pending:
            await asyncio.to_thread(out.write, bytes(pending))


@contextlib.asynccontextmanager
async def _read_uploads(request: Request, limit: int, spool: Callable[[], Spool]) -> AsyncIterator[list[Upload]]:
    """The uploaded files, in files while the block runs: a multipart form's as Starlette spooled
    them, a raw body streamed into a new folder of the spool's ``incoming`` (removed afterwards)."""
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
                uploads.append(Upload(value.filename or f"upload-{index:04d}", file=value.file))
            yield uploads
        finally:
            await form.close()
        return
    if content_type in ("application/dicom", "application/zip", "application/octet-stream"):
        name = "upload.zip" if content_type == "application/zip" else "upload.dcm"
        folder = await asyncio.to_thread(spool().incoming)
        try:
            await _body_to_file(request, limit, folder / name)
            yield [Upload(name, path=folder / name)]
        finally:
            await asyncio.to_thread(Spool.discard, folder)
        return
    raise InvalidInputError("Content-Type must be multipart/form-data, application/dicom or application/zip")


#: Parts accepted in one STOW-RS request: each may end in the quarantine, so a flood of tiny parts
#: is refused before any is kept (a larger study is sent in several requests).
MAX_STOW_PARTS = 1_000
_BOUNDARY = re.compile(r'boundary\s*=\s*(?:"([^"]{1,200})"|([^;\s"]{1,200}))', re.IGNORECASE)
_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/=]")


class _TooManyParts(Exception):
    pass


class _Base64:
    """A streaming base64 decoder into ``out`` that passes over line breaks and other non-alphabet
    bytes (as :func:`base64.b64decode` does); ``bad`` once the data is not base64."""

    def __init__(self, out: BinaryIO) -> None:
        self.out, self.rest, self.bad = out, b"", False

    def write(self, data: bytes) -> None:
        if self.bad:
            return
        data = self.rest + _NOT_BASE64.sub(b"", data)
        cut = len(data) // 4 * 4
        try:
            self.out.write(base64.b64decode(data[:cut]))
        except (binascii.Error, ValueError):
            self.bad = True
        self.rest = data[cut:]

    def finish(self) -> bool:
        return not self.bad and not self.rest


class StowParts:
    """python-multipart callbacks writing each DICOM part (``application/dicom`` or
    ``application/octet-stream``, base64 decoded when so encoded) of a multipart body into a file of
    its own in ``folder`` as it arrives; other parts are passed over. ``parts``: the files of the
    DICOM parts that ended (an unterminated last part is dropped), in order. Raises _TooManyParts
    when part ``max_parts + 1`` begins."""

    def __init__(self, folder: Path, max_parts: int) -> None:
        self.folder, self.max_parts = folder, max_parts
        self.parts: list[Path] = []
        self.begun = 0
        self._field, self._value = bytearray(), bytearray()
        self._headers: dict[str, str] = {}
        self._out: BinaryIO | None = None
        self._sink: BinaryIO | _Base64 | None = None
        self._path: Path | None = None

    def callbacks(self) -> MultipartCallbacks:
        return {"on_part_begin": self._begin, "on_header_field": self._header_field,
                "on_header_value": self._header_value, "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished, "on_part_data": self._data,
                "on_part_end": self._end}

    def _begin(self) -> None:
        self.close()
        self.begun += 1
        if self.begun > self.max_parts:
            raise _TooManyParts
        self._headers = {}

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._field.decode("latin-1").strip().lower()] = self._value.decode("latin-1").strip()
        self._field.clear()
        self._value.clear()

    def _headers_finished(self) -> None:
        media = self._headers.get("content-type", "text/plain").split(";")[0].strip().lower()
        if media not in ("application/dicom", "application/octet-stream"):
            return
        self._path = self.folder / f"part-{self.begun:04d}.dcm"
        self._out = open(self._path, "wb")  # noqa: SIM115 - closed by _end or close
        base64_encoded = self._headers.get("content-transfer-encoding", "").lower() == "base64"
        self._sink = _Base64(self._out) if base64_encoded else self._out

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._sink is not None:
            self._sink.write(data[start:end])

    def _end(self) -> None:
        if self._out is None or self._path is None:
            return
        complete = self._sink.finish() if isinstance(self._sink, _Base64) else True
        size = self._out.tell()
        self._out.close()
        if complete and size > 0:
            self.parts.append(self._path)
        else:
            self._path.unlink(missing_ok=True)
        self._out = self._sink = self._path = None

    def close(self) -> None:
        """Drop the part being written, if any (it never ended)."""
        if self._out is not None and self._path is not None:
            self._out.close()
            self._path.unlink(missing_ok=True)
        self._out = self._sink = self._path = None


async def _stow_parts(request: Request, limit: int, boundary: str, folder: Path) -> list[Path]:
    """Stream a multipart body's DICOM parts into files in ``folder``. Raises _TooLarge past
    ``limit`` bytes, _TooManyParts past :data:`MAX_STOW_PARTS` parts (after reading the rest of the
    body, up to ``limit``, so that the client hears the answer), FormParserError when malformed."""
    sink = StowParts(folder, MAX_STOW_PARTS)
    parser = MultipartParser(boundary.encode("latin-1"), sink.callbacks(), max_header_count=32)
    refused = False
    pending = bytearray()
    try:
        async for chunk in _limited(request, limit):
            if refused:
                continue
            pending += chunk
            if len(pending) < _PIECE:
                continue
            try:
                await asyncio.to_thread(parser.write, bytes(pending))
            except _TooManyParts:
                refused = True
                sink.close()
                await asyncio.to_thread(Spool.discard, folder)
            pending.clear()
        if refused:
            raise _TooManyParts
        if pending:
            await asyncio.to_thread(parser.write, bytes(pending))
        parser.finalize()
    except _TooLarge:
        if refused:
            raise _TooManyParts from None
        raise
    finally:
        sink.close()
    return sink.parts


def _take_part(service: ScreeningService, path: Path) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """One stored part into the spool (``receive``, which moves its file there) or, when it is no
    usable DICOM, into the quarantine (moved too): (referenced, failed), one of them None."""
    try:
        dicom = read_dataset(path)
        ds = dicom.dataset
        sop_class, sop = str(ds.SOPClassUID), str(ds.SOPInstanceUID)
        ds.StudyInstanceUID  # noqa: B018 - must be readable
    except (SecondReaderError, AttributeError) as exc:
        reason = str(exc) if isinstance(exc, SecondReaderError) else "DICOM header lacks a required UID"
        service.quarantine.keep(path, reason=reason, channel="stow", move=True)
        return None, {"00081197": {"vr": "US", "Value": [0xC000]}}
    except OSError:  # our own file: nothing the client did
        return None, {"00081197": {"vr": "US", "Value": [0xA700]}}
    try:
        service.receive(path, ds, "STOW-RS")
    except InfrastructureError:
        return None, {"00081150": {"vr": "UI", "Value": [sop_class]},
                      "00081155": {"vr": "UI", "Value": [sop]}, "00081197": {"vr": "US", "Value": [0xA700]}}
    return {"00081150": {"vr": "UI", "Value": [sop_class]}, "00081155": {"vr": "UI", "Value": [sop]}}, None


def build_app(get_service: Callable[[], ScreeningService], *, max_upload_bytes: Callable[[], int]) -> Starlette:
    """The ``/v1`` app. ``get_service`` finds the worker's ScreeningService at request time."""

    async def screen(request: Request) -> Response:
        limit = max_upload_bytes()
        service: ScreeningService | None = None

        def spool() -> Spool:
            nonlocal service
            service = service or get_service()
            return service.spool

        try:
            length = strict_int(request.headers.get("content-length"), "Content-Length", low=0, high=2**62, default=0)
        except InvalidInputError as exc:
            return error_response(400, "bad request", str(exc))
        if length > limit:
            return error_response(413, "payload too large", f"uploads are limited to {limit // 1024**2} MiB")
        try:
            strict_number(request.query_params.get("wait"), "wait", low=0, high=600)
            wait = wait_seconds(request.query_params.get("wait"))
            async with _read_uploads(request, limit, spool) as uploads:
                service = service or get_service()
                job_id = await asyncio.to_thread(service.submit, uploads)
            job = await asyncio.to_thread(service.wait, job_id, wait)
        except _TooLarge:
            return error_response(413, "payload too large", f"uploads are limited to {limit // 1024**2} MiB")
        except MultiPartException:
            return error_response(400, "bad request", "the multipart body is malformed")
        except InvalidInputError as exc:
            return error_response(400, "bad request", str(exc))
        except InfrastructureError as exc:
            return error_response(503, "unavailable", str(exc))
        if job is None or job.status in ("queued", "running"):
            return JSONResponse({"job_id": job_id, "status_url": f"/v1/jobs/{job_id}"}, status_code=202)
        view = service.job_view(job)
        if job.status == "failed":
            return error_response(500, "screening failed", view.get("reason", "internal error"))
        return JSONResponse({"studies": view["studies"]})

    async def job(request: Request) -> Response:
        job_id = request.path_params["job_id"]
        if not re.fullmatch(r"[0-9a-f]{32}", job_id):
            return error_response(404, "not found", "no such job")
        service = get_service()
        record = await asyncio.to_thread(service.job, job_id)
        if record is None:
            return error_response(404, "not found", "no such job")
        return JSONResponse(service.job_view(record))

    async def heatmap(request: Request) -> Response:
        uid, sop, finding = (request.path_params[k] for k in ("study_uid", "sop_uid", "finding"))
        if not (is_uid(uid) and is_uid(sop) and _FINDING.fullmatch(finding)):
            return error_response(400, "bad request", "UIDs must be DICOM UIDs and the finding a finding code")
        path = await asyncio.to_thread(get_service().heatmap, uid, sop, finding)
        if path is None:
            return error_response(404, "not found", "no heatmap for this instance and finding")
        return FileResponse(path, media_type="image/png")

    async def heatmap_layer(request: Request) -> Response:
        """The heatmap alone as a transparent RGBA layer over the source grid (the viewer's overlay)."""
        uid, sop, finding = (request.path_params[k] for k in ("study_uid", "sop_uid", "finding"))
        if not (is_uid(uid) and is_uid(sop) and _FINDING.fullmatch(finding)):
            return error_response(400, "bad request", "UIDs must be DICOM UIDs and the finding a finding code")
        path = await asyncio.to_thread(get_service().heatmap, uid, sop, f"{finding}.layer")
        if path is None:
            return error_response(404, "not found", "no heatmap layer for this instance and finding")
        return FileResponse(path, media_type="image/png")

    async def stow(request: Request) -> Response:
        """STOW-RS: multipart/related DICOM parts into the same spool and store as the receiver."""
        limit = max_upload_bytes()
        content_type = request.headers.get("content-type", "")
        if not content_type.lower().startswith("multipart/related"):
            return error_response(415, "unsupported media type",
                                  "STOW-RS takes multipart/related; type=\"application/dicom\"")
        match = _BOUNDARY.search(content_type)
        if match is None:
            return error_response(400, "bad request", "no DICOM part in the multipart body")
        service = get_service()
        folder = await asyncio.to_thread(service.spool.incoming)
        try:
            try:
                parts = await _stow_parts(request, limit, match.group(1) or match.group(2), folder)
            except _TooLarge:
                return error_response(413, "payload too large", f"uploads are limited to {limit // 1024**2} MiB")
            except _TooManyParts:
                return error_response(413, "payload too large", f"a STOW-RS request is limited to {MAX_STOW_PARTS} "
                                      "parts; send the study in several requests")
            except FormParserError:
                return error_response(400, "bad request", "the multipart body is malformed")
            referenced, failed = [], []
            for path in parts:  # one part at a time, each from its own file
                done, refused = await asyncio.to_thread(_take_part, service, path)
                if done is not None:
                    referenced.append(done)
                if refused is not None:
                    failed.append(refused)
        finally:
            await asyncio.to_thread(Spool.discard, folder)
        dicom_parts = len(parts)
        if not dicom_parts:
            return error_response(400, "bad request", "no DICOM part in the multipart body")
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
            return error_response(400, "bad request", "status must be pending, sent or dead")
        service = get_service()
        try:
            items = await asyncio.to_thread(service.store.outbox_rows, status)
            counts = await asyncio.to_thread(service.store.outbox_counts)
        except InfrastructureError as exc:
            return error_response(503, "unavailable", str(exc))
        return JSONResponse({"status": status, "counts": counts, "items": items})

    async def outbox_retry(request: Request) -> Response:
        """Admin: put a dead-lettered row back in the queue (once its file is restored)."""
        try:
            item_id = strict_int(request.path_params["item_id"], "item_id", low=0, high=2**62)
        except InvalidInputError:
            return error_response(404, "not found", "no such outbox row")
        try:
            requeued = await asyncio.to_thread(get_service().store.outbox_requeue, item_id)
        except InfrastructureError as exc:
            return error_response(503, "unavailable", str(exc))
        if not requeued:
            return error_response(404, "not found", "no dead-lettered outbox row with this id")
        return JSONResponse({"id": item_id, "status": "pending"})

    async def not_found(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 404
        return error_response(status, "not found" if status == 404 else "bad request", "no such route or method")

    async def internal(request: Request, exc: Exception) -> Response:
        logger.error("unhandled %s on %s", type(exc).__name__, request.url.path.split("/")[2:3])
        return error_response(500, "internal error", "an internal error occurred; the upload was kept")

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
