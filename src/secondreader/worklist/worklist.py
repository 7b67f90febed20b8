"""The second-review worklist: results and first reads in, routed studies out, verdicts recorded.

Every change to a study (a new result, a first read, a verdict) happens in one transaction that
locks the study's row, so a report arriving while its images are being screened is never lost or
applied twice. The study's result JSON (contract 2) is kept up to date: ``priority`` is the routed
priority, ``ai_priority`` the AI's alone, ``first_read`` the report compared with the findings.

Results come in typed (:data:`secondreader.store.store.ResultInput`: contract 2's model, the
pipeline's value object, or its JSON, validated on the way in) and a kept result is read back
through the store's boundary (:func:`~secondreader.store.store.stored_result`): fields are read by
attribute. What is written into a kept result's JSON is only the keys that change, so the rest of
it stays as its producer wrote it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from pydantic import BaseModel, ConfigDict
from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session

from ..errors import InvalidInputError, InvalidReportError
from ..logsafe import study_key
from ..reports.firstread import Correction, FirstRead, ReportIn, interpret
from ..reports.labeler import FINDING_TERMS, Label
from ..schema import Artifacts, CorrectionEntry, StudyStatus, WorklistFinding, WorklistFirstRead, WorklistItem, parsed
from ..schema import Finding as ResultFinding
from ..schema import Priority as PriorityJson
from ..schema import State as StateName
from ..scoring.priority import Priority, Route
from ..store.models import AuditEvent, Finding, FirstReadRow, Instance, RegionRow, Result, Review, Study, utcnow
from ..store.store import KeptResult, Store, kept_result, stored_result, write_result
from .routing import RoutingRules, Situation, load_rules
from .states import State, check_transition

if TYPE_CHECKING:
    from ..store.store import ResultInput

__all__ = ["FIRST_READ_VERDICT", "VERDICTS", "Worklist"]

logger = logging.getLogger(__name__)

VERDICTS = ("confirmed_miss", "false_positive", "already_reported")
#: The verdict on a first read rather than a region: the labeler mis-read the report for a finding.
FIRST_READ_VERDICT = "labeler_wrong"
#: Where a study's result keeps the reviewers' corrections of the labeler (every one, in order; the
#: latest per finding for the first read in effect applies), so a re-screen keeps them.
_CORRECTIONS = "first_read_corrections"
_NO_FIRST_READ: dict[str, Any] = {"status": "none", "labels": {}, "discordant": []}


def _iso(moment: datetime) -> str:
    if moment.tzinfo is None:  # SQLite hands back naive datetimes (stored as UTC)
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _priority_json(priority: Priority) -> PriorityJson:
    return PriorityJson(score=priority.score, route=priority.route.value, rule=priority.rule)


class _KeptFindings(BaseModel):
    """Only the findings of a kept result, typed (the flag rates read every screened study's: the
    rest of each result is not parsed)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    findings: list[ResultFinding]


@dataclass(frozen=True, slots=True)
class ReportOutcome:
    """``studies``: the updated results of the studies the report matched (empty: kept for later)."""

    studies: list[dict[str, Any]]


def export_split(study_instance_uid: str | None) -> str:
    """The training split of a study's verdicts in the exported manifest: one study in five
    validates (calibration, operating point), one in five is the untouched test, the rest train.
    A function of the Study Instance UID alone (its SHA-256; not the logs' keyed pseudonym, whose
    secret differs between installs and may be rotated), so a study stays in its split from one
    export and retraining to the next, and its images never straddle two splits. Only the split's
    name is written, never the digest."""
    digest = hashlib.sha256((study_instance_uid or "").encode()).hexdigest()
    return ("val", "test", "train", "train", "train")[int(digest[:4], 16) % 5]


class Worklist:
    """Worklist operations over a :class:`Store` with routing ``rules``."""

    def __init__(self, store: Store, rules: RoutingRules | None = None) -> None:
        self.store = store
        self.rules = rules or load_rules()

    # -- results ------------------------------------------------------------------------------
    def record_result(self, result: ResultInput, *, accession_number: str | None = None,
                      files: Mapping[str, tuple[str, str | None]] | None = None,
                      actor: str = "screening", job_id: str | None = None) -> dict[str, Any]:
        """Store a new result for its study, route it with the latest first read, and return it (a
        result of ``job_id`` replaces that job's earlier history entry: see :func:`write_result`).
        ``result``: contract 2's typed model, the pipeline's result (its accession number is the
        default of ``accession_number``) or its JSON; ResultContractError when it breaks contract 2."""
        kept = kept_result(result)
        typed = kept.result
        uid = typed.study_instance_uid
        if not uid:
            raise ValueError("only results with a Study Instance UID go on the worklist")
        if accession_number is None:
            accession_number = getattr(result, "accession_number", None)
        data = {**kept.data, "ai_priority": typed.priority.model_dump(mode="json")}

        def save(s: Session) -> dict[str, Any]:
            existing = self._lock(s, uid)
            corrections = stored_result(existing.result).first_read_corrections if existing is not None else []
            if corrections:  # a re-screen keeps them
                data[_CORRECTIONS] = [c.model_dump(mode="json") for c in corrections]
            study = write_result(s, KeptResult(typed, data), job_id=job_id)
            if accession_number:
                study.accession_number = accession_number[:64]
            for sop, (path, member) in (files or {}).items():
                row = s.get(Instance, sop)
                if row is not None:
                    row.path, row.member = path, member
            s.execute(delete(Finding).where(Finding.study_instance_uid == uid))
            s.execute(delete(RegionRow).where(RegionRow.study_instance_uid == uid))
            for f in typed.findings:
                if f.probability is None:  # not applicable to this study: nothing was computed
                    continue
                s.add(Finding(study_instance_uid=uid, code=f.code, probability=f.probability,
                              positive=f.positive, operating_point=f.operating_point, model=f.model))
            for r in typed.regions:
                s.add(RegionRow(study_instance_uid=uid, region_id=r.id, finding=r.finding, score=r.score,
                                sop_instance_uid=r.sop_instance_uid, frame=r.frame, bbox=list(r.bbox),
                                centroid=list(r.centroid), area_mm2=r.area_mm2))
            self._route(s, study, self._latest_first_read(s, uid, study.accession_number))
            s.add(AuditEvent(actor=actor, action="screened", study_key=study_key(uid),
                             detail={"status": study.status, "route": study.route, "rule": study.rule}))
            return dict(study.result)

        # two results of a study not stored yet can race (a PACS re-sends it while it is screened)
        return self.store.retrying("save a result", save)

    def record_artifacts(self, study_uid: str, artifacts: Artifacts | Mapping[str, Any], *, encode_ms: float) -> None:
        """The files a study's outputs were written to, once written (``artifacts`` of contract 2, with
        its ``status``), into its latest result and that result's history entry."""
        written = parsed(Artifacts, artifacts, use="recorded").model_dump(mode="json")
        with self.store.transaction("record written outputs") as s:
            study = self._lock(s, study_uid)
            if study is None:
                return
            latest = s.scalars(select(Result).where(Result.study_instance_uid == study_uid)
                               .order_by(Result.id.desc()).limit(1)).first()
            for row in (study, latest):
                if row is None:
                    continue
                timing = stored_result(row.result).timing_ms.model_copy(update={"encode": round(encode_ms, 1)})
                row.result = {**row.result, "artifacts": dict(written), "timing_ms": timing.model_dump(mode="json")}

    # -- first reads --------------------------------------------------------------------------
    def add_report(self, report: ReportIn, *, actor: str) -> ReportOutcome:
        """Record a first read and apply it to the studies it names (none yet: kept until they come)."""
        with self.store.transaction("record a first read") as s:
            row = FirstReadRow(study_instance_uid=report.study_instance_uid, accession_number=report.accession_number,
                               source=report.source, text=report.text,
                               labels={k: Label(v).value for k, v in report.labels.items()}, received_at=utcnow())
            s.add(row)
            s.flush()
            clauses = []
            if report.study_instance_uid:
                clauses.append(Study.study_instance_uid == report.study_instance_uid)
            if report.accession_number:
                clauses.append(Study.accession_number == report.accession_number)
            uids = list(s.scalars(select(Study.study_instance_uid).where(or_(*clauses))))
            updated = []
            for uid in uids:
                study = self._lock(s, uid)
                assert study is not None
                self._route(s, study, row)
                updated.append(dict(study.result))
                s.add(AuditEvent(actor=actor, action="first_read", study_key=study_key(uid),
                                 detail={"source": report.source, "route": study.route, "rule": study.rule}))
            if not uids:
                s.add(AuditEvent(actor=actor, action="first_read_pending", study_key=(
                    study_key(report.study_instance_uid) if report.study_instance_uid else None),
                    detail={"source": report.source}))
            return ReportOutcome(updated)

    # -- reviews ------------------------------------------------------------------------------
    def add_review(self, study_uid: str, region_id: object, verdict: object, reviewer: object,
                   *, actor: str) -> dict[str, Any] | None:
        """Record a verdict on one of the study's regions; None when the study is unknown.

        Raises
        ------
        InvalidInputError
            For an unknown region, verdict or a missing reviewer (the message says which).
        """
        if verdict not in VERDICTS:
            raise InvalidInputError(f"verdict must be one of {', '.join(VERDICTS)}")
        if not isinstance(reviewer, str) or not reviewer.strip() or len(reviewer) > 128:
            raise InvalidInputError("reviewer (who gives the verdict, up to 128 characters) is required")
        if not isinstance(region_id, str):
            raise InvalidInputError("region_id must be one of the study's regions[].id")
        with self.store.transaction("record a review") as s:
            study = self._lock(s, study_uid)
            if study is None:
                return None
            region = s.scalars(select(RegionRow).where(RegionRow.study_instance_uid == study_uid,
                                                       RegionRow.region_id == region_id)).first()
            if region is None:
                raise InvalidInputError("region_id is not one of this study's regions")
            findings = stored_result(study.result).findings
            model = next((f.model for f in findings if f.code == region.finding), "")
            s.add(Review(study_instance_uid=study_uid, region_id=region_id, finding=region.finding, verdict=verdict,
                         reviewer=reviewer.strip(), sop_instance_uid=region.sop_instance_uid, frame=region.frame,
                         bbox=list(region.bbox), model=model, at=utcnow()))
            s.flush()
            reviewed = set(s.scalars(select(Review.region_id).where(Review.study_instance_uid == study_uid)))
            routing = {f.code for f in findings if f.routes}
            regions = set(s.scalars(select(RegionRow.region_id).where(RegionRow.study_instance_uid == study_uid,
                                                                      RegionRow.finding.in_(routing))))
            if regions <= reviewed and study.state == State.AWAITING_REVIEW.value:
                self._set_state(study, State.REVIEWED)
            s.add(AuditEvent(actor=reviewer.strip()[:128], action="review", study_key=study_key(study_uid),
                             detail={"region_id": region_id, "verdict": verdict, "via": actor}))
            return self._view(s, study)

    def correct_first_read(self, study_uid: str, finding: object, label: object, reviewer: object,
                           *, actor: str) -> dict[str, Any] | None:
        """Record that the labeler mis-read the study's first read for ``finding``: the report says
        ``label`` (present, uncertain, negated or not_mentioned). The correction wins over the
        labeler from then on, for this first read: the study is compared and routed again with it.
        None when the study is unknown.

        Raises
        ------
        InvalidInputError
            For a finding the first read was not labelled for, an unknown label, a study without a
            first read, or a missing reviewer (the message says which).
        """
        if not isinstance(reviewer, str) or not reviewer.strip() or len(reviewer) > 128:
            raise InvalidInputError("reviewer (who gives the verdict, up to 128 characters) is required")
        try:
            corrected = Label(label) if isinstance(label, str) else None
        except ValueError:
            corrected = None
        if corrected is None:
            raise InvalidInputError("label (what the report says) must be one of "
                                    f"{', '.join(x.value for x in Label)}")
        with self.store.transaction("correct a first read") as s:
            study = self._lock(s, study_uid)
            if study is None:
                return None
            row = self._latest_first_read(s, study_uid, study.accession_number)
            stored = stored_result(study.result)
            first_read = stored.first_read
            if row is None or first_read.status == "none":
                raise InvalidInputError("this study has no first read to correct")
            if not isinstance(finding, str) or finding not in first_read.labels:
                raise InvalidInputError("finding must be one of the first read's labelled findings: "
                                        f"{', '.join(sorted(first_read.labels))}")
            read = first_read.labeler.get(finding) or first_read.labels[finding]
            entry = CorrectionEntry(finding=finding, label=corrected.value, labeler_label=read,
                                    reviewer=reviewer.strip(), at=_iso(utcnow()), first_read_id=row.id)
            corrections = [c.model_dump(mode="json") for c in [*stored.first_read_corrections, entry]]
            study.result = {**study.result, _CORRECTIONS: corrections}
            self._route(s, study, row)
            s.add(AuditEvent(actor=reviewer.strip()[:128], action="first_read_review", study_key=study_key(study_uid),
                             detail={"finding": finding, "verdict": FIRST_READ_VERDICT, "labeler_label": read,
                                     "label": corrected.value, "via": actor}))
            return self._view(s, study)

    # -- reading ------------------------------------------------------------------------------
    def study(self, study_uid: str, *, actor: str | None = None) -> dict[str, Any] | None:
        """The study's result with its state, reviews and the max-wait rule applied; the read is
        written to the audit log when ``actor`` is given."""
        with self.store.transaction("read a study") as s:
            study = s.get(Study, study_uid)
            if study is None:
                return None
            if actor is not None:
                s.add(AuditEvent(actor=actor, action="view", study_key=study_key(study_uid), detail={}))
            return self._view(s, study)

    def items(self, *, state: str | None = None, route: str | None = None, limit: int = 500) -> list[dict[str, Any]]:
        """Worklist rows, highest (escalated) priority first. ``state`` defaults to every state."""
        if state is not None:
            State(state)  # ValueError for an unknown state
        if route is not None:
            Route(route)
        with self.store.transaction("read the worklist") as s:
            stmt = select(Study)
            if state is not None:
                stmt = stmt.where(Study.state == state)
            rows = list(s.scalars(stmt.order_by(Study.priority_score.desc(), Study.created_at).limit(10 * limit)))
            now = utcnow()
            routed = []
            for study in rows:
                priority, waited = self._effective(study, now)
                if route is None or priority.route.value == route:
                    routed.append((study, priority, waited, _iso(study.created_at)))
            routed.sort(key=lambda r: (-r[1].score, r[3]))
            return [self._item(study, priority, waited, received)
                    for study, priority, waited, received in routed[:limit]]

    def flag_rates(self, *, days: float | None = None) -> dict[str, Any]:
        """Per model, finding and mode: how many screened studies the model applied to, how many it
        flagged (for a shadow model: would have flagged) and how many were outside its scope, over
        the latest result of every screened study (received in the last ``days``, if given). A
        site reads a shadow model's rate before it goes live."""
        from ..stats import wilson_interval

        since = utcnow() - timedelta(days=days) if days is not None else None
        groups: dict[tuple[str, str, str], dict[str, Any]] = {}
        screened = 0
        with self.store.transaction("read the flag rates") as s:
            stmt = select(Study.result).where(Study.status == "screened")
            if since is not None:
                stmt = stmt.where(Study.created_at >= since)
            for result in s.scalars(stmt.execution_options(yield_per=500)):
                screened += 1
                for f in parsed(_KeptFindings, result, use="read").findings:
                    name, _, version = f.model.partition("@")
                    group = groups.setdefault((name, f.code, f.mode), {
                        "model": name, "finding": f.code, "mode": f.mode,
                        "versions": set(), "screened": 0, "flagged": 0, "not_applicable": 0})
                    group["versions"].add(version)
                    if not f.applicable:
                        group["not_applicable"] += 1
                        continue
                    group["screened"] += 1
                    group["flagged"] += int(f.positive)
        rates = []
        for key in sorted(groups):
            group = groups[key]
            n, k = group["screened"], group["flagged"]
            lo, hi = wilson_interval(k, n)
            rates.append({**group, "versions": sorted(group["versions"]),
                          "flag_rate": round(k / n, 4) if n else None,
                          "flag_rate_ci95": [round(lo, 4), round(hi, 4)] if n else None,
                          "routes": group["mode"] == "live"})
        return {"since": _iso(since) if since is not None else None, "studies": screened, "models": rates}

    def instance_file(self, study_uid: str, sop_uid: str) -> tuple[Path, str | None] | None:
        """Where a screened instance's bytes are kept (file, zip member), if still there."""
        with self.store.transaction("find an instance") as s:
            row = s.get(Instance, sop_uid)
            if row is None or row.study_instance_uid != study_uid or not row.path:
                return None
            return Path(row.path), row.member

    def export_manifest(self, out: Path | None = None, *, root: Path | None = None) -> str:
        """Radiologists' verdicts as a training manifest (the CSV that ``secondreader train`` reads
        with ``data.kind: manifest``): one row per reviewed region, label 1 for a confirmed miss or
        an already reported finding, 0 for a false positive, with the region's box (the reader
        merges an image's rows: positive when any region is). Split by study: train, val and test.
        Instances inside zips are exported as their zip and member columns.

        Paths are relative (to ``root``, else to ``out``'s folder, where the training reader resolves
        them): a file outside that folder is named by its file name only, so no absolute server path
        leaves. A text cell that a spreadsheet would read as a formula (it starts with ``= + - @``,
        a tab or a carriage return) is prefixed with ``'`` (OWASP's CSV-injection advice)."""
        base = (root if root is not None else (out.parent if out is not None else None))
        with self.store.transaction("export reviews") as s:
            rows = s.execute(select(Review, Instance)
                             .join(Instance, Instance.sop_instance_uid == Review.sop_instance_uid)
                             .order_by(Review.at, Review.id)).all()
        latest: dict[tuple[str, str, str], tuple[Review, Instance]] = {}
        for review, instance in rows:
            latest[(review.sop_instance_uid, review.finding, review.region_id)] = (review, instance)
        buffer = io.StringIO()
        codes = sorted({review.finding for review, _ in latest.values()})
        columns = ["path", "member", "split", *codes, "finding", "label", "verdict", "region_id", "frame",
                   "bbox_row_min", "bbox_col_min", "bbox_row_max", "bbox_col_max", "model", "reviewed_at"]
        writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for review, instance in latest.values():
            label = 0 if review.verdict == "false_positive" else 1
            r0, c0, r1, c1 = (list(review.bbox) + [None] * 4)[:4]
            writer.writerow({
                "path": _relative(instance.path, base), "member": _cell(instance.member or ""),
                "split": export_split(instance.study_instance_uid),
                "finding": review.finding, review.finding: label, "label": label, "verdict": review.verdict,
                "region_id": _cell(review.region_id), "frame": review.frame, "bbox_row_min": r0, "bbox_col_min": c0,
                "bbox_row_max": r1, "bbox_col_max": c1, "model": _cell(review.model), "reviewed_at": _iso(review.at),
            })
        text = buffer.getvalue()
        if out is not None:
            out.write_text(text)
        return text

    def audit_events(self, *, limit: int = 1000) -> list[dict[str, Any]]:
        with self.store.transaction("read the audit log") as s:
            rows = s.scalars(select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit))
            return [{"at": _iso(e.at), "actor": e.actor, "action": e.action, "study_key": e.study_key,
                     "detail": dict(e.detail or {})} for e in rows]

    # -- internals ----------------------------------------------------------------------------
    def _lock(self, s: Session, uid: str) -> Study | None:
        stmt = select(Study).where(Study.study_instance_uid == uid)
        if self.store.backend == "postgresql":
            stmt = stmt.with_for_update()
        return s.scalars(stmt).first()

    @staticmethod
    def _latest_first_read(s: Session, uid: str, accession: str | None) -> FirstReadRow | None:
        clauses = [FirstReadRow.study_instance_uid == uid]
        if accession:
            clauses.append(FirstReadRow.accession_number == accession)
        stmt = select(FirstReadRow).where(or_(*clauses)).order_by(FirstReadRow.received_at.desc(),
                                                                   FirstReadRow.id.desc())
        return s.scalars(stmt.limit(1)).first()

    def _route(self, s: Session, study: Study, row: FirstReadRow | None) -> None:
        stored = stored_result(study.result)
        ai = stored.ai_priority
        ai_priority = Priority(ai.score, Route(ai.route), ai.rule)
        findings = stored.findings
        # a study without findings (failed, ineligible) still shows what its report says
        codes = [f.code for f in findings] or sorted(FINDING_TERMS)
        first_read: FirstRead | None = None
        if row is not None:
            report = ReportIn(row.study_instance_uid, row.accession_number, row.text,
                              {k: Label(v) for k, v in (row.labels or {}).items()}, row.source)
            received = _iso(row.received_at)
            corrections = {c.finding: Correction(c.finding, Label(c.label), Label(c.labeler_label), c.reviewer, c.at)
                           for c in stored.first_read_corrections if c.first_read_id == row.id}
            try:
                first_read = interpret(report, codes, {f.code for f in findings if f.positive and f.routes},
                                       received_at=received, corrections=corrections)
            except InvalidReportError:  # pragma: no cover - validated on the way in
                first_read = None
        situation = Situation(status=study.status, ai=ai_priority, report=first_read is not None,
                              discordant=bool(first_read and first_read.discordant))
        priority = self.rules.route(situation)
        result = dict(study.result)  # only the keys routing decides are written: the rest stays as kept
        result["ai_priority"] = ai.model_dump(mode="json")
        result["priority"] = _priority_json(priority).model_dump(mode="json")
        result["first_read"] = first_read.to_json() if first_read else dict(_NO_FIRST_READ)
        study.result = result
        study.priority_score, study.route, study.rule = priority.score, priority.route.value, priority.rule
        if study.status == "screened":
            target = State.AWAITING_REVIEW if priority.route is not Route.NONE else State.SCREENED
        elif study.status == "failed":
            target = State.AWAITING_REVIEW if priority.route is not Route.NONE else State.FAILED
        else:
            target = State(study.status)
        if study.state == State.REVIEWED.value:
            return  # final: updated, not put back on anyone's list
        self._set_state(study, target)

    @staticmethod
    def _set_state(study: Study, target: State) -> None:
        current = State(study.state or State.NEW.value)
        check_transition(current, target)
        if current is not target:
            study.state, study.state_since = target.value, utcnow()

    def _effective(self, study: Study, now: datetime) -> tuple[Priority, float]:
        waited = (now - _aware(study.created_at)).total_seconds()
        priority = Priority(study.priority_score, Route(study.route), study.rule)
        if study.state == State.AWAITING_REVIEW.value:
            priority = self.rules.escalate(priority, waited)
        return priority, waited

    def _view(self, s: Session, study: Study) -> dict[str, Any]:
        out = dict(study.result)
        priority, waited = self._effective(study, utcnow())
        out["priority"] = {"score": priority.score, "route": priority.route.value, "rule": priority.rule}
        out["state"] = study.state
        out["waiting_seconds"] = int(waited)
        out.setdefault("first_read", dict(_NO_FIRST_READ))
        reviews = s.scalars(select(Review).where(Review.study_instance_uid == study.study_instance_uid)
                            .order_by(Review.at, Review.id))
        out["reviews"] = [{"region_id": r.region_id, "finding": r.finding, "verdict": r.verdict,
                           "reviewer": r.reviewer, "at": _iso(r.at)} for r in reviews]
        return out

    @staticmethod
    def _item(study: Study, priority: Priority, waited: float, received_at: str) -> dict[str, Any]:
        """The study's worklist row (contract 2's :class:`~secondreader.schema.WorklistItem`)."""
        result = stored_result(study.result)
        return WorklistItem(
            study_instance_uid=study.study_instance_uid,
            study_key=study_key(study.study_instance_uid),
            state=cast(StateName, study.state),
            status=cast(StudyStatus, study.status),
            priority=_priority_json(priority),
            ai_priority=result.ai_priority,
            waiting_seconds=int(waited),
            received_at=received_at,
            first_read=WorklistFirstRead(status=result.first_read.status,
                                         discordant=list(result.first_read.discordant)),
            findings=[WorklistFinding(code=f.code, probability=f.probability, positive=f.positive, routes=f.routes,
                                      mode=f.mode, applicable=f.applicable) for f in result.findings],
            regions=len(result.regions),
            modality=result.modality,
        ).model_dump(mode="json")


_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: object) -> object:
    """A CSV cell a spreadsheet shows as text: a leading formula character gets a ``'`` before it."""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def _relative(path: str | None, base: Path | None) -> object:
    """``path`` relative to ``base`` where it lies under it; else its file name (a storage key, already
    relative, is kept). Never an absolute path."""
    if not path:
        return ""
    candidate = Path(path)
    if not candidate.is_absolute():
        return _cell(candidate.as_posix().lstrip("/"))
    if base is not None:
        try:
            return _cell(candidate.resolve().relative_to(base.resolve()).as_posix())
        except ValueError:
            pass
    return _cell(candidate.name)
