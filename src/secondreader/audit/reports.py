"""First reads for an audit: a CSV of reports, or a file of HL7 v2 ORU messages.

CSV columns: ``study_instance_uid`` or ``accession_number`` (at least one on every row), then
``report_text`` and/or one column per finding code holding the report's label (``present``/
``absent``/``uncertain``/``not_mentioned`` or the CheXpert ``1``/``0``/``-1``/blank; structured labels
win over the text for the findings they name, as :func:`secondreader.reports.firstread.interpret`
does). Other columns are ignored (never copied anywhere). HL7 files are read with
:mod:`secondreader.reports.hl7`. A row or message that cannot be used is counted with its number
and why; it never stops the audit.

A finding the report cannot speak to (a label table without that finding's column, or text and no
labeler terms for that code) is labelled ``unknown`` and never counts as discordant.
"""

from __future__ import annotations

import csv
import hashlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError
from ..reports.firstread import ReportIn, parse_label
from ..reports.labeler import FINDING_TERMS, Label

__all__ = ["UNKNOWN", "ReportIndex", "ReportProblem", "assessable_codes", "load_reports", "report_from_dict",
           "report_to_dict"]

logger = logging.getLogger(__name__)

#: The label of a finding the report cannot be assessed for.
UNKNOWN = "unknown"


def assessable_codes(report: ReportIn, codes: Sequence[str]) -> list[str]:
    """The finding codes ``report`` can speak to: those it labels, and, when it has text, those the
    labeler has terms for."""
    has_text = bool(report.text.strip())
    return [c for c in codes if c in report.labels or (has_text and c in FINDING_TERMS)]


def report_to_dict(report: ReportIn) -> dict[str, Any]:
    return {"study_instance_uid": report.study_instance_uid, "accession_number": report.accession_number,
            "text": report.text, "labels": {k: v.value for k, v in report.labels.items()}, "source": report.source}


def report_from_dict(data: Mapping[str, Any]) -> ReportIn:
    return ReportIn(data["study_instance_uid"], data["accession_number"], data["text"],
                    {k: Label(v) for k, v in data["labels"].items()}, data["source"])


@dataclass(frozen=True, slots=True)
class ReportProblem:
    """A report row or message that could not be used (``where``: row or message number)."""

    where: str
    reason: str


@dataclass(slots=True)
class ReportIndex:
    """Reports by Study Instance UID and by accession number; ``fingerprint`` identifies the file."""

    by_study: dict[str, ReportIn] = field(default_factory=dict)
    by_accession: dict[str, ReportIn] = field(default_factory=dict)
    problems: list[ReportProblem] = field(default_factory=list)
    count: int = 0
    fingerprint: str = ""

    def __len__(self) -> int:
        return self.count

    def lookup(self, study_instance_uid: str | None, accession_number: str | None) -> ReportIn | None:
        if study_instance_uid and study_instance_uid in self.by_study:
            return self.by_study[study_instance_uid]
        if accession_number and accession_number in self.by_accession:
            return self.by_accession[accession_number]
        return None

    def add(self, where: str, report: ReportIn) -> None:
        """A later report for the same study (an addendum re-sent in full) replaces an earlier one."""
        self.count += 1
        if report.study_instance_uid:
            self.by_study[report.study_instance_uid] = report
        if report.accession_number:
            self.by_accession[report.accession_number] = report


def load_reports(path: Path, codes: Sequence[str]) -> ReportIndex:
    """Read a reports file: HL7 v2 when it begins with an MSH segment (MLLP framing allowed), else CSV.

    Raises
    ------
    InvalidInputError
        When the file cannot be read or a CSV has none of the columns it needs.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidInputError(f"reports file cannot be read ({exc.strerror or 'I/O error'})") from None
    text = data.decode("utf-8-sig", errors="replace")
    if text.lstrip("\x0b \r\n\t").startswith("MSH"):
        index = _hl7_reports(text)
    else:
        index = _csv_reports(text.splitlines(), codes)
    index.fingerprint = hashlib.sha256(data).hexdigest()
    if index.problems:
        logger.warning("%d report row(s) or message(s) could not be used", len(index.problems))
    return index


def _csv_reports(lines: Iterable[str], codes: Sequence[str]) -> ReportIndex:
    reader = csv.DictReader(lines)
    columns = [c.strip() for c in (reader.fieldnames or [])]
    reader.fieldnames = columns
    if "study_instance_uid" not in columns and "accession_number" not in columns:
        raise InvalidInputError("reports CSV needs a study_instance_uid or an accession_number column")
    label_columns = [c for c in columns if c in codes]
    if "report_text" not in columns and not label_columns:
        raise InvalidInputError("reports CSV needs a report_text column or a label column named after a finding "
                                f"code of the loaded models ({', '.join(codes) or 'none'})")
    index = ReportIndex()
    for number, row in enumerate(reader, start=2):  # row 1 is the header
        try:
            if row.get(None):  # DictReader's key for cells past the header
                # a report cut at an unquoted comma would be read as saying less than it does
                raise InvalidInputError("the row has more cells than the header: quote report text that "
                                        "holds commas")
            text = (row.get("report_text") or "").strip()
            # With text, a blank label cell leaves that finding to the text; without, blank means
            # not mentioned (the CheXpert convention).
            labels = {c: parse_label(row.get(c), c) for c in label_columns if not text or (row.get(c) or "").strip()}
            report = ReportIn((row.get("study_instance_uid") or "").strip() or None,
                              (row.get("accession_number") or "").strip() or None, text, labels, "csv")
        except InvalidInputError as exc:
            index.problems.append(ReportProblem(f"row {number}", str(exc)))
            continue
        index.add(f"row {number}", report)
    return index


def _hl7_reports(text: str) -> ReportIndex:
    from ..reports.hl7 import parse_message, report_from_oru, split_messages

    index = ReportIndex()
    for number, message in enumerate(split_messages(text), start=1):
        try:
            report = report_from_oru(parse_message(message))
        except InvalidInputError as exc:
            index.problems.append(ReportProblem(f"message {number}", str(exc)))
            continue
        index.add(f"message {number}", report)
    return index
