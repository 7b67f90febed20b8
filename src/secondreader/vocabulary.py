"""One finding vocabulary: the codes and meanings every output and input uses (contract 4).

A finding code (``nodule``, ``pneumonia``: what model cards, result JSON and routing rules say) has
one SNOMED CT concept that the SEG, the SR and the Secondary Capture banner write, a display name a
radiologist reads, and the SNOMED CT codes accepted on input (FHIR ``conclusionCode``, HL7 OBX coded
values) as naming it. A finding code without an entry here falls back to the private scheme
``99SECONDREADER``, which every object that uses a private code declares in its Coding Scheme
Identification Sequence (:func:`coding_scheme_identification`).
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset

__all__ = ["PRIVATE_SCHEME", "FINDINGS", "FindingTerm", "coding_scheme_identification", "display_name",
           "finding_for_coding", "finding_for_snomed", "private_code", "term"]

#: The private coding scheme of codes with no standard concept (PS3.16 8.2: a "99" prefix).
PRIVATE_SCHEME = "99SECONDREADER"
_PRIVATE_SCHEME_NAME = "secondreader local codes"
_PRIVATE_SCHEME_ORGANISATION = "secondreader project"


@dataclass(frozen=True, slots=True)
class FindingTerm:
    """One finding: its code, the name a radiologist reads, the SNOMED CT concept written on
    output, and every SNOMED CT code read as naming it on input (the output concept included)."""

    code: str
    display: str
    snomed: str
    meaning: str
    accepted: frozenset[str]
    scheme: str = "SCT"

    def __post_init__(self) -> None:
        if self.snomed not in self.accepted:
            raise ValueError(f"{self.code}: the output concept must be accepted on input too")


FINDINGS: dict[str, FindingTerm] = {
    term.code: term for term in (
        FindingTerm(
            "pneumonia", "Pneumonia", "233604007", "Pneumonia",
            frozenset({
                "233604007",  # Pneumonia (disorder)
                "95436008",  # Lung consolidation (disorder)
                "385093006",  # Community acquired pneumonia (disorder)
                "53084003",  # Bacterial pneumonia (disorder)
                "75570004",  # Viral pneumonia (disorder)
                "278516003",  # Lobar pneumonia (disorder)
                "396285007",  # Bronchopneumonia (disorder)
                "312342009",  # Infective pneumonia (disorder)
            }),
        ),
        FindingTerm(
            # Morphologic abnormality: what a SEG segment of category "Morphologically abnormal
            # structure" and an SR finding type name (DICOM CID 7159 lists it for lesions).
            "nodule", "Nodule", "27925004", "Nodule",
            frozenset({
                "27925004",  # Nodule (morphologic abnormality)
                "427359005",  # Solitary nodule of lung (disorder)
                "786838002",  # Pulmonary nodule (finding)
                "126713003",  # Mass of lung (finding): reported nodules over 3 cm are masses
                "416940007",  # Multiple pulmonary nodules (finding)
            }),
        ),
    )
}


def term(code: str) -> FindingTerm:
    """The vocabulary entry of a finding code; a code with no standard concept gets a private one."""
    known = FINDINGS.get(code)
    if known is not None:
        return known
    private = private_code(code)
    return FindingTerm(code, code.replace("_", " ").capitalize(), private, code, frozenset({private}), PRIVATE_SCHEME)


def private_code(name: str) -> str:
    """A code value in :data:`PRIVATE_SCHEME` (at most 16 characters, upper case)."""
    return name.upper()[:16]


def display_name(code: str) -> str:
    return term(code).display


def finding_for_snomed(code: str) -> str | None:
    """The finding code a SNOMED CT code on input names, or None."""
    code = code.strip()
    for finding in FINDINGS.values():  # known findings only: private codes are not SNOMED CT
        if code in finding.accepted:
            return finding.code
    return None


#: How senders name SNOMED CT: FHIR's system URI, HL7 v2 coding-system names (table 0396) and its OID.
_SNOMED_SYSTEMS = frozenset({"HTTP://SNOMED.INFO/SCT", "SCT", "SNM", "SNOMED", "SNOMEDCT", "SNOMED CT",
                             "2.16.840.1.113883.6.96", "URN:OID:2.16.840.1.113883.6.96"})  # upper case


def finding_for_coding(system: str, code: str) -> str | None:
    """The finding a coded value names (FHIR ``coding``, HL7 CE/CWE), or None: only SNOMED CT codes
    are read, so another system's code with the same digits names nothing."""
    if system.strip().upper() not in _SNOMED_SYSTEMS:
        return None
    return finding_for_snomed(code)


def coding_scheme_identification() -> Dataset:
    """The Coding Scheme Identification Sequence item that declares :data:`PRIVATE_SCHEME`."""
    item = Dataset()
    item.CodingSchemeDesignator = PRIVATE_SCHEME
    item.CodingSchemeName = _PRIVATE_SCHEME_NAME
    item.CodingSchemeResponsibleOrganization = _PRIVATE_SCHEME_ORGANISATION
    return item
