"""A rule-based report labeler in the spirit of NegEx and the CheXpert labeler.

Each sentence is searched for the finding's terms; a mention is *negated* when a negation cue
governs it (before it: "no", "without", "negative for", "resolution of"...; after it: "is not seen",
"has resolved"...) within its scope (a scope ends at "but", "however", "although", "apart from" and
similar); *uncertain* when an uncertainty cue governs it ("cannot exclude", "possible", "may
represent", "suspicious for"...); otherwise *present* ("nodule unchanged" is present). A finding's
label is the strongest of its mentions: present > uncertain > negated > not_mentioned.

A statement about both lungs negates findings it never names, as a radiologist reads it: "the lungs
are clear" negates pneumonia and nodules, "no acute cardiopulmonary process" negates pneumonia
only (a chronic nodule is not acute). A named finding anywhere in the report still outranks it, and
a statement about one lung ("the left lung is clear") negates nothing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

__all__ = ["FINDING_TERMS", "Label", "Mention", "label_report", "mentions"]


class Label(str, Enum):
    PRESENT = "present"
    NEGATED = "negated"
    UNCERTAIN = "uncertain"
    NOT_MENTIONED = "not_mentioned"


#: Terms per finding code (lower case; matched on word boundaries, plurals included).
FINDING_TERMS: Mapping[str, Sequence[str]] = {
    "pneumonia": ("pneumonia", "pneumonias", "consolidation", "consolidations", "consolidative opacity",
                  "airspace opacity", "airspace opacities", "airspace disease", "infiltrate", "infiltrates",
                  "infiltration", "bronchopneumonia"),
    "nodule": ("nodule", "nodules", "mass", "masses", "rounded opacity", "rounded opacities", "nodular opacity",
               "nodular opacities", "lung lesion", "pulmonary lesion", "coin lesion"),
}

_UNCERTAIN_BEFORE = (
    "cannot exclude", "can not exclude", "cannot be excluded", "cannot rule out", "can not rule out",
    "not excluded", "possible", "possibly", "may represent", "may be", "might", "could represent",
    "could be", "questionable", "suspicious for", "suspicion of", "suspected", "concern for",
    "concerning for", "worrisome for", "differential includes", "versus", "vs", "probable", "likely",
    "question of", "equivocal", "indeterminate", "borderline", "suggestive of", "compatible with",
    "consistent with", "evaluate for", "rule out",
)
_UNCERTAIN_AFTER = ("cannot be excluded", "can not be excluded", "is not excluded", "not excluded",
                    "is possible", "is suspected", "is questioned", "versus", "vs", "may be present",
                    "may represent", "could represent", "might represent", "may reflect", "may be",
                    "not entirely excluded", "not completely excluded", "not totally excluded",
                    "cannot be entirely excluded", "cannot be completely excluded")
_NEGATION_BEFORE = (
    "no", "not", "without", "negative for", "no evidence of", "no sign of", "no signs of", "free of",
    "clear of", "absence of", "resolution of", "resolved", "ruled out", "rules out", "interval resolution of",
    "there is no", "there are no", "no new", "no focal", "no acute", "no definite", "never", "nor",
)
_NEGATION_AFTER = ("is not seen", "are not seen", "not seen", "is absent", "are absent", "has resolved",
                   "have resolved", "resolved", "is no longer seen", "are no longer seen", "no longer seen",
                   "not identified", "is not identified", "are not identified", "has cleared", "have cleared",
                   "ruled out")
#: Whole-lung normal statements and the findings each negates without naming them.
_NORMAL_STATEMENTS: Sequence[tuple[re.Pattern[str], tuple[str, ...]]] = (
    (re.compile(r"\b(?:(?:both\s+)?lungs|lung\s+fields)\s+(?:are\s+|remain\s+|appear\s+|look\s+)?"
                r"(?:(?:well[\s-]+)?(?:expanded|inflated|aerated)\s+and\s+)?(?:clear|normal)\b"
                r"|\bclear\s+lungs\b|\bnormal\s+lungs\b"), ("pneumonia", "nodule")),
    (re.compile(r"\bno\s+acute\s+(?:cardiopulmonary|cardiothoracic|pulmonary|intrathoracic)\s+"
                r"(?:process|abnormality|abnormalities|disease|findings?)\b"), ("pneumonia",)),
)
_SCOPE_END = re.compile(r"\b(but|however|although|though|apart from|except|aside from|yet|whereas|"
                        r"otherwise|which|with the exception of)\b|[:,;]\s*(but|however)\b")
_AIRSPACE = re.compile(r"\bair[\s-]+space\b")  # "air space", "air-space" → "airspace"
_SENTENCE = re.compile(r"(?<=[.!?;\n])\s+|\n+")


@dataclass(frozen=True, slots=True)
class Mention:
    finding: str
    term: str
    label: Label
    sentence: str


def _pattern(terms: Sequence[str]) -> re.Pattern[str]:
    alternatives = sorted((re.escape(t).replace(r"\ ", r"[\s-]+") for t in terms), key=len, reverse=True)
    return re.compile(r"\b(" + "|".join(alternatives) + r")\b")


_PATTERNS = {code: _pattern(terms) for code, terms in FINDING_TERMS.items()}


def _cue(text: str, cues: Sequence[str], *, at_end: bool) -> bool:
    for cue in cues:
        pattern = r"\b" + re.escape(cue).replace(r"\ ", r"\s+") + r"\b"
        if at_end and re.search(pattern + r"(?:\W+\w+){0,6}\W*$", text):
            return True
        if not at_end and re.search(r"^\W*(?:\w+\W+){0,5}" + pattern, text):
            return True
    return False


def _scope_before(sentence: str, start: int) -> str:
    before = sentence[:start]
    cut = None
    for match in _SCOPE_END.finditer(before):
        cut = match.end()
    return before[cut:] if cut is not None else before


def _scope_after(sentence: str, end: int) -> str:
    after = sentence[end:]
    match = _SCOPE_END.search(after)
    return after[: match.start()] if match else after


#: NegEx pseudo-negations: a negation word that does not negate what follows ("no change in the mass").
_PSEUDO_NEGATION = re.compile(r"\b(no|without)\s+(interval\s+|significant\s+|definite\s+)?"
                              r"(change|changes|increase|decrease|growth|progression)\b|\bnot\s+only\b")


def _classify(sentence: str, start: int, end: int) -> Label:
    before = _PSEUDO_NEGATION.sub(" stable ", _scope_before(sentence, start))
    after = _scope_after(sentence, end)
    if _cue(before, _UNCERTAIN_BEFORE, at_end=True) or _cue(after, _UNCERTAIN_AFTER, at_end=False):
        return Label.UNCERTAIN
    if _cue(before, _NEGATION_BEFORE, at_end=True) or _cue(after, _NEGATION_AFTER, at_end=False):
        return Label.NEGATED
    return Label.PRESENT


def mentions(text: str, findings: Sequence[str] | None = None) -> list[Mention]:
    """Every mention of the findings' terms in ``text``, each with its label; then the findings a
    whole-lung normal statement negates without naming them."""
    out: list[Mention] = []
    implied: list[Mention] = []
    codes = list(findings) if findings is not None else list(FINDING_TERMS)
    normalised = _AIRSPACE.sub("airspace", text.lower())
    for sentence in (s.strip() for s in _SENTENCE.split(normalised) if s and s.strip()):
        for code in codes:
            pattern = _PATTERNS.get(code)
            if pattern is None:
                raise ValueError(f"no terms for finding {code!r}")
            for match in pattern.finditer(sentence):
                out.append(Mention(code, match.group(0), _classify(sentence, match.start(), match.end()), sentence))
            for statement, negates in _NORMAL_STATEMENTS:
                found = statement.search(sentence) if code in negates else None
                if found and not _cue(_scope_before(sentence, found.start()), _UNCERTAIN_BEFORE, at_end=True):
                    implied.append(Mention(code, found.group(0), Label.NEGATED, sentence))
    return out + implied  # a finding named in words comes first, as the better evidence


_RANK = {Label.PRESENT: 3, Label.UNCERTAIN: 2, Label.NEGATED: 1, Label.NOT_MENTIONED: 0}


def label_report(text: str, findings: Sequence[str] | None = None) -> dict[str, Label]:
    """Per finding code: present, uncertain, negated or not_mentioned (strongest mention wins)."""
    codes = list(findings) if findings is not None else list(FINDING_TERMS)
    labels = {code: Label.NOT_MENTIONED for code in codes}
    for mention in mentions(text, codes):
        if _RANK[mention.label] > _RANK[labels[mention.finding]]:
            labels[mention.finding] = mention.label
    return labels
