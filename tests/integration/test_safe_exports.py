"""Issue 30, finding 9: the training manifest (GET /v1/reviews/manifest.csv) holds no formula and no
absolute server path.

Before the fix it exported raw upload member names (a name starting with ``=`` became a spreadsheet
formula) and the spool's absolute paths."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from secondreader.store import Store
from secondreader.worklist import Worklist

from .test_worklist import _result, _uid


@pytest.mark.parametrize("member", ["=HYPERLINK(\"http://x\",\"y\")", "+1+1", "-2+3", "@SUM(A1)", "\tx", "ok.dcm"])
def test_manifest_cells_are_not_formulas_and_paths_are_relative(store: Store, tmp_path: Path, member: str) -> None:
    worklist = Worklist(store)
    uid = _uid()
    home = tmp_path / "home"
    (home / "spool").mkdir(parents=True)
    archive = home / "spool" / "upload.zip"
    archive.write_bytes(b"x")
    outside = tmp_path / "elsewhere" / "b.dcm"
    worklist.record_result(_result(uid, 0.9, regions=2), files={uid + ".1": (str(archive), member)})
    worklist.add_review(uid, "pneumonia-1", "confirmed_miss", "Dr A", actor="k")
    other = _uid()
    worklist.record_result(_result(other, 0.9), files={other + ".1": (str(outside), None)})
    worklist.add_review(other, "pneumonia-1", "false_positive", "Dr A", actor="k")
    text = worklist.export_manifest(root=home)
    rows = {r["region_id"] + r["path"]: r for r in csv.DictReader(io.StringIO(text))}
    mine = next(r for r in rows.values() if r["path"] == "spool/upload.zip")
    assert mine["member"] == (member if member == "ok.dcm" else "'" + member)
    assert any(r["path"] == "b.dcm" for r in rows.values())  # outside the state folder: its name only
    assert str(tmp_path) not in text
    for row in csv.reader(io.StringIO(text)):
        assert not any(cell.startswith(("=", "+", "-", "@", "\t", "\r")) for cell in row)
