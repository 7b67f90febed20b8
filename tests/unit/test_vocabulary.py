"""One finding vocabulary: what the outputs write and what FHIR and HL7 first reads are read against."""

from __future__ import annotations

import pytest

from secondreader.outputs.dicom import finding_concept, sc_title
from secondreader.reports.fhir import report_from_fhir
from secondreader.reports.hl7 import parse_message, report_from_oru
from secondreader.reports.labeler import Label
from secondreader.scoring.priority import FindingResult
from secondreader.vocabulary import (
    FINDINGS,
    PRIVATE_SCHEME,
    FindingTerm,
    coding_scheme_identification,
    finding_for_coding,
    finding_for_snomed,
    term,
)

from .test_first_reads import ORU, _fhir


@pytest.mark.parametrize(("code", "finding"), [
    ("27925004", "nodule"), ("427359005", "nodule"), ("786838002", "nodule"), ("416940007", "nodule"),
    ("233604007", "pneumonia"), ("95436008", "pneumonia"), ("385093006", "pneumonia"), ("53084003", "pneumonia"),
    ("75570004", "pneumonia"), (" 278516003 ", "pneumonia"), ("22298006", None), ("", None), ("NODULE", None),
])
def test_common_snomed_codes_name_their_finding(code: str, finding: str | None) -> None:
    assert finding_for_snomed(code) == finding


def test_only_snomed_codings_name_a_finding() -> None:
    assert finding_for_coding("http://snomed.info/sct", "27925004") == "nodule"
    assert finding_for_coding(" SNOMED CT ", "233604007") == "pneumonia"
    assert finding_for_coding("http://loinc.org", "27925004") is None
    assert finding_for_coding("", "27925004") is None


def test_outputs_write_the_vocabularys_concepts() -> None:
    for code, entry in FINDINGS.items():
        concept = finding_concept(code)
        assert (concept.value, concept.scheme_designator, concept.meaning) == (entry.snomed, "SCT", entry.meaning)
        assert finding_for_snomed(concept.value) == code  # what we write, we read back as the same finding
    # a finding the vocabulary lacks gets a private code, in the declared scheme
    other = finding_concept("pleural_effusion")
    assert other.scheme_designator == PRIVATE_SCHEME and other.value == "PLEURAL_EFFUSION"
    assert term("pleural_effusion").display == "Pleural effusion"
    declared = coding_scheme_identification()
    assert declared.CodingSchemeDesignator == PRIVATE_SCHEME and declared.CodingSchemeName
    with pytest.raises(ValueError, match="accepted on input"):
        FindingTerm("x", "X", "1", "X", frozenset({"2"}))


def test_fhir_and_hl7_accept_the_same_codes() -> None:
    for code in ("27925004", "427359005", "786838002"):
        coded = report_from_fhir(_fhir(conclusionCode=[{"coding": [{"system": "http://snomed.info/sct",
                                                                    "code": code}]}]))
        assert coded.labels == {"nodule": Label.PRESENT}
    lines = [*ORU, "OBX|4|CWE|59776-5^Procedure findings^LN||27925004^Nodule^SCT||||||F",
             "OBX|5|CE|IMP2^Coded impression^L||X123^Local code^L~385093006^CAP^SNOMED CT||||||F"]
    report = report_from_oru(parse_message("\r".join(lines)))
    assert report.labels == {"nodule": Label.PRESENT, "pneumonia": Label.PRESENT}
    assert "Possible nodule" in report.text  # the text OBX values are still read
    # a code in another system is not read as SNOMED CT, even when its digits match
    other = report_from_oru(parse_message("\r".join([*ORU, "OBX|4|CE|X^Y^L||27925004^Something^L||||||F"])))
    assert other.labels == {}


def test_the_banner_states_finding_probability_and_verdict() -> None:
    findings = [FindingResult("nodule", 0.17, 0.3, 0.8, "cxr-nodule"),
                FindingResult("pneumonia", 0.91, 0.5, 0.95, "cxr-pneumonia-adult"),
                FindingResult("pneumonia", None, 0.5, 0.95, "cxr-pneumonia", applicable=False,
                              not_applicable_reason="age 53 years is outside 1-5 years"),
                FindingResult("nodule", 0.6, 0.3, 0.8, "cxr-nodule", mode="shadow")]
    assert sc_title(findings) == ("Nodule 0.17 negative, Pneumonia 0.91 positive, Pneumonia n/a, "
                                  "Nodule 0.60 positive (shadow)")
