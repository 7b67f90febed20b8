"""First reads: what the first radiologist reported, and how it compares with the AI (contract 2's
``first_read``).

A first read arrives as text (labelled by :mod:`.labeler`), as structured per-finding labels, or
both (structured labels win for the findings they name). It is matched to its images by Study
Instance UID or Accession Number, and may arrive before or after them.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidReportError
from .labeler import FINDING_TERMS, Label, mentions

__all__ = ["MAX_REPORT_CHARS", "Correction", "FirstRead", "ReportIn", "interpret", "report_from_json"]

#: A first read longer than this is not a radiology report (and would make the labeler slow).
MAX_REPORT_CHARS = 100_000

_LABEL_ALIASES = {
    "present": Label.PRESENT, "positive": Label.PRESENT, "yes": Label.PRESENT, "1": Label.PRESENT,
    "negated": Label.NEGATED, "absent": Label.NEGATED, "negative": Label.NEGATED, "no": Label.NEGATED,
    "0": Label.NEGATED,
    "uncertain": Label.UNCERTAIN, "possible": Label.UNCERTAIN, "-1": Label.UNCERTAIN,
    "not_mentioned": Label.NOT_MENTIONED, "": Label.NOT_MENTIONED,
}


def parse_label(value: object, finding: str) -> Label:
    """A structured label (``present``/``absent``/``uncertain``/``not_mentioned``, or 1/0/-1)."""
    key = str(value).strip().lower() if value is not None else ""
    if key not in _LABEL_ALIASES:
        # the finding is named only when it is one of ours: a client's key is never echoed
        named = f"finding {finding!r}" if finding in FINDING_TERMS else "a finding"
        raise InvalidReportError(f"{named}: label must be present, absent, uncertain or not_mentioned")
    return _LABEL_ALIASES[key]


@dataclass(frozen=True, slots=True)
class ReportIn:
    """A first read as received. ``labels``: structured per-finding labels, when the sender gave them."""

    study_instance_uid: str | None
    accession_number: str | None
    text: str = field(default="", repr=False)  # free text may name the patient: never in repr or logs
    labels: Mapping[str, Label] = field(default_factory=dict)
    source: str = "api"  # api | hl7 | fhir | csv

    def __post_init__(self) -> None:
        if not (self.study_instance_uid or self.accession_number):
            raise InvalidReportError("a first read needs a study_instance_uid or an accession_number")
        if not self.text.strip() and not self.labels:
            raise InvalidReportError("a first read needs report text or per-finding labels")
        if len(self.text) > MAX_REPORT_CHARS:
            raise InvalidReportError(f"report text is over {MAX_REPORT_CHARS} characters")
        if self.study_instance_uid is not None and len(self.study_instance_uid) > 64:
            raise InvalidReportError("study_instance_uid is longer than 64 characters")
        if self.accession_number is not None and len(self.accession_number) > 64:
            raise InvalidReportError("accession_number is longer than 64 characters")


@dataclass(frozen=True, slots=True)
class Correction:
    """A reviewer's verdict that the labeler mis-read the report for one finding: what the report
    really says (``label``), against what the labeler read (``labeler_label``)."""

    finding: str
    label: Label
    labeler_label: Label
    reviewer: str
    at: str

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label.value, "labeler_label": self.labeler_label.value, "reviewer": self.reviewer,
                "at": self.at}


@dataclass(frozen=True, slots=True)
class FirstRead:
    """The first read compared with the AI's findings (contract 2's ``first_read``, extended with
    the report text and, per finding, the sentence that decided its label, what the labeler read,
    where each label in effect comes from, and the reviewers' corrections)."""

    status: str  # none | negative | positive | uncertain
    labels: dict[str, Label]
    discordant: list[str]
    text: str = field(default="", repr=False)
    evidence: dict[str, str] = field(default_factory=dict)
    source: str | None = None
    received_at: str | None = None
    labeler: dict[str, Label] = field(default_factory=dict)  # the labeler's own reading of the text
    sources: dict[str, str] = field(default_factory=dict)  # per code: labeler | structured | reviewer
    corrections: dict[str, Correction] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "labels": {code: label.value for code, label in self.labels.items()},
            "discordant": list(self.discordant),
            "text": self.text,
            "evidence": dict(self.evidence),
            "source": self.source,
            "received_at": self.received_at,
            "labeler": {code: label.value for code, label in self.labeler.items()},
            "sources": dict(self.sources),
            "corrections": {code: c.to_json() for code, c in self.corrections.items()},
        }


_RANK = {Label.PRESENT: 3, Label.UNCERTAIN: 2, Label.NEGATED: 1, Label.NOT_MENTIONED: 0}


def interpret(report: ReportIn, codes: Sequence[str], ai_positive: Collection[str], *,
              received_at: str | None = None, corrections: Mapping[str, Correction] | None = None) -> FirstRead:
    """Label ``report`` for the finding ``codes`` and compare it with the codes the AI calls positive.

    A finding is *discordant* when the AI calls it positive and the report negates it or does not
    mention it; ``uncertain`` counts as mentioned (the first reader saw something). Structured labels
    from the sender win over the labeler; a reviewer's correction (``corrections``: "the labeler was
    wrong, the report says ...") wins over both. The sentence that decided the labeler's label stays
    in ``evidence``, so the reviewer sees what was mis-read.
    """
    known = [c for c in codes if c in FINDING_TERMS]
    labels = {code: Label.NOT_MENTIONED for code in codes}
    evidence: dict[str, str] = {}
    sources: dict[str, str] = {}
    if report.text.strip() and known:
        for mention in mentions(report.text, known):
            if _RANK[mention.label] > _RANK[labels[mention.finding]]:
                labels[mention.finding] = mention.label
                evidence[mention.finding] = mention.sentence
            elif mention.finding not in evidence:
                evidence[mention.finding] = mention.sentence
        sources.update({code: "labeler" for code in known})
    labeler = {code: labels[code] for code in known} if report.text.strip() else {}
    for code, label in report.labels.items():
        if code in labels:
            labels[code] = label
            sources[code] = "structured"
            evidence.pop(code, None)
    applied: dict[str, Correction] = {}
    for code, correction in (corrections or {}).items():
        if code in labels and correction.label is not labels[code]:
            applied[code] = correction
            labels[code] = correction.label
            sources[code] = "reviewer"
    values = set(labels.values())
    if Label.PRESENT in values:
        status = "positive"
    elif Label.UNCERTAIN in values:
        status = "uncertain"
    else:
        status = "negative"
    discordant = [c for c in codes if c in ai_positive and labels[c] in (Label.NEGATED, Label.NOT_MENTIONED)]
    return FirstRead(status, labels, discordant, report.text, evidence, report.source, received_at, labeler,
                     sources, applied)


def _optional_str(body: Mapping[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidReportError(f"{key} must be a string")
    return value.strip()


def report_from_json(body: object) -> ReportIn:
    """Contract 3's report body: ``{"study_instance_uid" or "accession_number", "text" or "findings"}``
    where ``findings`` maps finding codes to labels."""
    if not isinstance(body, Mapping):
        raise InvalidReportError("the report must be a JSON object")
    text = body.get("text") or ""
    if not isinstance(text, str):
        raise InvalidReportError("text must be a string")
    raw = body.get("findings") or {}
    if not isinstance(raw, Mapping):
        raise InvalidReportError("findings must be an object mapping finding codes to labels")
    labels = {str(code): parse_label(value, str(code)) for code, value in raw.items()}
    return ReportIn(_optional_str(body, "study_instance_uid"), _optional_str(body, "accession_number"),
                    text, labels, "api")
