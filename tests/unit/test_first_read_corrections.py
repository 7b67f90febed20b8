"""interpret() with a reviewer's corrections: they win over the labeler and the sender's structured
labels, discordance follows them, and what the labeler read stays visible beside them."""

from __future__ import annotations

from secondreader.reports.firstread import Correction, ReportIn, interpret
from secondreader.reports.labeler import Label

TEXT = "No pneumonia, effusions, edema, pneumothorax, adenopathy, nodules or masses."


def _correction(finding: str, label: Label, read: Label) -> Correction:
    return Correction(finding, label, read, "Dr A", "2026-12-07T01:00:00+00:00")


def test_without_corrections_the_labeler_decides_and_says_so() -> None:
    read = interpret(ReportIn("1.2.3", None, TEXT), ["pneumonia", "nodule"], {"nodule"})
    assert read.labels == {"pneumonia": Label.NEGATED, "nodule": Label.NEGATED}
    assert read.discordant == ["nodule"]
    assert read.sources == {"pneumonia": "labeler", "nodule": "labeler"}
    assert read.labeler == read.labels and read.corrections == {}
    assert read.evidence["nodule"] == TEXT
    assert read.to_json()["corrections"] == {}


def test_a_correction_wins_and_changes_the_discordance() -> None:
    corrections = {"nodule": _correction("nodule", Label.PRESENT, Label.NEGATED)}
    read = interpret(ReportIn("1.2.3", None, TEXT), ["pneumonia", "nodule"], {"nodule"}, corrections=corrections)
    assert read.labels["nodule"] is Label.PRESENT and read.discordant == []
    assert read.labeler["nodule"] is Label.NEGATED and read.sources["nodule"] == "reviewer"
    assert read.evidence["nodule"] == TEXT  # the sentence that was mis-read stays shown
    assert read.to_json()["corrections"] == {"nodule": {"label": "present", "labeler_label": "negated",
                                                         "reviewer": "Dr A", "at": "2026-12-07T01:00:00+00:00"}}
    assert read.status == "positive"


def test_a_correction_outranks_structured_labels_and_one_that_agrees_is_not_applied() -> None:
    report = ReportIn("1.2.3", None, TEXT, {"pneumonia": Label.PRESENT})
    corrections = {"pneumonia": _correction("pneumonia", Label.NEGATED, Label.NEGATED),
                   "nodule": _correction("nodule", Label.NEGATED, Label.PRESENT)}
    read = interpret(report, ["pneumonia", "nodule"], {"pneumonia"}, corrections=corrections)
    assert read.labels == {"pneumonia": Label.NEGATED, "nodule": Label.NEGATED}
    assert read.sources == {"pneumonia": "reviewer", "nodule": "labeler"}  # nodule's agrees: not applied
    assert set(read.corrections) == {"pneumonia"} and read.discordant == ["pneumonia"]
