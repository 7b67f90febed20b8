"""The study result (contract 2) as value objects, and their JSON form."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

from .explain.regions import Region
from .scoring.priority import FindingResult, Priority, StudyStatus

__all__ = ["ARTIFACT_STATUSES", "InstanceResult", "InstanceStatus", "RegionResult", "StudyResult", "WrittenOutputs",
           "finding_json"]


#: ``encode`` is the overlays' and DICOM outputs' encoding, reported apart from the screening: it is
#: 0 in a result answered before its outputs were written (``artifacts.status`` "pending").
TIMING_STAGES = ("load", "preprocess", "inference", "postprocess", "encode", "total")

#: ``artifacts.status``: ``none`` (nothing to write), ``pending`` (listed, being written),
#: ``written``, or ``failed`` (the lists hold what was written).
ARTIFACT_STATUSES = ("none", "pending", "written", "failed")


class InstanceStatus(str, Enum):
    SCREENED = "screened"
    INELIGIBLE = "ineligible"
    FAILED = "failed"
    DUPLICATE = "duplicate"


@dataclass(frozen=True, slots=True)
class InstanceResult:
    source: str
    sop_instance_uid: str | None
    status: InstanceStatus
    reason: str | None = None
    rule_ids: tuple[str, ...] = ()
    #: Finding code → why its model does not apply to this instance (outside the model's scope).
    not_applicable: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", InstanceStatus(self.status))
        if "/" in self.source or "\\" in self.source:
            raise ValueError("source must be a file name, never a path")
        if self.status in (InstanceStatus.INELIGIBLE, InstanceStatus.FAILED) and not self.reason:
            raise ValueError(f"a {self.status.value} instance needs a reason")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "source": self.source,
            "sop_instance_uid": self.sop_instance_uid,
            "status": self.status.value,
            "reason": self.reason,
        }
        if self.rule_ids:
            out["rules"] = list(self.rule_ids)
        if self.not_applicable:
            out["not_applicable"] = dict(self.not_applicable)
        return out


@dataclass(frozen=True, slots=True)
class RegionResult:
    region_id: str
    region: Region
    score: float
    sop_instance_uid: str

    def to_json(self) -> dict[str, Any]:
        r = self.region
        return {
            "id": self.region_id,
            "finding": r.finding,
            "score": round(self.score, 4),
            "sop_instance_uid": self.sop_instance_uid,
            "frame": r.frame,
            "bbox": list(r.bbox),
            "centroid": list(r.centroid),
            "area_mm2": r.area_mm2,
            "area_px": r.area_px,
        }


@dataclass(frozen=True, slots=True)
class WrittenOutputs:
    """What writing a study's outputs produced: paths relative to the output folder."""

    heatmaps: list[str]
    dicom: list[str]
    status: str
    encode_ms: float

    def artifacts(self) -> dict[str, Any]:
        return artifacts_json(self.heatmaps, self.dicom, self.status)


def artifacts_json(heatmaps: list[str], dicom: list[str], status: str) -> dict[str, Any]:
    """Contract 2's ``artifacts``: output files relative to the output folder, and their status."""
    if status not in ARTIFACT_STATUSES:
        raise ValueError(f"artifacts status must be one of {ARTIFACT_STATUSES}, not {status!r}")
    return {"heatmaps": list(heatmaps), "dicom": list(dicom), "status": status}


def finding_json(f: FindingResult) -> dict[str, Any]:
    """One ``findings[]`` entry of contract 2. ``routes`` is true only for a live model's finding
    that applies to the study; a not-applicable one has ``"probability": null``, is not positive
    (nor a negative: ``applicable`` false) and says why in ``not_applicable_reason``."""
    return {
        "code": f.code,
        "probability": round(f.probability, 4) if f.probability is not None else None,
        "positive": f.positive,
        "operating_point": round(f.operating_point, 4),
        "model": f.model,
        "routes": f.routes,
        "mode": f.mode,
        "applicable": f.applicable,
        "not_applicable_reason": f.not_applicable_reason,
    }


class DeferredOutputs(Protocol):
    def write(self) -> WrittenOutputs: ...


@dataclass(slots=True)
class StudyResult:
    study_instance_uid: str | None
    status: StudyStatus
    reason: str | None
    instances: list[InstanceResult]
    priority: Priority
    findings: list[FindingResult] = field(default_factory=list)
    regions: list[RegionResult] = field(default_factory=list)
    models: list[dict[str, str]] = field(default_factory=list)
    heatmaps: list[str] = field(default_factory=list)
    dicom: list[str] = field(default_factory=list)
    artifacts_status: str = "none"
    #: The outputs still to be written when screening deferred them (never in ``to_json``).
    outputs: DeferredOutputs | None = field(default=None, repr=False)
    timing_ms: dict[str, float] = field(default_factory=dict)
    source: str | None = None  # only for results without a study UID
    modality: str | None = None  # of the study's instances (CR, DX...), for worklists
    #: From the instances' headers, to match first reads; never in ``to_json`` (see CxrInstance).
    accession_number: str | None = field(default=None, repr=False)
    #: Where each screened instance's bytes are: SOP Instance UID → (file, zip member or None).
    #: For the service (viewer, training export); never in ``to_json``.
    files: dict[str, tuple[str, str | None]] = field(default_factory=dict, repr=False)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "study_instance_uid": self.study_instance_uid,
            "status": StudyStatus(self.status).value,
            "reason": self.reason,
            "instances": [i.to_json() for i in self.instances],
            "priority": {
                "score": self.priority.score,
                "route": self.priority.route.value,
                "rule": self.priority.rule,
            },
            "findings": [finding_json(f) for f in self.findings],
            "regions": [r.to_json() for r in self.regions],
            "first_read": {"status": "none", "labels": {}, "discordant": []},
            "artifacts": artifacts_json(self.heatmaps, self.dicom, self.artifacts_status),
            "timing_ms": {k: round(self.timing_ms.get(k, 0.0), 1) for k in TIMING_STAGES},
            "models": list(self.models),
            "modality": self.modality,
        }
        if self.source is not None:
            out["source"] = self.source
        return out
