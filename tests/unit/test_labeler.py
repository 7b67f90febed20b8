"""The report labeler on a table of real-style report sentences with the labels a radiologist gives."""

from __future__ import annotations

import pytest

from secondreader.reports.labeler import Label, label_report, mentions

P, N, U, M = Label.PRESENT, Label.NEGATED, Label.UNCERTAIN, Label.NOT_MENTIONED

CASES = [
    ("Right lower lobe consolidation consistent with pneumonia.", P, M),
    ("No focal consolidation, pleural effusion or pneumothorax.", N, M),
    ("Lungs are clear. No pneumonia.", N, N),
    ("No evidence of pneumonia.", N, M),
    ("Cannot exclude early pneumonia in the left base.", U, M),
    ("Left basilar opacity, atelectasis versus pneumonia.", U, M),
    ("Patchy airspace opacity in the right upper lobe.", P, M),
    ("Possible infiltrate at the left lung base.", U, M),
    ("Interval resolution of the previously seen consolidation.", N, M),
    ("The previously noted infiltrate has resolved.", N, M),
    ("No pneumothorax, but there is a new left lower lobe consolidation.", P, M),
    ("Findings suspicious for multifocal pneumonia.", U, M),
    ("Heart size normal. Mediastinum unremarkable.", M, M),
    ("8 mm nodule in the right upper lobe.", M, P),
    ("No pulmonary nodule or mass.", M, N),
    ("Right upper lobe nodule, unchanged from prior.", M, P),
    ("Nodule unchanged.", M, P),
    ("A rounded opacity in the left midzone may represent a nodule.", M, U),
    ("Cannot exclude a small nodule projecting over the 4th rib.", M, U),
    ("Nipple shadows; no suspicious nodules.", M, N),
    ("There is a 3 cm mass in the right hilum.", M, P),
    ("No consolidation. A 1 cm nodule in the left lower zone.", N, P),
    ("Consolidation in the lingula; no nodules.", P, N),
    ("Pneumonia is not excluded.", U, M),
    ("Infiltrates are no longer seen.", N, M),
    ("Air-space opacities in both lower lobes.", P, M),
    ("No definite focal airspace disease.", N, M),
    ("Lungs clear without consolidation; however a nodular opacity is seen at the right apex.", N, P),
    ("Question of a small left lower lobe infiltrate.", U, M),
    # statements about both lungs negate what they do not name
    ("The lungs are clear.", N, N),
    ("Lungs are well expanded and clear. Heart size normal.", N, N),
    ("Clear lungs bilaterally.", N, N),
    ("No acute cardiopulmonary process.", N, M),
    ("No acute cardiopulmonary abnormality. Stable 6 mm nodule in the right upper lobe.", N, P),
    ("The lungs are clear apart from a 1 cm nodule in the left upper lobe.", N, P),
    ("The left lung is clear. Right lower lobe consolidation.", P, M),
    ("The lungs are hyperinflated.", M, M),
    ("Masses not identified.", M, N),
    ("Bibasilar opacities likely atelectasis; pneumonia not entirely excluded.", U, M),
    ("No change in the left upper lobe mass.", M, P),
    ("There is no consolidation to suggest pneumonia.", N, M),
    ("Heart is enlarged without consolidation.", N, M),
]


@pytest.mark.parametrize(("text", "pneumonia", "nodule"), CASES, ids=[c[0][:40] for c in CASES])
def test_report_sentences(text: str, pneumonia: Label, nodule: Label) -> None:
    labels = label_report(text)
    assert (labels["pneumonia"], labels["nodule"]) == (pneumonia, nodule)


def test_the_strongest_mention_wins_across_sentences() -> None:
    report = "No pneumonia on the left. Right lower lobe consolidation."
    assert label_report(report)["pneumonia"] is Label.PRESENT
    assert [m.label for m in mentions(report, ["pneumonia"])] == [Label.NEGATED, Label.PRESENT]


def test_unknown_finding_is_an_error() -> None:
    with pytest.raises(ValueError, match="no terms for finding 'fracture'"):
        label_report("fracture", ["fracture"])
