"""First reads: JSON bodies, HL7 v2 ORU^R01 parsing (separators, identifiers, text, ACK/NAK), FHIR
DiagnosticReport, interpretation against the AI's findings, and the routing rules file."""

from __future__ import annotations

import base64
import socket
from pathlib import Path

import pytest

from secondreader.errors import InvalidReportError
from secondreader.reports.fhir import report_from_fhir
from secondreader.reports.firstread import ReportIn, interpret, report_from_json
from secondreader.reports.hl7 import Hl7Listener, ack, parse_message, report_from_oru, split_messages
from secondreader.reports.labeler import Label
from secondreader.scoring.priority import Priority, Route
from secondreader.worklist.routing import RoutingRules, Situation, load_rules

from ..conftest import CANARY_NAME

ORU = [
    "MSH|^~\\&|RIS|HOSP|SR|HOSP|20261128||ORU^R01|MSG001|P|2.5",
    f"PID|1||123^^^H||{CANARY_NAME}",
    "OBR|1|PL1|FILLER9|71045^XR CHEST|||20261128|||||||||||ACC123",
    "OBX|1|TX|FINDINGS||Lungs: no focal consolidation.~Possible nodule in the right upper lobe.||||||F",
    "OBX|2|TX|CANCELLED||Pneumonia.||||||X",
    "OBX|3|FT|IMP||Impression:\\.br\\Heart size normal.||||||F",
    "ZDS|1.2.840.1234.5^RIS^Application^DICOM",
]


@pytest.mark.parametrize("separator", ["\r", "\n", "\r\n"])
def test_oru_parses_whatever_the_segment_separator(separator: str) -> None:
    message = parse_message(separator.join(ORU))
    report = report_from_oru(message)
    assert report.study_instance_uid == "1.2.840.1234.5"
    assert report.accession_number == "ACC123"  # OBR-18 before the filler order number
    assert report.text.splitlines() == ["Lungs: no focal consolidation.", "Possible nodule in the right upper lobe.",
                                        "Impression:", "Heart size normal."]
    assert "Pneumonia" not in report.text  # a cancelled observation is not part of the report
    assert CANARY_NAME not in repr(report)


def test_oru_identifiers_fallbacks_and_rejections() -> None:
    without = [s for s in ORU if not s.startswith("ZDS")]
    without[2] = "OBR|1|PL1|FILLER9|71045^XR CHEST"
    report = report_from_oru(parse_message("\r".join(without)))
    assert report.study_instance_uid is None and report.accession_number == "FILLER9"
    uid_in_obx = [*without, "OBX|4|ST|113014^Study Instance UID^DCM||1.2.3.4||||||F"]
    assert report_from_oru(parse_message("\r".join(uid_in_obx))).study_instance_uid == "1.2.3.4"
    with pytest.raises(InvalidReportError, match="not a result"):
        report_from_oru(parse_message("MSH|^~\\&|A|B|C|D|x||ADT^A01|1|P|2.5\rPID|1"))
    with pytest.raises(InvalidReportError, match="MSH"):
        parse_message(f"PID|1||X||{CANARY_NAME}")
    with pytest.raises(InvalidReportError, match="malformed Study Instance UID"):
        report_from_oru(parse_message("\r".join([*without, "ZDS|not-a-uid"])))
    with pytest.raises(InvalidReportError, match="needs a study_instance_uid or an accession_number"):
        report_from_oru(parse_message("MSH|^~\\&|A|B|C|D|x||ORU^R01|1|P|2.5\rOBR|1\rOBX|1|TX|X||No mass.||||||F"))


def test_a_file_of_messages_splits_on_msh_and_ack_answers_each() -> None:
    text = "\n".join(ORU) + "\n" + "\n".join(ORU).replace("MSG001", "MSG002") + "\n"
    messages = list(split_messages(text))
    assert len(messages) == 2 and all(m.startswith("MSH") for m in messages)
    reply = ack(parse_message(messages[1]), "AR", "no study | identifier")
    assert b"MSA|AR|MSG002|no study   identifier" in reply.replace(b"\r", b"|")
    assert ack(None, "AR", "garbage").startswith(b"MSH|")


def test_mllp_listener_acks_accepts_and_rejects() -> None:
    got: list[ReportIn] = []

    def handler(report: ReportIn) -> None:
        if report.accession_number == "FAIL":
            raise InvalidReportError("unknown accession")
        got.append(report)

    listener = Hl7Listener("127.0.0.1", 0, handler)
    listener.start()
    try:
        with socket.create_connection(("127.0.0.1", listener.port), timeout=10) as sock:
            def send(message: str) -> bytes:
                sock.sendall(b"\x0b" + message.encode() + b"\x1c\r")
                reply = b""
                while not reply.endswith(b"\x1c\r"):
                    reply += sock.recv(4096)
                return reply
            assert b"MSA|AA|MSG001" in send("\n".join(ORU))
            failing = "\r".join(ORU).replace("ACC123", "FAIL").replace("MSG001", "MSG002")
            assert b"MSA|AR|MSG002|unknown accession" in send(failing)
            assert b"MSA|AR" in send("MSH|^~\\&|A|B|C|D|x||ADT^A01|7|P|2.5")
        with socket.create_connection(("127.0.0.1", listener.port), timeout=10) as sock:
            sock.sendall(b"this is not MLLP\x1c\r")
            assert b"MSA|AR" in sock.recv(4096)
    finally:
        listener.stop()
    assert [r.accession_number for r in got] == ["ACC123"]


def _fhir(**extra: object) -> dict[str, object]:
    return {
        "resourceType": "DiagnosticReport", "status": "final",
        "identifier": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                             "code": "ACSN"}]}, "value": "ACC-F1"}],
        "contained": [{"resourceType": "ImagingStudy", "id": "i",
                       "identifier": [{"system": "urn:dicom:uid", "value": "urn:oid:1.2.3.4.5"}]}],
        "subject": {"display": CANARY_NAME},
        **extra,
    }


def test_fhir_diagnostic_report() -> None:
    report = report_from_fhir(_fhir(conclusion="Left basal consolidation.", presentedForm=[
        {"contentType": "text/plain; charset=utf-8", "data": base64.b64encode(b"Small nodule, right apex.").decode()}]))
    assert (report.study_instance_uid, report.accession_number) == ("1.2.3.4.5", "ACC-F1")
    assert report.text == "Left basal consolidation.\nSmall nodule, right apex."
    coded = report_from_fhir(_fhir(text={"div": "<div><p>Normal &amp; clear.</p></div>"},
                                   conclusionCode=[{"coding": [{"system": "http://snomed.info/sct",
                                                                "code": "233604007"}]}]))
    assert coded.labels == {"pneumonia": Label.PRESENT} and "Normal & clear." in coded.text
    for bad, reason in [({"resourceType": "Observation"}, "DiagnosticReport"),
                        (_fhir(status="entered-in-error", conclusion="x"), "not a usable"),
                        (_fhir(presentedForm=[{"contentType": "text/plain", "data": "%%%"}]), "base64"),
                        (_fhir(), "report text or per-finding labels")]:
        with pytest.raises(InvalidReportError, match=reason):
            report_from_fhir(bad)


def test_json_reports_and_interpretation() -> None:
    report = report_from_json({"study_instance_uid": "1.2.3", "text": "No nodule. Possible consolidation.",
                               "findings": {"nodule": "present"}})
    read = interpret(report, ["pneumonia", "nodule"], {"pneumonia", "nodule"})
    assert read.labels == {"pneumonia": Label.UNCERTAIN, "nodule": Label.PRESENT}  # structured wins
    assert read.status == "positive" and read.discordant == []
    silent = interpret(ReportIn("1.2", None, "Heart size normal."), ["pneumonia", "nodule"], {"nodule"})
    assert silent.status == "negative" and silent.discordant == ["nodule"]
    assert silent.to_json()["labels"] == {"pneumonia": "not_mentioned", "nodule": "not_mentioned"}
    for body, reason in [([], "JSON object"), ({"text": "x"}, "study_instance_uid"),
                         ({"accession_number": "A"}, "report text"), ({"accession_number": 5, "text": "x"}, "string"),
                         ({"accession_number": "A", "findings": {"nodule": "maybe"}}, "label must be"),
                         ({"accession_number": "A", "text": "x" * 100_001}, "over")]:
        with pytest.raises(InvalidReportError, match=reason):
            report_from_json(body)


def _situation(route: Route, score: int, *, report: bool = False, discordant: bool = False,
               status: str = "screened") -> Situation:
    return Situation(status=status, ai=Priority(score, route, "ai"), report=report, discordant=discordant)


def test_default_routing_rules() -> None:
    rules = load_rules()
    assert rules.route(_situation(Route.REVIEW, 70)).rule == "ai-positive"
    assert rules.route(_situation(Route.URGENT, 95, report=True, discordant=True)) == Priority(95, Route.URGENT,
                                                                                              "discordant-urgent")
    assert rules.route(_situation(Route.REVIEW, 70, report=True, discordant=True)).route is Route.REVIEW
    assert rules.route(_situation(Route.REVIEW, 70, report=True)) == Priority(70, Route.NONE, "concordant")
    assert rules.route(_situation(Route.REVIEW, 50, status="failed")).rule == "screening-failed"
    waited = rules.escalate(Priority(60, Route.REVIEW, "discordant"), 5 * 3600)
    assert waited == Priority(90, Route.URGENT, "max-wait")
    assert rules.escalate(Priority(10, Route.NONE, "concordant"), 99 * 3600).rule == "concordant"


def test_routing_rules_files_are_validated(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("version: 1\nrules:\n  - id: all-to-review\n    route: review\n")
    assert load_rules(path).route(_situation(Route.NONE, 3)) == Priority(3, Route.REVIEW, "all-to-review")
    for text, reason in [("rules: [", "not valid YAML"), ("version: 1\nrules: []\n", "rules"),
                         ("version: 1\nrules:\n  - id: a\n    when: {report: none}\n    route: none\n", "catch-all"),
                         ("version: 1\nrules:\n  - id: a\n    when: {colour: red}\n    route: none\n", "colour"),
                         ("version: 1\nrules:\n  - {id: a, route: none}\n  - {id: a, route: review}\n", "unique")]:
        path.write_text(text)
        with pytest.raises(ValueError, match=reason):
            load_rules(path)
    with pytest.raises(ValueError, match="cannot be read"):
        load_rules(tmp_path / "missing.yaml")
    assert isinstance(load_rules(), RoutingRules)
