"""Contract 2 (the study result) as a checker used by every test that sees a result.

The shape (every key, its type, null where it may be null, the closed vocabularies, no key beyond
the contract's) is checked by the committed JSON Schema, ``src/secondreader/result.schema.json``
(generated from :mod:`secondreader.schema`), with the ``jsonschema`` library: the file that other
systems and the viewer read, not the models that wrote it. What a schema cannot say is checked
here: how the fields agree with each other.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

SCHEMA_FILE = Path(__file__).resolve().parents[1] / "src" / "secondreader" / "result.schema.json"


@cache
def validator(name: str = "StudyResult") -> jsonschema.Draft202012Validator:
    """A validator of one form in the schema's ``$defs`` (StudyResult, StoredResult, StudyView,
    JobView, WorklistItem, WorklistPage, AuditRow...), with the format of ``received_at`` unchecked."""
    schema = json.loads(SCHEMA_FILE.read_text())
    assert name in schema["$defs"], f"the schema has no {name}"
    return jsonschema.Draft202012Validator({**schema, "$ref": f"#/$defs/{name}"})


def assert_schema(d: Any, name: str) -> None:
    """``d`` is a valid ``name`` of the schema (the first problem is the message)."""
    error = jsonschema.exceptions.best_match(validator(name).iter_errors(d))
    assert error is None, f"not a valid {name}: {'/'.join(str(p) for p in error.absolute_path)}: {error.message}"


def assert_study_result(d: dict[str, Any]) -> None:
    """A study result as the CLI writes it, as the worklist keeps it (``ai_priority``) or as the HTTP
    API shows it (``state``, ``reviews``): valid against the schema, and consistent in itself."""
    name = "StudyView" if "state" in d else "StoredResult" if "ai_priority" in d else "StudyResult"
    assert_schema(d, name)
    if d["study_instance_uid"] is None:
        assert d["status"] == "failed" and d["reason"] and d["source"]
    if d["status"] != "screened":
        assert isinstance(d["reason"], str) and d["reason"]
    else:
        assert d["reason"] is None
    for inst in d["instances"]:
        if inst["status"] in ("ineligible", "failed", "duplicate"):
            assert inst["reason"]
    statuses = {i["status"] for i in d["instances"]}
    expected = "screened" if "screened" in statuses else "failed" if "failed" in statuses else "ineligible"
    assert d["status"] == expected
    for f in d["findings"]:
        # added by issue 26: where the model applies, the mode it ran in, whether it routes
        assert f["routes"] == (f["mode"] == "live" and f["applicable"])
        if f["applicable"]:
            assert f["probability"] is not None
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
    fr = d["first_read"]
    assert set(fr["discordant"]) <= set(fr["labels"])
    codes = {f["code"] for f in d["findings"]}
    assert all(code in codes for code in fr["discordant"]), "only the AI's findings are discordant"
