"""Contract 2 (the study result) as a checker used by every test that sees a result."""

from __future__ import annotations

from typing import Any

from secondreader.results import ARTIFACT_STATUSES

STUDY_STATUSES = {"screened", "ineligible", "failed"}
INSTANCE_STATUSES = {"screened", "ineligible", "failed", "duplicate"}
ROUTES = {"urgent", "review", "none"}


def assert_study_result(d: dict[str, Any]) -> None:
    for key in ("study_instance_uid", "status", "reason", "instances", "priority", "findings", "regions",
                "first_read", "artifacts", "timing_ms"):
        assert key in d, f"result lacks {key}"
    assert d["status"] in STUDY_STATUSES
    if d["study_instance_uid"] is None:
        assert d["status"] == "failed" and d["reason"] and d["source"]
    if d["status"] != "screened":
        assert isinstance(d["reason"], str) and d["reason"]
    else:
        assert d["reason"] is None
    assert d["instances"], "every result lists its instances"
    for inst in d["instances"]:
        assert set(inst) >= {"source", "sop_instance_uid", "status", "reason"}
        assert all(isinstance(r, str) and r for r in inst.get("not_applicable", {}).values())
        assert inst["status"] in INSTANCE_STATUSES
        assert "/" not in inst["source"] and "\\" not in inst["source"]
        if inst["status"] in ("ineligible", "failed", "duplicate"):
            assert inst["reason"]
    statuses = {i["status"] for i in d["instances"]}
    expected = "screened" if "screened" in statuses else "failed" if "failed" in statuses else "ineligible"
    assert d["status"] == expected
    p = d["priority"]
    assert isinstance(p["score"], int) and 0 <= p["score"] <= 100
    assert p["route"] in ROUTES and isinstance(p["rule"], str) and p["rule"]
    for f in d["findings"]:
        assert "@" in f["model"]
        # added by issue 26: where the model applies, the mode it ran in, whether it routes
        assert isinstance(f["applicable"], bool) and f["mode"] in ("live", "shadow")
        assert f["routes"] == (f["mode"] == "live" and f["applicable"])
        if f["applicable"]:
            assert 0.0 <= f["probability"] <= 1.0
            assert f["positive"] == (f["probability"] >= f["operating_point"])
            assert f["not_applicable_reason"] is None
        else:  # outside the model's scope: neither positive nor negative, and says why
            assert f["probability"] is None and f["positive"] is False
            assert isinstance(f["not_applicable_reason"], str) and f["not_applicable_reason"]
    ids = [r["id"] for r in d["regions"]]
    assert len(ids) == len(set(ids))
    for r in d["regions"]:
        r0, c0, r1, c1 = r["bbox"]
        assert 0 <= r0 < r1 and 0 <= c0 < c1
        assert r0 <= r["centroid"][0] < r1 and c0 <= r["centroid"][1] < c1
        assert r["frame"] >= 1
        assert r["area_mm2"] is None or r["area_mm2"] > 0
    fr = d["first_read"]
    assert fr["status"] in ("none", "negative", "positive", "uncertain")
    assert set(d["artifacts"]) >= {"heatmaps", "dicom"}
    assert d["artifacts"]["status"] in ARTIFACT_STATUSES
    assert set(d["timing_ms"]) >= {"load", "preprocess", "inference", "postprocess", "total"}
