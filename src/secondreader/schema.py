"""Contract 2 (the study result) as typed pydantic models, and the JSON Schema generated from them.

The pipeline builds results as the value objects of :mod:`secondreader.results`; their
``to_json()`` is what the CLI writes. These models describe that JSON exactly (every key, its type,
null where it may be null, the closed vocabularies), and the forms built from it: the result as the
worklist keeps it (:class:`StoredResult`), as the HTTP API shows a study (:class:`StudyView`), a
worklist row (:class:`WorklistItem`) and an audit row (:class:`AuditRow`). The HTTP layer sends
results through them (:func:`served`), so a result that breaks the contract is an error there, not
a surprise in the viewer; the store and the worklist parse a result through them (:func:`parsed`)
as it comes in and as it is read back, and read it by attribute.

A key that a producer leaves out when it holds nothing (``source`` of a result with a study UID,
``rules`` of an instance without any, the first read's report text where no report came) is
optional in the schema and left out again on the way out; every other key is required.

``src/secondreader/result.schema.json`` is generated from these models and committed (the viewer's
TypeScript types are generated from it); ``tests/unit/test_result_schema.py`` fails when it is
stale. Regenerate it with::

    python -m secondreader.schema > src/secondreader/result.schema.json
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
)
from pydantic.json_schema import GenerateJsonSchema, models_json_schema

from .errors import ProcessingError

__all__ = ["AuditRow", "FirstRead", "JobView", "ReportAnswer", "ResultContractError", "StoredResult", "StudyResult",
           "StudyView", "WorklistItem", "WorklistPage", "parsed", "result_schema", "served"]

logger = logging.getLogger(__name__)

# The closed vocabularies (tests/unit/test_result_schema.py checks them against the enums in the code).
StudyStatus = Literal["screened", "ineligible", "failed"]
InstanceStatus = Literal["screened", "ineligible", "failed", "duplicate"]
Route = Literal["urgent", "review", "none"]
FindingMode = Literal["live", "shadow"]
ModelMode = Literal["live", "shadow", "off"]
ArtifactStatus = Literal["none", "pending", "written", "failed"]
FirstReadStatus = Literal["none", "negative", "positive", "uncertain"]
Label = Literal["present", "negated", "uncertain", "not_mentioned"]
LabelSource = Literal["labeler", "structured", "reviewer"]
ReportSource = Literal["api", "hl7", "fhir", "csv"]
State = Literal["new", "screened", "awaiting_review", "reviewed", "ineligible", "failed"]
Verdict = Literal["confirmed_miss", "false_positive", "already_reported"]
JobStatus = Literal["queued", "running", "done", "failed"]

Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Text = Annotated[str, Field(min_length=1)]


def _required_as_produced(schema: dict[str, Any], model: type[BaseModel]) -> None:
    """In the schema, every key is required except those its producer leaves out when unset (a
    default in the model only accepts results stored before the key existed)."""
    omitted: frozenset[str] = getattr(model, "omitted_when_unset", frozenset())
    required = [name for name in schema.get("properties", {}) if name not in omitted]
    if required:
        schema["required"] = required
    else:
        schema.pop("required", None)


class _Contract(BaseModel):
    """A JSON object of contract 2: no key beyond those declared; booleans, integers and strings
    as such (strict), never coerced from another type."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, json_schema_extra=_required_as_produced)

    #: Keys left out of the JSON when the input left them out (see the module's docstring).
    omitted_when_unset: ClassVar[frozenset[str]] = frozenset()

    @model_serializer(mode="wrap")
    def _leave_out_unset(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for key in self.omitted_when_unset - self.model_fields_set:
            data.pop(key, None)
        return data


# -- the study result (StudyResult.to_json) ---------------------------------------------------------


class Instance(_Contract):
    """One input file of the study: a file name (never a path), what became of it and why."""

    omitted_when_unset: ClassVar[frozenset[str]] = frozenset({"rules", "not_applicable"})

    source: str = Field(pattern=r"^[^/\\]*$", description="The file's name, never a path.")
    sop_instance_uid: str | None
    status: InstanceStatus
    reason: str | None = Field(description="Why it was not screened; required unless screened.")
    rules: list[str] = Field(default_factory=list, description="The eligibility rules that decided.")
    not_applicable: dict[str, Text] = Field(
        default_factory=dict, description="Finding code -> why its model does not apply to this image.")


class Priority(_Contract):
    """The study's priority: a score 0-100, the route and the rule that decided."""

    score: int = Field(ge=0, le=100)
    route: Route
    rule: Text


class Finding(_Contract):
    """One finding from one model. Not applicable (outside the model's scope): probability null,
    neither positive nor negative, and ``not_applicable_reason`` says why."""

    code: str
    probability: Probability | None = Field(description="Calibrated; null where the model does not apply.")
    positive: bool
    operating_point: float = Field(gt=0.0, lt=1.0)
    model: str = Field(pattern=r"^.+@.+$", description="name@version of the model card.")
    # defaults: how a result stored before modes and scopes reads (live, routing, applicable)
    routes: bool = True
    mode: FindingMode = "live"
    applicable: bool = True
    not_applicable_reason: str | None = None


class Region(_Contract):
    """A flagged region, in pixel coordinates of the source image's Pixel Data (rows, columns)."""

    id: Text = Field(description="Unique in the study and stable.")
    finding: str
    score: float
    sop_instance_uid: str
    frame: int = Field(ge=1, description="1-based.")
    bbox: list[int] = Field(min_length=4, max_length=4,
                            description="[row_min, col_min, row_max, col_max): start < stop in each axis.")
    centroid: list[float] = Field(min_length=2, max_length=2, description="[row, col], inside the box.")
    area_mm2: float | None = Field(gt=0.0, description="Null where the pixel spacing is unknown.")
    area_px: int = Field(ge=0)


class Correction(_Contract):
    """A reviewer's verdict that the labeler mis-read the report for one finding."""

    label: Label
    labeler_label: Label
    reviewer: str
    at: str


class FirstRead(_Contract):
    """The first radiologist's report compared with the AI's findings. Without a report, only
    ``status`` (none), ``labels`` and ``discordant`` are present."""

    omitted_when_unset: ClassVar[frozenset[str]] = frozenset(
        {"text", "evidence", "source", "received_at", "labeler", "sources", "corrections"})

    status: FirstReadStatus
    labels: dict[str, Label] = Field(description="Finding code -> what the report says, in effect.")
    discordant: list[str] = Field(description="Codes the AI calls positive that the report negates or omits.")
    text: str = Field(default="", description="The report text.")
    evidence: dict[str, str] = Field(default_factory=dict, description="Finding code -> the sentence behind its label.")
    source: ReportSource | None = None
    received_at: str | None = None
    labeler: dict[str, Label] = Field(default_factory=dict, description="The labeler's own reading of the text.")
    sources: dict[str, LabelSource] = Field(default_factory=dict, description="Where each label in effect comes from.")
    corrections: dict[str, Correction] = Field(default_factory=dict)


class Artifacts(_Contract):
    """Output files, relative to the output folder, and whether they are written yet."""

    heatmaps: list[str]
    dicom: list[str]
    status: ArtifactStatus


class Timing(_Contract):
    """Milliseconds per stage (``encode``: the outputs, 0 until they are written)."""

    load: float
    preprocess: float
    inference: float
    postprocess: float
    encode: float
    total: float


class ModelRef(_Contract):
    """A loaded model and the mode it ran in (``off``: not run)."""

    name: str
    version: str
    device_uid: str
    mode: ModelMode


class StudyResult(_Contract):
    """Contract 2: one study's result, as ``secondreader screen`` writes it. A file without a
    readable Study Instance UID is a result of its own: null UID, failed, and its ``source``."""

    omitted_when_unset: ClassVar[frozenset[str]] = frozenset({"source"})

    study_instance_uid: str | None
    status: StudyStatus
    reason: str | None = Field(description="A short sentence, never patient data; null when screened.")
    instances: list[Instance] = Field(min_length=1)
    priority: Priority
    findings: list[Finding]
    regions: list[Region]
    first_read: FirstRead
    artifacts: Artifacts
    timing_ms: Timing
    models: list[ModelRef] = Field(default_factory=list)
    modality: str | None = None
    source: str | None = Field(default=None, description="Only in a result without a study UID.")


class CorrectionEntry(_Contract):
    """A reviewer's correction of the labeler, as the worklist keeps every one (in order)."""

    finding: str
    label: Label
    labeler_label: Label
    reviewer: str
    at: str
    first_read_id: int


class StoredResult(StudyResult):
    """The result as the worklist keeps it: ``priority`` is the routed priority (the AI's with the
    first read), ``ai_priority`` the AI's alone, and the reviewers' corrections of the labeler.
    ``POST /v1/reports`` answers with it."""

    omitted_when_unset: ClassVar[frozenset[str]] = frozenset({"source", "first_read_corrections"})

    ai_priority: Priority
    first_read_corrections: list[CorrectionEntry] = Field(default_factory=list)


class Review(_Contract):
    """A radiologist's verdict on one region."""

    region_id: str
    finding: str
    verdict: Verdict
    reviewer: str
    at: str


class StudyView(StoredResult):
    """``GET /v1/studies/{uid}``: the kept result with the worklist's state, the time it has
    waited (``priority`` then includes any escalation for waiting) and its reviews."""

    state: State
    waiting_seconds: int = Field(description="Since the study was received (replicas' clocks may differ a little).")
    reviews: list[Review]


# -- answers built from results ------------------------------------------------------------------


class JobView(_Contract):
    """``GET /v1/jobs/{id}`` and ``POST /v1/screen``: a job's status and, once done, its studies
    (as ``GET /v1/studies/{uid}`` shows them; a file without a study UID as its bare result)."""

    omitted_when_unset: ClassVar[frozenset[str]] = frozenset({"reason"})

    job_id: str
    status: JobStatus
    studies: list[StudyView | StudyResult]
    reason: str | None = None


class ReportAnswer(_Contract):
    """``POST /v1/reports`` when the first read matched several studies."""

    studies: list[StoredResult]


class WorklistFirstRead(_Contract):
    """The first read's status and the discordant finding codes."""

    status: FirstReadStatus
    discordant: list[str]


class WorklistFinding(_Contract):
    """A finding as the worklist summarises it."""

    code: str
    probability: Probability | None
    positive: bool
    routes: bool
    mode: FindingMode
    applicable: bool


class WorklistItem(_Contract):
    """A row of ``GET /v1/worklist``: a summary of the study's kept result (``regions``: how many)."""

    study_instance_uid: str
    study_key: str = Field(description="The study's pseudonymous key, as in the logs.")
    state: State
    status: StudyStatus
    priority: Priority
    ai_priority: Priority
    waiting_seconds: int = Field(description="Since the study was received (replicas' clocks may differ a little).")
    received_at: str
    first_read: WorklistFirstRead
    findings: list[WorklistFinding]
    regions: int = Field(ge=0)
    modality: str | None


class WorklistPage(_Contract):
    """``GET /v1/worklist``: the rows, highest priority first."""

    items: list[WorklistItem]


class AuditFinding(_Contract):
    """A finding as the audit row keeps it (by code)."""

    probability: Probability | None
    positive: bool
    model: str
    mode: FindingMode
    applicable: bool
    routes: bool


class AuditImages(_Contract):
    """A discordant finding's pictures, relative to the audit's output folder (no thumbnail: "")."""

    overlay: str
    thumbnail: str


class BadFile(_Contract):
    """An instance of the study that could not be screened, and why."""

    source: str
    reason: str | None


class AuditRow(_Contract):
    """One study's row of ``secondreader audit`` (its checkpoint and ``audit.parquet``), built from
    the study's result and its first read. ``labels`` adds ``unknown``: the report cannot speak to
    the finding."""

    omitted_when_unset: ClassVar[frozenset[str]] = frozenset({"clock"})

    key: str
    study_instance_uid: str | None
    accession_number: str | None
    study_month: str | None
    status: StudyStatus
    reason: str | None
    source: str | None
    priority_score: int = Field(ge=0, le=100)
    route: Route
    rule: Text
    findings: dict[str, AuditFinding]
    report: Literal["available", "missing"]
    labels: dict[str, Label | Literal["unknown"]]
    discordant: bool
    discordant_findings: list[str]
    evidence: dict[str, str | None]
    images: dict[str, AuditImages]
    instances: int = Field(ge=0)
    bad_files: list[BadFile]
    timing_ms: dict[str, float]
    clock: list[float] = Field(default_factory=list, min_length=2, max_length=2,
                               description="[started, finished], Unix seconds (not in a row that failed early).")


#: Every model of the schema, the study result first (the schema's root).
MODELS: tuple[type[_Contract], ...] = (StudyResult, StoredResult, StudyView, JobView, ReportAnswer, WorklistItem,
                                       WorklistPage, AuditRow)


class _Untitled(GenerateJsonSchema):
    """Titles on the models only: a key's title would name a type of its own in the viewer's types."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False


def result_schema() -> dict[str, Any]:
    """The JSON Schema (2020-12) of contract 2: a study result at the root, and every model in
    ``$defs`` (validate another form with ``{"$ref": "#/$defs/StudyView"}`` and these ``$defs``)."""
    _, defs = models_json_schema([(model, "validation") for model in MODELS], ref_template="#/$defs/{model}",
                                 schema_generator=_Untitled)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "SecondreaderResult",
        "description": "Contract 2 of secondreader (docs/contracts.md): the study result, and the forms built "
                       "from it in $defs. Generated by `python -m secondreader.schema`; do not edit.",
        "$ref": "#/$defs/StudyResult",
        "$defs": defs["$defs"],
    }


def schema_text() -> str:
    """The committed file's text."""
    return json.dumps(result_schema(), indent=2, ensure_ascii=False) + "\n"


class ResultContractError(ProcessingError):
    """A result about to be served breaks contract 2: a bug on our side. The message names the
    keys and the kinds of error, never a value."""


_PARTS: tuple[type[_Contract], ...] = (Instance, Priority, Finding, Region, FirstRead, Correction, Artifacts, Timing,
                                       ModelRef, CorrectionEntry, Review, WorklistFirstRead, WorklistFinding,
                                       AuditFinding, AuditImages, BadFile)
#: The contract's own keys and model names: a validation error's location shows only these.
_KNOWN_KEYS = frozenset(name for model in (*MODELS, *_PARTS) for name in (*model.model_fields, model.__name__))

M = TypeVar("M", bound=BaseModel)


def _where(loc: tuple[int | str, ...]) -> str:
    """A location, with anything that is not one of the contract's own keys (a dict's key, which
    a client may have chosen) masked."""
    return ".".join(str(part) if isinstance(part, int) or part in _KNOWN_KEYS else "*" for part in loc) or "(root)"


def parsed(model: type[M], data: Any, *, use: str = "used") -> M:
    """``data`` as a ``model`` (validated), or ResultContractError, logged with where the result
    breaks the contract and how, never a value from it (``use``: what is not done with it then)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = sorted({f"{_where(e['loc'])}: {e['type']}" for e in exc.errors(include_input=False,
                                                                                 include_url=False)})
        shown = "; ".join(problems[:10]) + (f"; and {len(problems) - 10} more" if len(problems) > 10 else "")
        logger.error("a %s breaks contract 2 and is not %s: %s", model.__name__, use, shown)
        raise ResultContractError(f"a {model.__name__} breaks contract 2 ({len(problems)} problem(s))") from None


def served(model: type[M], data: Any) -> dict[str, Any]:
    """``data`` as ``model`` serves it (validated, and as JSON-able values), or ResultContractError
    (see :func:`parsed`)."""
    return parsed(model, data, use="served").model_dump(mode="json")


def main() -> None:
    sys.stdout.write(schema_text())


if __name__ == "__main__":
    main()
