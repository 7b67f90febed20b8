"""The store on both backends: SQLite (embedded default) and PostgreSQL (contract 5's test URL)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from secondreader import schema
from secondreader.errors import StoreError
from secondreader.store import Store

from ..unit.test_result_schema import UID, _screened


def _result(uid: str, score: int, sops: list[str]) -> dict:  # type: ignore[type-arg]
    return {
        "study_instance_uid": uid, "status": "screened", "reason": None,
        "instances": [{"source": f"{i}.dcm", "sop_instance_uid": s, "status": "screened", "reason": None}
                      for i, s in enumerate(sops)],
        "priority": {"score": score, "route": "review" if score >= 50 else "none", "rule": "ai-positive"},
        "findings": [{"code": "pneumonia", "probability": score / 100, "positive": score >= 50,
                      "operating_point": 0.5, "model": "cxr-pneumonia@1.0.0"}],
        "regions": [], "first_read": {"status": "none", "labels": {}, "discordant": []},
        "artifacts": {"heatmaps": [], "dicom": [], "status": "none"},
        "timing_ms": {"load": 1.0, "preprocess": 1.0, "inference": 1.0, "postprocess": 1.0, "encode": 0.0,
                      "total": 4.0},
    }


def test_schema_has_the_four_tables(store: Store) -> None:
    names = set(inspect(store.engine).get_table_names())
    assert {"studies", "instances", "results", "jobs", "alembic_version"} <= names
    store.migrate()  # idempotent


def test_results_survive_a_new_store_object_and_replace_the_latest(store: Store) -> None:
    store.save_result(_result("1.2.3", 20, ["1.2.3.1"]))
    store.save_result(_result("1.2.3", 80, ["1.2.3.1", "1.2.3.2"]))
    again = Store(store.url)
    latest = again.get_study("1.2.3")
    assert latest is not None and latest["priority"]["score"] == 80
    assert again.results_count("1.2.3") == 2
    assert again.get_study("9.9.9") is None
    again.engine.dispose()


def _kept(store: Store, uid: str) -> list[str]:
    """The study's latest result and its history entries, as the database holds them (JSON text)."""
    with store.engine.connect() as c:
        rows = [c.execute(text("select result from studies where study_instance_uid = :u"), {"u": uid}).scalar_one(),
                *c.execute(text("select result from results where study_instance_uid = :u order by id"),
                           {"u": uid}).scalars()]
    return [json.dumps(r if isinstance(r, dict) else json.loads(r)) for r in rows]


@pytest.mark.parametrize("form", ["pipeline", "typed", "json"])
def test_a_result_is_taken_typed_and_kept_as_its_producer_wrote_it(store: Store, form: str) -> None:
    """The pipeline's result, contract 2's typed model or its JSON: the same JSON is kept, byte for
    byte, and read back typed (a result saved outside the worklist: its AI priority is its own)."""
    produced = _screened()
    data = json.loads(json.dumps(produced.to_json()))
    given = {"pipeline": produced, "typed": schema.StudyResult.model_validate(data), "json": data}[form]
    store.save_result(given)
    assert _kept(store, UID) == [json.dumps(data)] * 2
    typed = store.study_result(UID)
    assert isinstance(typed, schema.StoredResult) and typed.ai_priority == typed.priority
    assert typed.findings[0].probability == data["findings"][0]["probability"] and typed.regions[0].id == "nodule-1"
    assert store.study_result("9.9.9") is None


def test_a_result_that_breaks_the_contract_is_not_kept(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    data = _screened().to_json()
    data["findings"][0]["probability"] = 1.5
    with pytest.raises(schema.ResultContractError):
        store.save_result(data)
    assert store.get_study(UID) is None
    assert "findings.0.probability" in caplog.text and "1.5" not in caplog.text


def test_jobs_lifecycle_and_restart_recovery(store: Store, tmp_path: Path) -> None:
    first = store.create_job(tmp_path / "a")
    second = store.create_job(tmp_path / "b")
    store.set_job(first, "running")
    store.set_job(second, "done", study_uids=["1.2.3"], unreadable=[{"source": "x.txt", "reason": "text"}])
    restarted = Store(store.url)
    unfinished = restarted.unfinished_jobs()
    restarted.engine.dispose()
    assert [j.id for j in unfinished] == [first]
    done = store.get_job(second)
    assert done is not None and done.study_uids == ("1.2.3",) and done.unreadable[0]["source"] == "x.txt"
    with pytest.raises(ValueError, match="job status"):
        store.set_job(first, "exploded")


def test_unreachable_database_is_a_store_error(tmp_path: Path) -> None:
    broken = Store("postgresql://postgres@127.0.0.1:1/none?connect_timeout=2")
    with pytest.raises(StoreError, match="store unavailable while trying to read a study"):
        broken.get_study("1.2.3")
    broken.engine.dispose()


def test_instances_of_one_new_study_received_at_once_are_all_recorded(store: Store, tmp_path: Path) -> None:
    """Several associations deliver instances of a study the store has not seen, at the same moment:
    each is recorded once (no Out of Resources for a lost race)."""
    results: list[bool] = []
    errors: list[BaseException] = []

    def receive(uid: str, sop: str, barrier: threading.Barrier) -> None:
        barrier.wait()
        try:
            results.append(store.record_inbound(uid, sop, tmp_path))
        except Exception as exc:  # noqa: BLE001 - every failure is the finding
            errors.append(exc)

    for k in range(5):
        uid, barrier = f"1.2.3.{k}", threading.Barrier(4)
        threads = [threading.Thread(target=receive, args=(uid, f"{uid}.{i}", barrier)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == [] and results == [True] * 20
    assert not store.record_inbound("1.2.3.0", "1.2.3.0.0", tmp_path)  # a re-send of one of them
