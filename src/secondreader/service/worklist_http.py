"""Contract 3's worklist routes (mounted in the ``/v1`` app): first reads in, the worklist, each
model's flag rate by mode, a study with its state and reviews, radiologists' verdicts, the source
images for the viewer and the verdicts exported as a training manifest.

Who did it (the audit log's ``actor``) is the API key's fingerprint, never the key itself. Results
go out through contract 2's typed models (:func:`secondreader.schema.served`): one that breaks the
contract is a 500, logged with where it breaks and never a value from it.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import zipfile
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from ..errors import InfrastructureError, InvalidInputError, InvalidReportError
from ..reports.fhir import report_from_fhir
from ..reports.firstread import MAX_REPORT_CHARS, ReportIn, report_from_json
from ..reports.hl7 import parse_message, report_from_oru
from ..schema import ReportAnswer, StoredResult, StudyView, WorklistPage, served
from ..worklist import FIRST_READ_VERDICT
from .auth import bearer_token
from .core import ScreeningService
from .validation import error_response, is_uid, loads_json, strict_int, strict_number

__all__ = ["actor_of", "worklist_routes"]

_MAX_REPORT_BYTES = 4 * MAX_REPORT_CHARS


def actor_of(request: Request) -> str:
    """``key:<fingerprint>`` of the request's API key (``anonymous`` where none is configured)."""
    key = bearer_token(request.headers.get("authorization"))
    return f"key:{hashlib.sha256(key.encode()).hexdigest()[:12]}" if key else "anonymous"


async def _body(request: Request) -> bytes:
    length = request.headers.get("content-length")
    if length and strict_int(length, "Content-Length", low=0, high=2**62) > _MAX_REPORT_BYTES:
        raise InvalidReportError(f"a first read is limited to {_MAX_REPORT_BYTES // 1024} KiB")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > _MAX_REPORT_BYTES:
            raise InvalidReportError(f"a first read is limited to {_MAX_REPORT_BYTES // 1024} KiB")
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_report(content_type: str, body: bytes) -> ReportIn:
    media = content_type.split(";")[0].strip().lower()
    text = body.decode("utf-8", errors="replace")
    if media in ("application/hl7-v2", "x-application/hl7-v2+er7", "application/edi-hl7"):
        return report_from_oru(parse_message(text))
    try:
        data = loads_json(text)
    except InvalidInputError as exc:
        raise InvalidReportError(f"{exc} (send application/json, application/fhir+json "
                                 "or an HL7 v2 message as application/hl7-v2)") from None
    if media == "application/fhir+json" or (isinstance(data, dict) and "resourceType" in data):
        return report_from_fhir(data)
    return report_from_json(data)


def worklist_routes(get_service: Callable[[], ScreeningService]) -> list[Route]:
    async def reports(request: Request) -> Response:
        try:
            report = _parse_report(request.headers.get("content-type", ""), await _body(request))
            outcome = await asyncio.to_thread(get_service().worklist.add_report, report, actor=actor_of(request))
        except InvalidInputError as exc:
            return error_response(400, "bad request", str(exc))
        except InfrastructureError as exc:
            return error_response(503, "unavailable", str(exc))
        if not outcome.studies:
            return JSONResponse({"status": "pending",
                                 "reason": "no images for this study yet; the first read is kept and applied "
                                           "when they arrive"}, status_code=202)
        if len(outcome.studies) == 1:
            return JSONResponse(served(StoredResult, outcome.studies[0]))
        return JSONResponse(served(ReportAnswer, {"studies": outcome.studies}))

    async def worklist(request: Request) -> Response:
        state = request.query_params.get("state") or None
        route = request.query_params.get("route") or None
        try:
            limit = strict_int(request.query_params.get("limit"), "limit", low=1, high=5000, default=500)
        except InvalidInputError:
            return error_response(400, "bad request", "limit must be a number from 1 to 5000")
        try:
            items = await asyncio.to_thread(get_service().worklist.items, state=state, route=route, limit=limit)
        except ValueError:
            return error_response(400, "bad request", "state must be new, screened, awaiting_review, reviewed, "
                                  "ineligible or failed; route urgent, review or none")
        except InfrastructureError as exc:
            return error_response(503, "unavailable", str(exc))
        return JSONResponse(served(WorklistPage, {"items": items}))

    async def rates(request: Request) -> Response:
        try:
            days = strict_number(request.query_params.get("days"), "days", low=0, high=36500)
        except InvalidInputError:
            days = 0.0
        if days is not None and days <= 0:
            return error_response(400, "bad request", "days must be a number of days, more than 0")
        try:
            summary = await asyncio.to_thread(get_service().worklist.flag_rates, days=days)
        except InfrastructureError as exc:
            return error_response(503, "unavailable", str(exc))
        return JSONResponse(summary)

    async def study(request: Request) -> Response:
        uid = request.path_params["study_uid"]
        if not is_uid(uid):
            return error_response(400, "bad request", "study UID must be a DICOM UID (digits and dots)")
        found = await asyncio.to_thread(get_service().worklist.study, uid, actor=actor_of(request))
        if found is None:
            return error_response(404, "not found", "no result for this study")
        return JSONResponse(served(StudyView, found))

    async def reviews(request: Request) -> Response:
        uid = request.path_params["study_uid"]
        if not is_uid(uid):
            return error_response(400, "bad request", "study UID must be a DICOM UID (digits and dots)")
        try:
            body: Any = loads_json((await _body(request)).decode("utf-8", errors="replace"))
        except InvalidInputError:
            return error_response(400, "bad request", "the body must be a JSON object {region_id, verdict, reviewer}")
        if not isinstance(body, dict):
            return error_response(400, "bad request", "the body must be a JSON object {region_id, verdict, reviewer}")
        try:
            if body.get("verdict") == FIRST_READ_VERDICT:  # on the first read: {finding, label, reviewer}
                updated = await asyncio.to_thread(get_service().worklist.correct_first_read, uid, body.get("finding"),
                                                  body.get("label"), body.get("reviewer"), actor=actor_of(request))
            else:
                updated = await asyncio.to_thread(get_service().worklist.add_review, uid, body.get("region_id"),
                                                  body.get("verdict"), body.get("reviewer"), actor=actor_of(request))
        except InvalidInputError as exc:
            return error_response(400, "bad request", str(exc))
        except InfrastructureError as exc:
            return error_response(503, "unavailable", str(exc))
        if updated is None:
            return error_response(404, "not found", "no result for this study")
        return JSONResponse(served(StudyView, updated))

    async def instance(request: Request) -> Response:
        uid, sop = request.path_params["study_uid"], request.path_params["sop_uid"]
        if not (is_uid(uid) and is_uid(sop)):
            return error_response(400, "bad request", "UIDs must be DICOM UIDs (digits and dots)")
        found = await asyncio.to_thread(get_service().instance_source, uid, sop)
        if found is None:
            return error_response(404, "not found", "this instance's file is not kept here")
        source, member = found  # a local file, or its bytes from the shared storage
        if member is None:
            if isinstance(source, bytes):
                return Response(source, media_type="application/dicom")
            return FileResponse(source, media_type="application/dicom")

        def read_member() -> bytes:
            with zipfile.ZipFile(io.BytesIO(source) if isinstance(source, bytes) else source) as archive:
                return archive.read(member)

        return Response(await asyncio.to_thread(read_member), media_type="application/dicom")

    async def export(request: Request) -> Response:
        service = get_service()  # paths relative to the state folder: no absolute server path leaves
        text = await asyncio.to_thread(lambda: service.worklist.export_manifest(root=service.home))
        return Response(text, media_type="text/csv",
                        headers={"content-disposition": 'attachment; filename="reviews-manifest.csv"'})

    return [
        Route("/reports", reports, methods=["POST"]),
        Route("/worklist", worklist, methods=["GET"]),
        Route("/worklist/rates", rates, methods=["GET"]),
        Route("/studies/{study_uid}", study, methods=["GET"]),
        Route("/studies/{study_uid}/reviews", reviews, methods=["POST"]),
        Route("/studies/{study_uid}/instances/{sop_uid}/dicom", instance, methods=["GET"]),
        Route("/reviews/manifest.csv", export, methods=["GET"]),
    ]
