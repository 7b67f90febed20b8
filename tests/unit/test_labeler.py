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


#: A negation cue governs the whole coordinated list after it, to the clause's end (NegEx/NegBio).
LIST_CASES = [
    ("No pneumonia, effusions, edema, pneumothorax, adenopathy, nodules or masses.", N, N),
    ("No pleural effusion, pneumothorax, focal consolidation or suspicious pulmonary nodule.", N, N),
    ("Without focal consolidation, pneumothorax, large pleural effusion or pulmonary nodule identified.", N, N),
    ("There is no pneumothorax, pleural effusion, edema, adenopathy or XXXX focal airspace consolidation.", N, M),
    ("Negative for pneumothorax, effusion, hilar adenopathy, mediastinal widening, nodules or masses.", M, N),
    # the scope ends at a terminator, at a verb of a clause of its own, at "with", at "and the"
    ("No effusion or pneumothorax, but there is a left lower lobe consolidation.", P, M),
    ("No pleural effusion is seen and there is a left lower lobe consolidation.", P, M),
    ("No pneumothorax and the right upper lobe nodule is unchanged.", M, P),
    ("Lungs are clear without consolidation, with a stable right apical nodule.", N, P),
    ("No pneumothorax; there is a new left lower lobe consolidation.", P, M),
    # without a list separator a cue reaches six words, not the end of a long sentence
    ("No pneumothorax at the left apex following removal of the chest tube in the interval "
     "right lower lobe consolidation", P, M),
]

#: Pseudo-negations assert what they name; "to suggest" passes a negation on.
PSEUDO_CASES = [
    ("No change in the right lower lobe consolidation.", P, M),
    ("No significant interval change in the size of the left upper lobe mass.", M, P),
    ("Nodule has not significantly changed.", M, P),
    ("Possible atelectasis, no change in the nodule.", M, P),
    ("Not only is there a consolidation but also a nodule.", P, P),
    ("No increase in the size of the known right hilar mass.", M, P),
    ("There is no focal airspace opacity to suggest pneumonia.", N, M),
    ("Interval resolution of the previously seen consolidation.", N, M),
    ("The fullness to the right hilum is unchanged suggesting no progression of the retrohilar nodule.", M, P),
]

#: Hedges, before or after the mention, and infection as a pneumonia word.
HEDGE_CASES = [
    ("Infection not excluded.", U, M),
    ("Right lower lobe infection cannot be excluded.", U, M),
    ("Upper lobe airspace disease or pulmonary nodule is not entirely excluded.", U, U),
    ("Left base opacity may represent early infection or atelectasis.", U, M),
    ("Findings concerning for interstitial edema or infection.", U, M),
    ("Recommend clinical correlation for infection.", U, M),
    ("The differential diagnosis could include edema, infectious process or interstitial disease.", U, M),
    ("CT could be performed to exclude a nodule.", M, U),
    ("Nodular opacity in the right lower lobe, likely a nipple shadow.", M, U),
    ("No evidence of active infection.", N, M),
    ("Sequela of prior granulomatous infection.", M, M),  # not pneumonia
    ("No osseous infection.", M, M),
]

#: Nodule morphology, named without the noun; a mimic said outright negates it.
MORPHOLOGY_CASES = [
    ("Nodular prominence of the right hilum.", M, P),
    ("Fibronodular infiltrates in both upper lobes.", P, P),  # "infiltrates": the coders code Infiltrate too
    ("Biapical fibronodular pleural thickening/scarring.", M, P),
    ("Reticulonodular changes at both bases.", M, P),
    ("Nodular right lower lobe opacity.", M, P),
    ("Masslike opacification of the right apex.", M, P),
    ("No nodular opacities.", M, N),
    ("Nodular contour of the right hemidiaphragm.", M, M),
    ("Nodular density over the left 4th rib represents a healing rib fracture.", M, N),
]

#: Hypothetical mentions (ConText) assert nothing.
HYPOTHETICAL_CASES = [
    ("If clinically indicated, further evaluation with CT of the thorax can be performed to identify a small "
     "nodule.", M, M),
    ("CT scan is more sensitive in detecting small nodules.", M, M),
    ("Recommend CT to evaluate the right upper lobe nodule.", M, P),  # a nodule to evaluate is one seen
]

#: An abbreviation's full stop does not end the sentence.
ABBREVIATION_CASES = [
    ("Left base opacity, atelectasis vs. pneumonia.", U, M),
    ("Right upper lobe opacity, e.g. scarring or a nodule.", M, P),
    ("No pneumonia. Right upper lobe nodule.", N, P),
]

ALL_CASES = (CASES + LIST_CASES + PSEUDO_CASES + HEDGE_CASES + MORPHOLOGY_CASES + HYPOTHETICAL_CASES
             + ABBREVIATION_CASES)


@pytest.mark.parametrize(("text", "pneumonia", "nodule"), ALL_CASES, ids=[c[0][:60] for c in ALL_CASES])
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


def test_the_sentence_is_kept_as_written() -> None:
    """Evidence is shown to the reviewer: the sentence keeps the report's own case and words."""
    report = "Heart normal.  No focal Air-Space Consolidation or nodule.\nRight upper lobe MASS."
    found = mentions(report)
    assert {(m.finding, m.label, m.sentence) for m in found} == {
        ("pneumonia", Label.NEGATED, "No focal Air-Space Consolidation or nodule."),
        ("nodule", Label.NEGATED, "No focal Air-Space Consolidation or nodule."),
        ("nodule", Label.PRESENT, "Right upper lobe MASS."),
    }
    assert label_report(report) == {"pneumonia": Label.NEGATED, "nodule": Label.PRESENT}


def test_a_hypothetical_mention_is_dropped_not_negated() -> None:
    assert mentions("CT is more sensitive in detecting small nodules.", ["nodule"]) == []
