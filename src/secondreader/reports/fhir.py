"""First reads as FHIR R4 ``DiagnosticReport`` resources (``application/fhir+json``).

Identifiers: the Study Instance UID from an identifier with system ``urn:dicom:uid`` (value
``urn:oid:…``) on the report or on a contained ``ImagingStudy``; the Accession Number from an
identifier typed ``ACSN`` (HL7 v2 table 0203) on the report, a contained ``ServiceRequest`` or
``ImagingStudy``. Text: ``conclusion``, then ``presentedForm`` attachments in ``text/plain``, then
the narrative (``text.div``) without its markup. ``conclusionCode`` SNOMED CT codes for the
findings the models know (:mod:`secondreader.vocabulary`) count as structured "present" labels.
"""

from __future__ import annotations

import base64
import binascii
import html
import re
from collections.abc import Iterator, Mapping
from typing import Any

from ..errors import InvalidReportError
from ..vocabulary import finding_for_coding
from .firstread import ReportIn
from .labeler import Label

__all__ = ["report_from_fhir"]

_UNUSABLE = {"cancelled", "entered-in-error"}
_TAGS = re.compile(r"<[^>]*>")


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _identifiers(resource: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    for identifier in _list(resource.get("identifier")):
        if isinstance(identifier, Mapping):
            yield identifier


def _is_accession(identifier: Mapping[str, Any]) -> bool:
    kind = identifier.get("type")
    codings = _list(kind.get("coding")) if isinstance(kind, Mapping) else []
    return any(isinstance(c, Mapping) and c.get("code") == "ACSN" for c in codings)


def _study_uid(identifier: Mapping[str, Any]) -> str | None:
    value = identifier.get("value")
    if identifier.get("system") == "urn:dicom:uid" and isinstance(value, str):
        uid = value.removeprefix("urn:oid:").strip()
        if not re.fullmatch(r"[0-9.]{1,64}", uid):
            raise InvalidReportError("DiagnosticReport has a malformed Study Instance UID")
        return uid
    return None


def report_from_fhir(body: object) -> ReportIn:
    """The first read in a FHIR DiagnosticReport; raises InvalidReportError naming what is wrong."""
    if not isinstance(body, Mapping) or body.get("resourceType") != "DiagnosticReport":
        raise InvalidReportError("FHIR body must be a DiagnosticReport resource")
    if body.get("status") in _UNUSABLE:
        raise InvalidReportError("DiagnosticReport status is not a usable first read (cancelled or "
                                 "entered in error)")
    resources: list[Mapping[str, Any]] = [body]
    resources += [r for r in _list(body.get("contained")) if isinstance(r, Mapping)]
    study_uid: str | None = None
    accession: str | None = None
    for resource in resources:
        for identifier in _identifiers(resource):
            study_uid = study_uid or _study_uid(identifier)
            value = identifier.get("value")
            if accession is None and _is_accession(identifier) and isinstance(value, str) and value.strip():
                accession = value.strip()
    parts: list[str] = []
    conclusion = body.get("conclusion")
    if isinstance(conclusion, str) and conclusion.strip():
        parts.append(conclusion.strip())
    for form in _list(body.get("presentedForm")):
        if not isinstance(form, Mapping) or not str(form.get("contentType", "")).startswith("text/plain"):
            continue
        try:
            parts.append(base64.b64decode(str(form.get("data", "")), validate=True).decode("utf-8"))
        except (binascii.Error, UnicodeDecodeError):
            raise InvalidReportError("DiagnosticReport.presentedForm is not base64 UTF-8 text") from None
    narrative = body.get("text")
    if isinstance(narrative, Mapping) and isinstance(narrative.get("div"), str):
        div = html.unescape(_TAGS.sub(" ", re.sub(r"<br\s*/?>|</p>", "\n", narrative["div"])))
        if div.strip() and not parts:
            parts.append(div.strip())
    labels: dict[str, Label] = {}
    for concept in _list(body.get("conclusionCode")):
        codings = _list(concept.get("coding")) if isinstance(concept, Mapping) else []
        for coding in codings:
            finding = (finding_for_coding(str(coding.get("system", "")), str(coding.get("code", "")))
                       if isinstance(coding, Mapping) else None)
            if finding is not None:
                labels[finding] = Label.PRESENT
    return ReportIn(study_uid, accession, "\n".join(parts), labels, "fhir")
