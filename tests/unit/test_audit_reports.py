"""Audit inputs and bookkeeping without a model: the report readers (CSV, HL7 file), the Wilson
interval, the checkpoint (torn last line, mismatched configuration) and the summary tables."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from secondreader.audit.checkpoint import Checkpoint, CheckpointMismatchError
from secondreader.audit.reports import UNKNOWN, assessable_codes, load_reports
from secondreader.audit.summary import summarise
from secondreader.errors import InvalidInputError
from secondreader.reports.firstread import interpret
from secondreader.reports.labeler import Label
from secondreader.stats import wilson_interval

from ..conftest import CANARY_NAME

CODES = ("pneumonia", "nodule")


def _csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "reports.csv"
    path.write_text(text)
    return path


def test_csv_with_report_text_is_labelled_and_matched_by_uid_or_accession(tmp_path: Path) -> None:
    path = _csv(tmp_path, "study_instance_uid,accession_number,patient_name,report_text\n"
                          f"1.2.3,,{CANARY_NAME},No focal consolidation. A 1 cm nodule in the right upper lobe.\n"
                          f",ACC9,{CANARY_NAME},\"Right lower lobe pneumonia, new.\"\n")
    index = load_reports(path, CODES)
    assert len(index) == 2 and not index.problems
    first = index.lookup("1.2.3", None)
    assert first is not None
    read = interpret(first, assessable_codes(first, CODES), {"pneumonia", "nodule"})
    assert read.labels == {"pneumonia": Label.NEGATED, "nodule": Label.PRESENT}
    assert read.discordant == ["pneumonia"]
    by_accession = index.lookup("9.9.9", "ACC9")
    assert by_accession is not None and "pneumonia" in by_accession.text.lower()
    assert index.lookup("9.9.9", None) is None
    # the uid wins over the accession number
    assert index.lookup("1.2.3", "ACC9") is first


def test_csv_label_columns_chexpert_and_words(tmp_path: Path) -> None:
    path = _csv(tmp_path, "accession_number,pneumonia,other\nA1,1,x\nA2,0,x\nA3,-1,x\nA4,,x\nA5,absent,x\n")
    index = load_reports(path, CODES)
    labels = {acc: index.by_accession[acc].labels["pneumonia"] for acc in ("A1", "A2", "A3", "A4", "A5")}
    assert labels == {"A1": Label.PRESENT, "A2": Label.NEGATED, "A3": Label.UNCERTAIN,
                      "A4": Label.NOT_MENTIONED, "A5": Label.NEGATED}
    # no nodule column and no text: the report cannot speak to nodules
    assert assessable_codes(index.by_accession["A1"], CODES) == ["pneumonia"]
    assert UNKNOWN == "unknown"


def test_csv_bad_rows_are_counted_not_fatal(tmp_path: Path) -> None:
    path = _csv(tmp_path, "study_instance_uid,accession_number,pneumonia\n1.2.3,,maybe\n,,1\n1.2.4,,0\n")
    index = load_reports(path, CODES)
    assert len(index) == 1
    assert [p.where for p in index.problems] == ["row 2", "row 3"]
    assert "pneumonia" in index.problems[0].reason
    assert "study_instance_uid or an accession_number" in index.problems[1].reason


def test_a_csv_row_cut_at_an_unquoted_comma_is_a_problem_not_a_shorter_report(tmp_path: Path) -> None:
    """Found trying the audit as a user: "No pneumonia, effusions, nodules or masses." unquoted was
    read as "No pneumonia" alone, and the nodule it negates as not mentioned."""
    path = _csv(tmp_path, "study_instance_uid,report_text\n1.2.3,No pneumonia, effusions, nodules or masses.\n"
                          '1.2.4,"No pneumonia, effusions, nodules or masses."\n')
    index = load_reports(path, CODES)
    assert len(index) == 1 and [p.where for p in index.problems] == ["row 2"]
    assert "more cells than the header" in index.problems[0].reason


@pytest.mark.parametrize("header, message", [
    ("report_text\nhello\n", "study_instance_uid or an accession_number column"),
    ("study_instance_uid,comment\n1.2.3,x\n", "report_text column or a label column"),
])
def test_csv_without_the_needed_columns_is_refused(tmp_path: Path, header: str, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        load_reports(_csv(tmp_path, header), CODES)


def _oru(control: str, accession: str, text: str, study_uid: str | None = None) -> str:
    segments = [
        f"MSH|^~\\&|RIS|HOSP|SECONDREADER|HOSP|20261128101500||ORU^R01|{control}|P|2.5",
        f"PID|1||PID123^^^HOSP||{CANARY_NAME}||19700101|F",
        f"OBR|1||{accession}|71046^XR CHEST 2 VIEWS^CPT|||20261128100000|||||||||||{accession}",
    ]
    if study_uid:
        segments.append(f"ZDS|{study_uid}^RIS^Application^DICOM")
    segments.append(f"OBX|1|TX|18782-3^Radiology Study observation^LN||{text}||||||F")
    return "\r".join(segments)


def test_hl7_file_with_mllp_framing_and_a_bad_message(tmp_path: Path) -> None:
    path = tmp_path / "reports.hl7"
    messages = [
        _oru("C1", "ACC1", "No focal consolidation."),
        _oru("C2", "ACC2", "Consolidation in the left lower lobe.", study_uid="1.2.840.99.1"),
        "MSH|^~\\&|RIS|HOSP|SR|HOSP|20261128||ADT^A01|C3|P|2.5\rPID|1||X||" + CANARY_NAME,
    ]
    path.write_bytes(b"".join(b"\x0b" + m.encode() + b"\x1c\r" for m in messages))
    index = load_reports(path, CODES)
    assert len(index) == 2
    assert index.by_accession["ACC1"].source == "hl7"
    assert index.lookup("1.2.840.99.1", None) is index.by_accession["ACC2"]
    assert [p.where for p in index.problems] == ["message 3"]
    assert "MSH-9" in index.problems[0].reason and CANARY_NAME not in index.problems[0].reason  # the type is not quoted


def test_hl7_file_with_newline_segments(tmp_path: Path) -> None:
    path = tmp_path / "reports.txt"
    path.write_text("\n".join(_oru(f"C{i}", f"ACC{i}", "Clear lungs.").replace("\r", "\n") for i in range(3)) + "\n")
    assert sorted(load_reports(path, CODES).by_accession) == ["ACC0", "ACC1", "ACC2"]


def test_wilson_interval_matches_published_values() -> None:
    # Newcombe (1998), Table I: 81/263 → 0.2553–0.3662 (Wilson, no continuity correction)
    lo, hi = wilson_interval(81, 263)
    assert lo == pytest.approx(0.2553, abs=1e-4) and hi == pytest.approx(0.3662, abs=1e-4)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def _row(key: str, *, discordant: bool = False, month: str | None = "2024-01", status: str = "screened",
         report: str = "available") -> dict[str, object]:
    return {"key": key, "study_instance_uid": key, "accession_number": None, "study_month": month,
            "status": status, "reason": None, "source": None, "priority_score": 80 if discordant else 10,
            "route": "review", "rule": "ai-positive",
            "findings": {"pneumonia": {"probability": 0.9, "positive": discordant, "model": "m@1"}},
            "report": report, "labels": {"pneumonia": "negated"}, "discordant": discordant,
            "discordant_findings": ["pneumonia"] if discordant else [], "evidence": {}, "images": {},
            "instances": 1, "bad_files": [], "timing_ms": {}}


def test_summary_counts_and_rates() -> None:
    rows = [_row("1", discordant=True), _row("2"), _row("3", month="2024-02", discordant=True),
            _row("4", report="missing"), _row("5", status="ineligible"), _row("6", status="failed")]
    s = summarise(rows, ["pneumonia"])  # type: ignore[arg-type]
    assert (s.studies, s.screened, s.ineligible, s.failed, s.with_report) == (6, 4, 1, 1, 3)
    assert (s.discordance.count, s.discordance.total) == (2, 3)
    assert s.discordance.interval == wilson_interval(2, 3)
    assert {m: (r.count, r.total) for m, r in s.by_month.items()} == {"2024-01": (1, 2), "2024-02": (1, 1)}
    assert s.by_finding["pneumonia"]["ai_positive"] == 2


def test_checkpoint_drops_a_torn_line_and_refuses_other_models(tmp_path: Path) -> None:
    meta = {"models": ["m@1"], "reports": "abc"}
    cp = Checkpoint(tmp_path, meta)
    cp.append("1.2.3", [{"key": "1.2.3"}])
    cp.append("1.2.4", [{"key": "1.2.4"}])
    cp.close()
    with open(tmp_path / Checkpoint.FILE, "a") as stream:
        stream.write('{"task": "1.2.5", "rows": [{"ke')  # the machine died mid-write
    again = Checkpoint(tmp_path, meta)
    assert sorted(again.done) == ["1.2.3", "1.2.4"] and "1.2.5" not in again
    again.append("1.2.5", [{"key": "1.2.5"}])
    again.close()
    lines = (tmp_path / Checkpoint.FILE).read_text().splitlines()
    assert [json.loads(line)["task"] for line in lines] == ["1.2.3", "1.2.4", "1.2.5"]
    with pytest.raises(CheckpointMismatchError, match="models"):
        Checkpoint(tmp_path, {"models": ["m@2"], "reports": "abc"})
    assert Checkpoint(tmp_path, {"models": ["m@2"], "reports": "abc"}, fresh=True).done == {}
