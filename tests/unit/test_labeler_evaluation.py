"""``secondreader evaluate-labeler`` on a handful of OpenI-shaped reports written here: the MeSH
mapping, the figures and the errors with their sentences. The dev half of the real collection is
measured in tests/integration/test_labeler_openi.py."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from secondreader.cli import main
from secondreader.reports.evaluate import MESH_FINDINGS, coding, evaluate, format_text, part_of, read_openi


def _xml(report_id: str, findings: str, impression: str, mesh: list[str]) -> str:
    majors = "".join(f"<major>{m}</major>" for m in mesh)
    return (f'<?xml version="1.0" encoding="utf-8"?><eCitation><uId id="{report_id}"/><MedlineCitation><Article>'
            f'<Abstract><AbstractText Label="INDICATION">Cough; rule out pneumonia and nodule.</AbstractText>'
            f'<AbstractText Label="FINDINGS">{findings}</AbstractText>'
            f'<AbstractText Label="IMPRESSION">{impression}</AbstractText></Abstract></Article></MedlineCitation>'
            f"<MeSH>{majors}</MeSH></eCitation>")


REPORTS = {
    # coded nodule, read present; coded pneumonia, read present
    "CXR1": ("Right upper lobe 8 mm nodule.", "Left lower lobe consolidation.",
             ["Nodule/lung/upper lobe/right", "Consolidation/lung/lower lobe/left"]),
    # coded nodule, named only by morphology
    "CXR2": ("Biapical fibronodular scarring.", "No acute disease.", ["Nodule/lung/apex/bilateral"]),
    # coded mass, missed: the report never names it
    "CXR3": ("Opacity in the right upper lobe.", "Follow-up advised.", ["Mass/lung/upper lobe/right"]),
    # normal, with the long negated list
    "CXR4": ("No pneumonia, effusions, edema, pneumothorax, adenopathy, nodules or masses.", "Normal chest.",
             ["normal"]),
    # normal, read as a nodule: a false positive
    "CXR5": ("Small nodule in the left lung.", "No acute disease.", ["normal"]),
    # coded otherwise: in neither figure
    "CXR6": ("Cardiomegaly.", "No pneumonia.", ["Cardiomegaly/mild"]),
}


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    for report_id, (findings, impression, mesh) in REPORTS.items():
        (tmp_path / f"{report_id[3:]}.xml").write_text(_xml(report_id, findings, impression, mesh))
    (tmp_path / "notes.xml").write_text("<not-closed")  # not a report: skipped
    return tmp_path


def test_reads_a_folder_and_a_tgz_alike(folder: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    archive = tmp_path / "reports.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="ecgen-radiology")
    from_folder, from_tar = read_openi(folder), read_openi(archive)
    assert [r.report_id for r in from_folder] == [r.report_id for r in from_tar] == sorted(REPORTS)
    first = from_folder[0]
    # FINDINGS and IMPRESSION only: the indication ("rule out pneumonia") is not the reader's finding
    assert first.text == "Right upper lobe 8 mm nodule.\nLeft lower lobe consolidation."
    assert first.mesh == ("Nodule/lung/upper lobe/right", "Consolidation/lung/lower lobe/left")
    assert "skipped 1 file(s) that are not well-formed XML" in caplog.text


def test_the_mesh_mapping_decides_the_truth(folder: Path) -> None:
    reports = {r.report_id: r for r in read_openi(folder)}
    assert MESH_FINDINGS["nodule"] == ("Nodule", "Mass")
    assert [coding(reports[i], "nodule") for i in ("CXR1", "CXR3", "CXR4", "CXR6")] == [
        "positive", "positive", "normal", "other"]
    assert coding(reports["CXR1"], "pneumonia") == "positive"


def test_figures_confusion_and_errors(folder: Path) -> None:
    summary = evaluate(read_openi(folder))
    nodule = summary["findings"]["nodule"]
    assert nodule["sensitivity"]["count"] == 2 and nodule["sensitivity"]["total"] == 3
    assert nodule["specificity"]["count"] == 1 and nodule["specificity"]["total"] == 2
    lo, hi = nodule["sensitivity"]["ci95"]
    assert 0 < lo < 2 / 3 < hi < 1
    assert nodule["confusion"]["positive"] == {"present": 2, "uncertain": 0, "negated": 0, "not_mentioned": 1}
    assert nodule["confusion"]["normal"]["negated"] == 1 and nodule["confusion"]["other"]["not_mentioned"] == 1
    errors = {e["report"]: e for e in nodule["errors"]}
    assert set(errors) == {"CXR3", "CXR5"}
    assert errors["CXR3"]["kind"] == "missed" and errors["CXR3"]["text"].startswith("Opacity in the right")
    assert errors["CXR5"]["kind"] == "false_positive"
    assert errors["CXR5"]["sentences"] == [{"label": "present", "term": "nodule",
                                            "sentence": "Small nodule in the left lung."}]
    pneumonia = summary["findings"]["pneumonia"]
    assert (pneumonia["sensitivity"]["count"], pneumonia["sensitivity"]["total"]) == (1, 1)
    assert (pneumonia["specificity"]["count"], pneumonia["specificity"]["total"]) == (2, 2)
    text = format_text(summary)
    assert "sensitivity  0.667 (2/3; 95% CI" in text
    assert '"Small nodule in the left lung."' in text
    assert "targets: NOT met" in text


def test_the_hold_out_is_a_stable_third() -> None:
    parts = [part_of(f"CXR{i}") for i in range(3000)]
    assert part_of("CXR207") == part_of("CXR207")
    assert 0.29 < parts.count("check") / len(parts) < 0.37


def test_cli_prints_json_and_checks_targets(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate-labeler", str(folder), "--format", "json", "--finding", "nodule"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert list(summary["findings"]) == ["nodule"]
    assert summary["findings"]["nodule"]["sensitivity"]["value"] == pytest.approx(2 / 3, abs=1e-4)
    assert main(["evaluate-labeler", str(folder), "--check-targets"]) == 1  # 2/3 is below 0.95


def test_cli_usage_errors(tmp_path: Path) -> None:
    assert main(["evaluate-labeler", str(tmp_path / "absent.tgz")]) == 2
    (tmp_path / "empty").mkdir()
    assert main(["evaluate-labeler", str(tmp_path / "empty")]) == 2
    with pytest.raises(ValueError, match="no MeSH mapping"):
        evaluate([], ["fracture"])
