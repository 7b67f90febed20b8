"""One study through the audit: fetch (DICOMweb) → the screening pipeline → reconcile with the
first read → for discordant studies only, a second pass with heatmaps for the report's pictures.

This is the work unit of every engine (worker processes, Ray actors); it never raises for a bad
study: every outcome is a row. A row is built as contract 2's typed
:class:`~secondreader.schema.AuditRow`, in one place (:func:`_audit_row`, for a screened study and
for a task that could not be screened alike), and handed on as its JSON (the checkpoint stores it
as is):

``key, study_instance_uid, accession_number, study_month, status, reason, source, priority_score,
route, rule, findings {code: {probability, positive, model, mode, applicable, routes}},
report ("available" | "missing"),
labels {code: label}, discordant, discordant_findings [codes], evidence {code: sentence},
images {code: {overlay, thumbnail}}, instances, bad_files [{source, reason}], timing_ms {stage: ms},
clock [started, finished] (Unix seconds, where the study ran: throughput without start-up)``

Discordance as contract 2, by :func:`secondreader.reports.firstread.interpret`: the codes the AI
calls positive that the report negates or does not mention (``uncertain`` counts as mentioned); a
finding the report cannot speak to is ``unknown`` and never counts. Only findings that route count
as the AI's positives: a shadow model's finding (``mode`` shadow) and a finding whose model does not
apply to the study (``applicable`` false: outside its scope, probability null) are recorded but are
neither positives nor negatives of the discordance. The report sentence behind a discordant label is
kept with UIDs, person names and paths masked.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from PIL import Image

from ..dicom.io import InputFile, InputProblem
from ..errors import InfrastructureError, SecondReaderError
from ..fileio import atomic_path
from ..logsafe import redact_report_text, study_key
from ..model.modes import ModelMode
from ..model.predictor import Predictor
from ..pipeline import ScreeningOptions, display_frames, parse_input, screen_inputs
from ..reports.firstread import interpret
from ..results import InstanceStatus, StudyResult
from ..schema import AuditFinding, AuditImages, AuditRow, BadFile, FindingMode, Label
from ..scoring.priority import StudyStatus, prioritise
from .archive import StudyTask, fetch_study
from .reports import UNKNOWN, assessable_codes

__all__ = ["StageOptions", "StudyAuditor", "failed_row", "finding_codes"]

logger = logging.getLogger(__name__)

THUMBNAIL_SIDE = 320

#: A row's label of a finding: the report's, or ``unknown`` (it cannot speak to the finding).
AuditLabel = Label | Literal["unknown"]


def finding_codes(predictors: Sequence[Predictor]) -> tuple[str, ...]:
    """The finding codes of the loaded models, in card order, without repeats."""
    return tuple(dict.fromkeys(f.code for p in predictors for f in p.card.findings))


@dataclass(frozen=True, slots=True)
class StageOptions:
    """``images_dir``: where the heatmap overlays and thumbnails of discordant studies go (``None``:
    no pictures). ``spool_dir``: where DICOMweb studies are fetched to, one folder per study, removed
    after it is screened."""

    images_dir: Path | None
    spool_dir: Path
    max_pixels: int = 64_000_000
    #: Each model's mode by name (live, shadow or off), as the site runs it.
    modes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Reconciled:
    """A study's first read against its findings: each code's label (``unknown``: the report cannot
    speak to it), the discordant codes and the (masked) report sentence behind each."""

    labels: dict[str, str] = field(default_factory=dict)
    discordant: list[str] = field(default_factory=list)
    evidence: dict[str, str | None] = field(default_factory=dict)


def _audit_row(task: StudyTask, key: str, result: StudyResult, *, own: bool, reconciled: _Reconciled,
               timing_ms: dict[str, float]) -> AuditRow:
    """The row of one study result of ``task``: what the archive and the reports file say about the
    study only where the result is the task's ``own`` study."""
    report = task.report if own else None
    return AuditRow(
        key=key,
        study_instance_uid=result.study_instance_uid,
        accession_number=task.accession_number if own else None,
        study_month=task.study_month if own else None,
        status=StudyStatus(result.status).value,
        reason=result.reason,
        source=result.source,
        priority_score=result.priority.score,
        route=result.priority.route.value,
        rule=result.priority.rule,
        findings={f.code: AuditFinding(probability=round(f.probability, 4) if f.probability is not None else None,
                                       positive=f.positive, model=f.model, mode=cast(FindingMode, f.mode),
                                       applicable=f.applicable, routes=f.routes)
                  for f in result.findings},
        report="available" if report is not None else "missing",
        labels=cast(dict[str, AuditLabel], reconciled.labels),
        discordant=bool(reconciled.discordant),
        discordant_findings=reconciled.discordant,
        evidence=reconciled.evidence,
        images={},
        instances=len(result.instances),
        bad_files=[BadFile(source=i.source, reason=i.reason) for i in result.instances
                   if i.status is InstanceStatus.FAILED],
        timing_ms=timing_ms,
    )


def failed_row(task: StudyTask, reason: str) -> dict[str, Any]:
    """The row of a task that could not be screened at all (fetch failed, a worker crashed): that
    of a failed result without instances."""
    failed = StudyResult(task.study_instance_uid, StudyStatus.FAILED, reason, instances=[],
                         priority=prioritise(StudyStatus.FAILED, []))
    return _audit_row(task, task.key, failed, own=True, reconciled=_Reconciled(), timing_ms={}).model_dump(mode="json")


class StudyAuditor:
    """Audits study tasks with the given predictors (real ones, or a proxy to a batched model)."""

    def __init__(self, predictors: Sequence[Predictor], options: StageOptions) -> None:
        self.predictors = list(predictors)
        self.options = options
        self.codes = finding_codes(self.predictors)
        self._screen = ScreeningOptions(predictors=self.predictors, max_pixels=options.max_pixels,
                                        explain=False, dicom_outputs=False, modes=self._modes())

    def _modes(self) -> dict[str, ModelMode]:
        return {name: ModelMode(mode) for name, mode in self.options.modes.items()}

    def audit(self, task: StudyTask) -> list[dict[str, Any]]:
        """Rows for one task (one per study result; normally exactly one)."""
        try:
            return self._audit(task)
        except Exception as exc:  # noqa: BLE001 - boundary: one bad study must not stop the audit
            logger.error("study %s: unexpected %s while auditing", study_key(task.study_instance_uid),
                         type(exc).__name__)
            return [failed_row(task, f"internal error while auditing ({type(exc).__name__})")]

    def _audit(self, task: StudyTask) -> list[dict[str, Any]]:
        t_start = time.perf_counter()
        started_at = time.time()
        fetch_ms = 0.0
        spool: Path | None = None
        items: list[InputFile | InputProblem] = [*task.problems, *task.inputs]
        try:
            if task.dicomweb_url is not None:
                assert task.study_instance_uid is not None
                spool = self.options.spool_dir / study_key(task.study_instance_uid)
                t0 = time.perf_counter()
                try:
                    items = list(fetch_study(task.dicomweb_url, task.study_instance_uid, spool))
                except InfrastructureError as exc:
                    return [failed_row(task, str(exc))]
                finally:
                    fetch_ms = (time.perf_counter() - t0) * 1000.0
                if not items:
                    return [failed_row(task, "the DICOMweb server returned no instance for this study")]
            results = list(screen_inputs(items, self._screen))
            rows = []
            for number, result in enumerate(results):
                own = result.study_instance_uid is not None and result.study_instance_uid == task.study_instance_uid
                key = task.key if (own or len(results) == 1) else f"{task.key}/{number}"
                row = self._row(task, key, result, own)
                timing = {**row.timing_ms, "fetch": fetch_ms}
                images: dict[str, AuditImages] = {}
                if row.discordant and self.options.images_dir is not None:
                    t0 = time.perf_counter()
                    images = self._pictures(items, result.study_instance_uid or "", row.discordant_findings)
                    timing["overlay"] = (time.perf_counter() - t0) * 1000.0
                timing["total"] = (time.perf_counter() - t_start) * 1000.0
                clock = [round(started_at, 3), round(time.time(), 3)]
                row = row.model_copy(update={"images": images, "timing_ms": timing, "clock": clock})
                rows.append(row.model_dump(mode="json"))
            return rows
        finally:
            if spool is not None:
                shutil.rmtree(spool, ignore_errors=True)

    def _row(self, task: StudyTask, key: str, result: StudyResult, own: bool) -> AuditRow:
        t0 = time.perf_counter()
        positive = [f.code for f in result.findings if f.positive and f.routes]  # live models, in scope
        reconciled = _Reconciled()
        report = task.report if own else None
        if report is not None and result.status.value == "screened":
            assessable = assessable_codes(report, self.codes)
            first_read = interpret(report, assessable, positive)
            discordant = list(first_read.discordant)
            reconciled = _Reconciled(
                labels={c: first_read.labels[c].value if c in first_read.labels else UNKNOWN for c in self.codes},
                discordant=discordant,
                evidence={c: redact_report_text(first_read.evidence[c]) if c in first_read.evidence else None
                          for c in discordant})
        timing = {k: round(v, 1) for k, v in result.timing_ms.items() if k != "total"}
        timing["reconcile"] = (time.perf_counter() - t0) * 1000.0
        return _audit_row(task, key, result, own=own, reconciled=reconciled, timing_ms=timing)

    def _pictures(self, items: Sequence[InputFile | InputProblem], study_uid: str,
                  codes: Sequence[str]) -> dict[str, AuditImages]:
        """Second pass with heatmaps (discordant studies only): per discordant code, the overlay
        of the image where the finding scored highest and a plain thumbnail of that image."""
        assert self.options.images_dir is not None
        images_dir = self.options.images_dir
        explained = ScreeningOptions(predictors=self.predictors, max_pixels=self.options.max_pixels,
                                     out_dir=images_dir, explain=True, dicom_outputs=False, modes=self._modes())
        result = next((r for r in screen_inputs(items, explained) if r.study_instance_uid == study_uid), None)
        if result is None:
            return {}
        pictures: dict[str, AuditImages] = {}
        for code in codes:
            regions = [r for r in result.regions if r.region.finding == code]
            overlays = [h for h in result.heatmaps if h.endswith(f"/{code}.png")]
            if regions:
                sop = regions[0].sop_instance_uid
                overlays = [h for h in overlays if f"/{sop}/" in h] or overlays
            if not overlays:
                continue
            overlay = overlays[0]
            sop = overlay.split("/")[1]
            thumbnail = self._thumbnail(items, sop, images_dir / study_uid / sop / "thumbnail.png")
            pictures[code] = AuditImages(overlay=f"images/{overlay}",
                                         thumbnail=f"images/{study_uid}/{sop}/thumbnail.png" if thumbnail else "")
        return pictures

    def _thumbnail(self, items: Sequence[InputFile | InputProblem], sop: str, target: Path) -> bool:
        if target.is_file():
            return True
        for item in items:
            parsed = parse_input(item)
            if parsed.instance is None or parsed.instance.sop_instance_uid != sop:
                continue
            try:
                frame = display_frames(parsed, max_pixels=self.options.max_pixels)[0]
            except (SecondReaderError, OSError):
                return False
            image = Image.fromarray((frame.clip(0, 1) * 255).astype("uint8"), mode="L")
            image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.BOX)
            with atomic_path(target) as tmp:
                image.save(tmp, format="PNG")
            return True
        return False
