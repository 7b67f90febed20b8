"""The worklist over the store, on SQLite and PostgreSQL: states, first reads before and after the
images, routing rules with discordance and maximum wait, verdicts, the audit log, the training
manifest export, job claims by concurrent workers, and the 0002 → 0003 migration."""

from __future__ import annotations

import csv
import io
import json
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect as sa_inspect
from sqlalchemy import text

from secondreader import schema
from secondreader.errors import InvalidInputError
from secondreader.reports.firstread import ReportIn
from secondreader.reports.labeler import Label
from secondreader.store import Store
from secondreader.worklist import Worklist, load_rules
from secondreader.worklist.routing import RoutingRules
from secondreader.worklist.states import InvalidTransition, State, check_transition

from ..conftest import CANARY_NAME
from ..unit.test_result_schema import UID, _screened


def _uid() -> str:
    return "1.2.826.0.1.3680043.8.498." + str(uuid.uuid4().int)[:20]


def _result(uid: str, probability: float, *, urgent: bool = False, regions: int = 1,
            status: str = "screened") -> dict[str, Any]:
    positive = probability >= 0.5
    score = int(round(50 * probability / 0.5)) if not positive else int(round(50 + 50 * (probability - 0.5) / 0.5))
    route, rule = ("review", "ai-positive") if positive else ("none", "ai-negative")
    if urgent:
        route, rule = "urgent", "ai-urgent"
    if status != "screened":
        route, rule, score = ("review", "screening-failed", 50) if status == "failed" else ("none", "ineligible", 0)
    sop = uid + ".1"
    return {
        "study_instance_uid": uid, "status": status, "reason": None if status == "screened" else "because",
        "instances": [{"source": "a.dcm", "sop_instance_uid": sop, "status": status, "reason": None}],
        "priority": {"score": score, "route": route, "rule": rule},
        "findings": [] if status != "screened" else [
            {"code": "pneumonia", "probability": probability, "positive": positive, "operating_point": 0.5,
             "model": "cxr-pneumonia@1.0.0"},
            {"code": "nodule", "probability": 0.1, "positive": False, "operating_point": 0.5,
             "model": "cxr-nodule@1.0.0"}],
        "regions": [{"id": f"pneumonia-{i + 1}", "finding": "pneumonia", "score": probability, "sop_instance_uid": sop,
                     "frame": 1, "bbox": [10 * i, 10, 10 * i + 8, 30], "centroid": [10.0 * i + 4, 20.0],
                     "area_mm2": 12.0, "area_px": 160} for i in range(regions if status == "screened" else 0)],
        "first_read": {"status": "none", "labels": {}, "discordant": []},
        "artifacts": {"heatmaps": [], "dicom": [], "status": "none"},
        "timing_ms": {"load": 1.0, "preprocess": 1.0, "inference": 1.0, "postprocess": 1.0, "encode": 0.0,
                      "total": 4.0},
    }


def test_states_allow_only_the_documented_moves() -> None:
    assert check_transition("new", "screened") is State.SCREENED
    assert check_transition("awaiting_review", "reviewed") is State.REVIEWED
    for bad in [("reviewed", "awaiting_review"), ("new", "reviewed"), ("screened", "reviewed")]:
        with pytest.raises(InvalidTransition):
            check_transition(*bad)


def test_ai_positive_without_a_report_awaits_review_with_provisional_triage(store: Store) -> None:
    worklist = Worklist(store)
    uid = _uid()
    stored = worklist.record_result(_result(uid, 0.8), accession_number="ACC1")
    assert stored["priority"] == {"score": 80, "route": "review", "rule": "ai-positive"}
    assert stored["first_read"]["status"] == "none"
    assert worklist.study(uid)["state"] == "awaiting_review"  # type: ignore[index]
    negative = _uid()
    assert worklist.record_result(_result(negative, 0.2))["priority"]["rule"] == "ai-negative"
    assert worklist.study(negative)["state"] == "screened"  # type: ignore[index]


@pytest.mark.parametrize("form", ["pipeline", "typed"])
def test_the_worklist_takes_the_typed_result(store: Store, form: str) -> None:
    """The pipeline's result (its accession number matches the first read) or contract 2's typed
    model: kept as the pipeline wrote it, plus the AI's priority, byte for byte."""
    produced = _screened()
    produced.accession_number = "ACC-TYPED"
    data = json.loads(json.dumps(produced.to_json()))
    worklist = Worklist(store)
    if form == "pipeline":
        worklist.record_result(produced)
    else:
        worklist.record_result(schema.StudyResult.model_validate(data), accession_number="ACC-TYPED")
    with store.engine.connect() as c:
        kept = c.execute(text("select result from results where study_instance_uid = :u"), {"u": UID}).scalar_one()
    kept = kept if isinstance(kept, dict) else json.loads(kept)
    assert json.dumps(kept) == json.dumps({**data, "ai_priority": data["priority"]})
    (study,) = worklist.add_report(ReportIn(None, "ACC-TYPED", "No nodule. No effusion."), actor="t").studies
    assert study["first_read"]["discordant"] == ["nodule"] and study["priority"]["rule"] == "discordant-urgent"
    (item,) = worklist.items()
    assert item["ai_priority"] == data["priority"] and item["regions"] == 1
    assert [(f["code"], f["mode"], f["applicable"]) for f in item["findings"]] == [
        ("nodule", "live", True), ("pneumonia", "live", False), ("effusion", "shadow", True)]


def test_a_report_before_the_images_is_kept_and_applied_when_they_arrive(store: Store) -> None:
    worklist = Worklist(store)
    uid = _uid()
    outcome = worklist.add_report(ReportIn(None, "ACC-EARLY", f"Patient {CANARY_NAME}. Lungs are clear. No focal "
                                           "consolidation."), actor="test")
    assert outcome.studies == []  # kept for later (HTTP answers 202)
    stored = worklist.record_result(_result(uid, 0.9), accession_number="ACC-EARLY")
    assert stored["first_read"]["status"] == "negative"
    assert stored["first_read"]["labels"] == {"pneumonia": "negated", "nodule": "negated"}  # "lungs are clear"
    assert stored["first_read"]["discordant"] == ["pneumonia"]
    assert stored["priority"]["route"] == "review" and stored["priority"]["rule"] == "discordant"
    assert "consolidation" in stored["first_read"]["evidence"]["pneumonia"]
    assert stored["ai_priority"]["rule"] == "ai-positive"


def test_reports_after_the_images_reroute_the_study(store: Store) -> None:
    worklist = Worklist(store)
    uid = _uid()
    worklist.record_result(_result(uid, 0.9))
    agree = worklist.add_report(ReportIn(uid, None, "Right lower lobe consolidation, likely pneumonia."), actor="t")
    (study,) = agree.studies
    assert study["priority"]["rule"] == "concordant" and study["priority"]["route"] == "none"
    assert study["first_read"]["status"] == "positive" and study["first_read"]["discordant"] == []
    assert worklist.study(uid)["state"] == "screened"  # type: ignore[index]
    # an addendum that now says the opposite puts it back on the list
    (study,) = worklist.add_report(ReportIn(uid, None, "Addendum: no pneumonia."), actor="t").studies
    assert study["priority"]["rule"] == "discordant"
    assert worklist.study(uid)["state"] == "awaiting_review"  # type: ignore[index]
    # "cannot exclude" counts as mentioned: no discordance
    (study,) = worklist.add_report(ReportIn(uid, None, "Cannot exclude early consolidation."), actor="t").studies
    assert study["first_read"]["labels"]["pneumonia"] == "uncertain" and study["priority"]["rule"] == "concordant"
    # structured labels
    (study,) = worklist.add_report(ReportIn(uid, None, "", {"pneumonia": Label.NEGATED}), actor="t").studies
    assert study["first_read"]["discordant"] == ["pneumonia"]


def test_discordant_and_ai_urgent_is_urgent(store: Store) -> None:
    worklist = Worklist(store)
    uid = _uid()
    worklist.record_result(_result(uid, 0.99, urgent=True))
    (study,) = worklist.add_report(ReportIn(uid, None, "Normal chest radiograph."), actor="t").studies
    assert study["priority"] == {"score": 99, "route": "urgent", "rule": "discordant-urgent"}


def test_verdicts_complete_the_review_and_are_audited(store: Store) -> None:
    worklist = Worklist(store)
    uid = _uid()
    worklist.record_result(_result(uid, 0.9, regions=2))
    with pytest.raises(InvalidInputError, match="verdict"):
        worklist.add_review(uid, "pneumonia-1", "maybe", "Dr A", actor="key:x")
    with pytest.raises(InvalidInputError, match="region_id"):
        worklist.add_review(uid, "nodule-7", "false_positive", "Dr A", actor="key:x")
    with pytest.raises(InvalidInputError, match="reviewer"):
        worklist.add_review(uid, "pneumonia-1", "false_positive", "  ", actor="key:x")
    assert worklist.add_review(_uid(), "pneumonia-1", "false_positive", "Dr A", actor="key:x") is None
    view = worklist.add_review(uid, "pneumonia-1", "confirmed_miss", "Dr A", actor="key:x")
    assert view is not None and view["state"] == "awaiting_review"  # one region still unreviewed
    view = worklist.add_review(uid, "pneumonia-2", "false_positive", "Dr B", actor="key:x")
    assert view is not None and view["state"] == "reviewed"
    assert [(r["region_id"], r["verdict"], r["reviewer"]) for r in view["reviews"]] == [
        ("pneumonia-1", "confirmed_miss", "Dr A"), ("pneumonia-2", "false_positive", "Dr B")]
    # reviewed is final: a later report updates the result but not the state
    worklist.add_report(ReportIn(uid, None, "No consolidation."), actor="t")
    assert worklist.study(uid, actor="key:y")["state"] == "reviewed"  # type: ignore[index]
    events = worklist.audit_events()
    actions = [e["action"] for e in events]
    assert actions.count("review") == 2 and "view" in actions and "screened" in actions
    assert all(uid not in str(e) for e in events)  # pseudonymous study keys only


def test_worklist_orders_by_priority_filters_and_escalates_long_waits(store: Store) -> None:
    worklist = Worklist(store)
    low, high, none = _uid(), _uid(), _uid()
    worklist.record_result(_result(low, 0.6))
    worklist.record_result(_result(high, 0.95))
    worklist.record_result(_result(none, 0.1))
    items = worklist.items(state="awaiting_review")
    assert [i["study_instance_uid"] for i in items][:2] == [high, low]
    assert none not in {i["study_instance_uid"] for i in items}
    assert {i["study_instance_uid"] for i in worklist.items(route="none")} >= {none}
    with pytest.raises(ValueError):
        worklist.items(state="lost")
    # the same studies under rules whose maximum wait has already passed: escalated, on top
    rules = load_rules().model_dump()
    rules["max_wait"] = {"id": "max-wait", "minutes": 1e-6, "escalate_to": "urgent", "min_score": 95}
    escalated = Worklist(store, RoutingRules.model_validate(rules)).items(state="awaiting_review")
    by_uid = {i["study_instance_uid"]: i for i in escalated}
    assert by_uid[low]["priority"] == {"score": 95, "route": "urgent", "rule": "max-wait"}
    assert by_uid[low]["ai_priority"]["score"] == 60
    assert by_uid[high]["priority"]["score"] == 95  # at least min_score; the AI said 95


def test_failed_and_ineligible_studies(store: Store) -> None:
    worklist = Worklist(store)
    failed, ineligible = _uid(), _uid()
    assert worklist.record_result(_result(failed, 0, status="failed"))["priority"]["rule"] == "screening-failed"
    assert worklist.study(failed)["state"] == "awaiting_review"  # type: ignore[index]
    # its report is still read: a positive report is positive, not "negative" for want of findings
    (study,) = worklist.add_report(ReportIn(failed, None, "Patchy airspace opacity, consistent with pneumonia."),
                                   actor="t").studies
    assert study["first_read"]["status"] == "positive"
    assert study["first_read"]["labels"]["pneumonia"] == "present" and study["first_read"]["discordant"] == []
    assert study["priority"]["rule"] == "screening-failed"
    assert worklist.record_result(_result(ineligible, 0, status="ineligible"))["priority"]["rule"] == "ineligible"
    assert worklist.study(ineligible)["state"] == "ineligible"  # type: ignore[index]
    # a later upload that screens it moves it on
    worklist.record_result(_result(ineligible, 0.9))
    assert worklist.study(ineligible)["state"] == "awaiting_review"  # type: ignore[index]


def test_reviews_export_as_a_training_manifest(store: Store, tmp_path: Path) -> None:
    worklist = Worklist(store)
    uid = _uid()
    dicom = tmp_path / "a.dcm"
    dicom.write_bytes(b"x")
    worklist.record_result(_result(uid, 0.9, regions=2), files={uid + ".1": (str(dicom), None)})
    worklist.add_review(uid, "pneumonia-1", "confirmed_miss", "Dr A", actor="k")
    worklist.add_review(uid, "pneumonia-2", "false_positive", "Dr A", actor="k")
    worklist.add_review(uid, "pneumonia-2", "already_reported", "Dr B", actor="k")  # the later verdict wins
    rows = list(csv.DictReader(io.StringIO(worklist.export_manifest(tmp_path / "manifest.csv"))))
    assert (tmp_path / "manifest.csv").read_text().startswith("path,")
    assert [(r["region_id"], r["verdict"], r["pneumonia"]) for r in rows] == [
        ("pneumonia-1", "confirmed_miss", "1"), ("pneumonia-2", "already_reported", "1")]
    assert all(r["path"] == "a.dcm" and r["split"] in ("train", "val", "test") for r in rows)  # relative to the CSV
    assert rows[0]["bbox_row_min"] == "0" and rows[0]["bbox_col_max"] == "30"
    assert worklist.instance_file(uid, uid + ".1") == (dicom, None)
    assert worklist.instance_file(_uid(), uid + ".1") is None  # the instance belongs to another study


def test_concurrent_workers_claim_each_job_once(store: Store, tmp_path: Path) -> None:
    jobs = [store.create_job(tmp_path / str(i)) for i in range(24)]
    claimed: dict[str, list[str]] = {}
    lock = threading.Lock()

    def work(name: str) -> None:
        while (job := store.claim_next_job(name)) is not None:
            with lock:
                claimed.setdefault(job.id, []).append(name)

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(jobs) and all(len(v) == 1 for v in claimed.values())
    # by id: a job another worker holds is refused; its own worker may take it again after a restart
    job = store.create_job(tmp_path / "x")
    assert store.claim_job(job, "a") and not store.claim_job(job, "b") and store.claim_job(job, "a")


def test_migration_from_0002_keeps_results_and_derives_states(store: Store) -> None:
    # A fresh database at 0002 with a study, then upgraded: the state follows its route.
    url = store.url
    schema = getattr(store, "cleanup_schema", None)
    if schema:
        with store.engine.begin() as c:
            c.execute(text(f"create schema {schema}_old"))
        old = Store(url.replace(f"%3D{schema}", f"%3D{schema}_old"))
    else:
        old = Store(url.replace("sr.db", "old.db"))
    try:
        old.migrate("0002")
        uid = _uid()
        with old.engine.begin() as c:  # as the 0002 code wrote it (today's ORM knows newer columns)
            c.execute(text("insert into studies (study_instance_uid, status, priority_score, route, rule, result, "
                           "created_at, updated_at) values (:u, 'screened', 80, 'review', 'ai-positive', :r, "
                           "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"), {"u": uid, "r": json.dumps(_result(uid, 0.9))})
            # rows that reference the study: SQLite's table rebuild must not trip over them
            c.execute(text("insert into instances (sop_instance_uid, study_instance_uid, source, status, received_at) "
                           "values (:s, :u, 'a.dcm', 'screened', CURRENT_TIMESTAMP)"), {"s": uid + ".1", "u": uid})
            c.execute(text("insert into results (study_instance_uid, models, result, created_at) "
                           "values (:u, 'cxr-pneumonia@1.0.0', :r, CURRENT_TIMESTAMP)"),
                      {"u": uid, "r": json.dumps(_result(uid, 0.9))})
        old.migrate()
        with old.engine.connect() as c:
            state = c.execute(text("select state from studies where study_instance_uid = :u"), {"u": uid}).scalar()
        assert state == "awaiting_review"
        assert Worklist(old).study(uid)["priority"]["rule"] == "ai-positive"  # type: ignore[index]
        # the history entry written before 0004 is kept (without a job); a job's entry is its own
        assert old.results_count(uid) == 1
        for _ in range(2):
            Worklist(old).record_result(_result(uid, 0.2), job_id="job-after-0004")
        assert old.results_count(uid) == 2
    finally:
        old.engine.dispose()
        if schema:
            with store.engine.begin() as c:
                c.execute(text(f"drop schema {schema}_old cascade"))


def test_a_failed_migration_step_leaves_nothing_half_applied(store: Store) -> None:
    # What Alembic runs inside one migration: DDL then a failure. Both backends roll the DDL back
    # (SQLite only because the store turns off the sqlite3 driver's implicit commit before DDL).
    engine = store.ddl_engine()
    try:
        with pytest.raises(RuntimeError), engine.begin() as c:
            c.execute(text("create table half_applied (id integer)"))
            c.execute(text("alter table studies add column half_applied integer"))
            raise RuntimeError("the migration failed here")
        with store.engine.connect() as c:
            tables = set(sa_inspect(c).get_table_names())
            columns = {col["name"] for col in sa_inspect(c).get_columns("studies")}
        assert "half_applied" not in tables and "half_applied" not in columns
    finally:
        if engine is not store.engine:
            engine.dispose()


def test_findings_that_do_not_route_neither_discord_nor_hold_up_the_review(store: Store) -> None:
    worklist = Worklist(store)
    uid = _uid()
    result = _result(uid, 0.9, regions=1)
    result["findings"][1].update(probability=0.95, positive=True, routes=False)  # an unvalidated nodule model
    result["regions"].append({"id": "nodule-1", "finding": "nodule", "score": 0.95,
                              "sop_instance_uid": uid + ".1", "frame": 1, "bbox": [1, 1, 5, 5],
                              "centroid": [3.0, 3.0], "area_mm2": 1.0, "area_px": 16})
    worklist.record_result(result)
    (study,) = worklist.add_report(ReportIn(uid, None, "Right basal consolidation."), actor="t").studies
    assert study["first_read"]["discordant"] == [] and study["priority"]["rule"] == "concordant"
    (study,) = worklist.add_report(ReportIn(uid, None, "No consolidation."), actor="t").studies
    assert study["first_read"]["discordant"] == ["pneumonia"]
    view = worklist.add_review(uid, "pneumonia-1", "confirmed_miss", "Dr A", actor="k")
    assert view is not None and view["state"] == "reviewed"  # the nodule region needs no verdict


def _scoped(result: dict[str, Any], *, nodule: float | None, pneumonia_applies: bool) -> dict[str, Any]:
    """``result`` as screening with modes and scopes gives it: the nodule model in shadow (with its
    probability, or not applicable when ``None``), the pneumonia model live or not applicable."""
    pneumonia, shadow = result["findings"]
    pneumonia.update(mode="live", applicable=pneumonia_applies, routes=pneumonia_applies,
                     not_applicable_reason=None if pneumonia_applies else "cxr-pneumonia is validated on children")
    if not pneumonia_applies:
        pneumonia.update(probability=None, positive=False)
        result["regions"] = []
        result["priority"] = {"score": 0, "route": "none", "rule": "no-routing-finding"}
    shadow.update(mode="shadow", routes=False, applicable=nodule is not None, probability=nodule,
                  positive=nodule is not None and nodule >= 0.5,
                  not_applicable_reason=None if nodule is not None else "cxr-nodule is validated on adults")
    return result


def test_flag_rates_per_model_and_mode(store: Store) -> None:
    """What each model flags (a shadow model: would flag), over the screened studies it applies to;
    not-applicable findings are counted apart, and a study no live model applies to is not routed,
    with or without a first read."""
    worklist = Worklist(store)
    before = {(r["model"], r["mode"]): r for r in worklist.flag_rates()["models"]}
    child = _scoped(_result(_uid(), 0.9), nodule=None, pneumonia_applies=True)
    adult_flagged = _scoped(_result(_uid(), 0.9), nodule=0.8, pneumonia_applies=False)
    adult_clear = _scoped(_result(_uid(), 0.9), nodule=0.1, pneumonia_applies=False)
    for result in (child, adult_flagged, adult_clear):
        worklist.record_result(result)
    stored = worklist.study(adult_flagged["study_instance_uid"])
    assert stored is not None and stored["priority"]["rule"] == "no-routing-finding" and stored["state"] == "screened"
    (reported,) = worklist.add_report(ReportIn(adult_flagged["study_instance_uid"], None, "No nodule."),
                                      actor="t").studies
    assert reported["priority"] == {"score": 0, "route": "none", "rule": "no-routing-finding"}
    assert reported["first_read"]["discordant"] == []  # a shadow model's positive never discords
    rates = {(r["model"], r["mode"]): r for r in worklist.flag_rates()["models"]}

    def added(key: tuple[str, str], field: str) -> int:
        return int(rates[key][field] - before.get(key, {}).get(field, 0))

    nodule, pneumonia = ("cxr-nodule", "shadow"), ("cxr-pneumonia", "live")
    assert (added(nodule, "screened"), added(nodule, "flagged"), added(nodule, "not_applicable")) == (2, 1, 1)
    assert (added(pneumonia, "screened"), added(pneumonia, "flagged"), added(pneumonia, "not_applicable")) == (1, 1, 2)
    assert rates[nodule]["routes"] is False and rates[pneumonia]["routes"] is True
    assert rates[nodule]["versions"] == ["1.0.0"] and rates[nodule]["finding"] == "nodule"
    n, k = rates[nodule]["screened"], rates[nodule]["flagged"]
    assert rates[nodule]["flag_rate"] == round(k / n, 4)
    assert worklist.flag_rates(days=1)["studies"] >= 3


def test_the_same_new_study_saved_by_two_threads_at_once_keeps_both_results(store: Store) -> None:
    """A PACS re-sends a study while it is still being screened: two results of one study that is not
    stored yet are saved at the same moment. Both must land (the second as the newer result), on
    SQLite and PostgreSQL alike, not fail the second job on a duplicate key or a lock."""
    worklist = Worklist(store)
    errors: list[BaseException] = []

    def save(uid: str, probability: float, barrier: threading.Barrier) -> None:
        barrier.wait()
        try:
            worklist.record_result(_result(uid, probability))
        except Exception as exc:  # noqa: BLE001 - every failure is the finding
            errors.append(exc)

    for _round in range(5):
        uid, barrier = _uid(), threading.Barrier(4)
        threads = [threading.Thread(target=save, args=(uid, p, barrier)) for p in (0.6, 0.7, 0.8, 0.9)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert store.results_count(uid) == 4
        assert store.get_study(uid) is not None


def test_a_job_run_again_replaces_its_own_history_entry(store: Store) -> None:
    # job A is killed before its outputs, job B screens the same study, A runs again: the history
    # holds one entry per job, A's is the newest, and A's outputs go onto A's entry, not B's
    worklist, uid = Worklist(store), _uid()
    worklist.record_result(_result(uid, 0.9), job_id="job-a")
    worklist.record_result(_result(uid, 0.2), job_id="job-b")
    worklist.record_result(_result(uid, 0.8), job_id="job-a")
    assert store.results_count(uid) == 2
    worklist.record_artifacts(uid, {"status": "written", "dicom": ["sr.dcm"], "heatmaps": []}, encode_ms=1.0)
    with store.engine.connect() as c:
        rows = c.execute(text("select job_id, result from results where study_instance_uid = :u order by id"),
                         {"u": uid}).all()
    entries = [(job, json.loads(r) if isinstance(r, str) else r) for job, r in rows]
    assert [job for job, _ in entries] == ["job-b", "job-a"]
    assert "artifacts" not in entries[0][1] or entries[0][1]["artifacts"].get("status") != "written"
    assert entries[1][1]["artifacts"]["status"] == "written"
    assert entries[1][1]["findings"][0]["probability"] == 0.8
