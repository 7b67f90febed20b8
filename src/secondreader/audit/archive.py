"""Archives → study tasks, the unit of work of an audit.

A *folder or zip* archive is indexed with header-only reads (Study Instance UID, Accession Number,
Study Date; no pixel data is read), so instances are grouped into studies before any study is
screened. A *DICOMweb* archive is indexed with QIDO-RS (a Study Date range, or a list of accession
numbers) and each study is fetched with WADO-RS by the worker that screens it.

A task carries what the audit needs to know about a study without patient data: its UID, the month
of its Study Date (for the by-month table), and its accession number (used to find its report;
written to the outputs only when asked).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

import pydicom
from pydicom.dataset import Dataset

from ..dicom.io import HEADER_ERRORS, InputFile, InputProblem, iter_inputs, pydicom_warnings_caught
from ..errors import InfrastructureError, InvalidInputError
from ..reports.firstread import ReportIn
from .reports import report_from_dict, report_to_dict

__all__ = ["DicomwebArchive", "FolderArchive", "StudyTask", "fetch_study", "fingerprint", "is_dicomweb_url"]

logger = logging.getLogger(__name__)

_INDEX_TAGS = ["StudyInstanceUID", "AccessionNumber", "StudyDate"]
_READ_ERRORS: tuple[type[BaseException], ...] = (OSError, zipfile.BadZipFile, *HEADER_ERRORS)


@dataclass(frozen=True, slots=True)
class StudyTask:
    """One study to audit (or one input that is not a readable study).

    ``key`` identifies it in the checkpoint: the Study Instance UID, or for an unreadable input a
    keyed pseudonym of where it was found (never a path).
    """

    key: str
    study_instance_uid: str | None
    accession_number: str | None = field(default=None, repr=False)
    study_month: str | None = None
    inputs: tuple[InputFile, ...] = ()
    problems: tuple[InputProblem, ...] = ()
    dicomweb_url: str | None = None
    report: ReportIn | None = field(default=None, repr=False)

    def with_report(self, report: ReportIn | None) -> StudyTask:
        return replace(self, report=report)

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key, "study_instance_uid": self.study_instance_uid,
            "accession_number": self.accession_number, "study_month": self.study_month,
            "inputs": [{"source": i.source, "path": str(i.path), "member": i.member, "size": i.size}
                       for i in self.inputs],
            "problems": [{"source": p.source, "reason": p.reason} for p in self.problems],
            "dicomweb_url": self.dicomweb_url,
            "report": report_to_dict(self.report) if self.report is not None else None,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StudyTask:
        return cls(
            key=data["key"], study_instance_uid=data["study_instance_uid"],
            accession_number=data["accession_number"], study_month=data["study_month"],
            inputs=tuple(InputFile(i["source"], Path(i["path"]), i["member"], i["size"]) for i in data["inputs"]),
            problems=tuple(InputProblem(p["source"], p["reason"]) for p in data["problems"]),
            dicomweb_url=data["dicomweb_url"],
            report=report_from_dict(data["report"]) if data["report"] is not None else None,
        )


def fingerprint(text: str) -> str:
    """A stable pseudonym for where an input was found (its path is never written anywhere):
    the same on every run, whatever the log secret, so a rerun recognises the input."""
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:20]


def _month(study_date: object) -> str | None:
    text = str(study_date or "").strip()
    if len(text) >= 6 and text[:6].isdigit() and 1 <= int(text[4:6]) <= 12:
        return f"{text[:4]}-{text[4:6]}"
    return None


def _text(value: object) -> str | None:
    text = str(value or "").strip()
    return text or None


class FolderArchive:
    """Files, folders (recursive) and zips, as ``secondreader screen`` reads them."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)

    def tasks(self) -> Iterator[StudyTask]:
        """Study tasks in order of first appearance; unreadable inputs come first, one task each."""
        studies: dict[str, list[InputFile]] = {}
        facts: dict[str, tuple[str | None, str | None]] = {}
        zips: dict[Path, zipfile.ZipFile] = {}
        try:
            for item in iter_inputs(self.paths):
                if isinstance(item, InputProblem):
                    yield StudyTask(f"input-{fingerprint(item.source + '::problem')}", None, problems=(item,))
                    continue
                header = _read_header(item, zips)
                uid = _text(header.get("StudyInstanceUID")) if header is not None else None
                if uid is None:
                    # The pipeline names what is wrong with it when the task runs.
                    where = f"{item.path.resolve()}::{item.member or ''}"
                    yield StudyTask(f"input-{fingerprint(where)}", None, inputs=(item,))
                    continue
                assert header is not None
                studies.setdefault(uid, []).append(item)
                if uid not in facts:
                    facts[uid] = (_text(header.get("AccessionNumber")), _month(header.get("StudyDate")))
        finally:
            for archive in zips.values():
                archive.close()
        for uid, members in studies.items():
            accession, month = facts[uid]
            yield StudyTask(uid, uid, accession, month, inputs=tuple(members))


def _read_header(item: InputFile, zips: dict[Path, zipfile.ZipFile]) -> Dataset | None:
    """The index attributes of one input, or ``None`` when it is not a readable DICOM header."""
    try:
        with contextlib.ExitStack() as stack:
            stream: IO[bytes]
            if item.member is None:
                stream = stack.enter_context(open(item.path, "rb"))
            else:
                if item.path not in zips:
                    zips[item.path] = zipfile.ZipFile(item.path)
                stream = stack.enter_context(zips[item.path].open(item.member))
            with pydicom_warnings_caught():
                ds = pydicom.dcmread(stream, stop_before_pixels=True, specific_tags=_INDEX_TAGS)
                # touch the values inside the warnings guard (pydicom converts lazily)
                for tag in _INDEX_TAGS:
                    ds.get(tag)
            return ds
    except _READ_ERRORS:
        return None


def is_dicomweb_url(archive: str) -> bool:
    return archive.startswith(("http://", "https://"))


class DicomwebArchive:
    """Studies found by QIDO-RS on a DICOMweb server: by Study Date range and/or accession numbers."""

    def __init__(self, url: str, *, date_range: tuple[str, str] | None = None,
                 accessions: Sequence[str] | None = None, timeout: float = 60.0) -> None:
        if not is_dicomweb_url(url):
            raise ValueError("url must be an http(s) DICOMweb base URL")
        if date_range is None and not accessions:
            raise InvalidInputError("a DICOMweb archive needs a study date range (--from/--to) or accession "
                                    "numbers (--accessions)")
        self.url = url.rstrip("/")
        self.date_range = date_range
        self.accessions = list(accessions or [])
        self.timeout = timeout

    def _search(self, filters: dict[str, str]) -> list[dict[str, Any]]:
        import requests

        try:
            with _client(self.url, self.timeout) as client:
                found: list[dict[str, Any]] = client.search_for_studies(
                    search_filters=filters, fields=_INDEX_TAGS, get_remaining=True)
        except (requests.RequestException, OSError) as exc:
            raise InfrastructureError(f"QIDO-RS query failed ({_http_reason(exc)})") from None
        return found

    def tasks(self) -> Iterator[StudyTask]:
        queries: list[dict[str, str]] = []
        if self.accessions:
            for accession in self.accessions:
                query = {"AccessionNumber": accession}
                if self.date_range is not None:
                    query["StudyDate"] = f"{self.date_range[0]}-{self.date_range[1]}"
                queries.append(query)
        else:
            assert self.date_range is not None
            queries.append({"StudyDate": f"{self.date_range[0]}-{self.date_range[1]}"})
        seen: set[str] = set()
        for query in queries:
            for found in self._search(query):
                with pydicom_warnings_caught():
                    ds = Dataset.from_json(found)
                    uid = _text(ds.get("StudyInstanceUID"))
                    found_accession = _text(ds.get("AccessionNumber"))
                    month = _month(ds.get("StudyDate"))
                if uid is None or uid in seen:
                    continue
                seen.add(uid)
                yield StudyTask(uid, uid, found_accession, month, dicomweb_url=self.url)


@contextlib.contextmanager
def _client(url: str, timeout: float) -> Iterator[Any]:
    """A DICOMweb client whose HTTP session (and its pooled sockets) is closed after use."""
    from dicomweb_client.api import DICOMwebClient
    from dicomweb_client.session_utils import create_session

    session = create_session()
    session.request = _with_timeout(session.request, timeout)  # type: ignore[method-assign]
    try:
        yield DICOMwebClient(url, session=session)
    finally:
        session.close()


def _with_timeout(request: Any, timeout: float) -> Any:
    def call(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("timeout", timeout)
        return request(*args, **kwargs)
    return call


def _http_reason(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if response is not None and getattr(response, "status_code", None):
        return f"HTTP {response.status_code}"
    return type(exc).__name__


def fetch_study(url: str, study_instance_uid: str, spool: Path, *, timeout: float = 120.0) -> list[InputFile]:
    """WADO-RS: the study's instances as Part 10 files under ``spool`` (their original transfer
    syntax, ``application/dicom; transfer-syntax=*``). Each file is named after its SOP Instance UID.

    Raises
    ------
    InfrastructureError
        When the server cannot be reached or answers with an error.
    """
    import requests

    spool.mkdir(parents=True, exist_ok=True)
    files: list[InputFile] = []
    try:
        with _client(url, timeout) as client:
            for number, ds in enumerate(client.iter_study(study_instance_uid,
                                                          media_types=(("application/dicom", "*"),)), start=1):
                sop = _text(ds.get("SOPInstanceUID")) or f"instance-{number}"
                target = spool / f"{number:05d}.dcm"
                with pydicom_warnings_caught():
                    ds.save_as(target, enforce_file_format=True)
                files.append(InputFile(source=f"{sop}.dcm", path=target, size=target.stat().st_size))
    except (requests.RequestException, OSError) as exc:
        raise InfrastructureError(f"WADO-RS retrieval failed ({_http_reason(exc)})") from None
    except HEADER_ERRORS:
        raise InfrastructureError("WADO-RS answer could not be parsed as DICOM") from None
    return files
