"""A rule-based report labeler in the spirit of NegEx, NegBio and the CheXpert labeler.

Each sentence is searched for the finding's terms (:data:`FINDING_TERMS`) and morphology phrases
("fibronodular scarring", "masslike opacity": :data:`MORPHOLOGY`). A mention is

- *negated* when a negation cue governs it: before it ("no", "without", "negative for",
  "resolution of"...), or after it ("is not seen", "has resolved"...);
- *uncertain* when a hedge governs it ("cannot exclude", "possible", "may represent",
  "suspicious for"; after it: "is not excluded", "cannot be excluded"...);
- *present* otherwise ("nodule unchanged", "no change in the consolidation" are present).

A finding's label is the strongest of its mentions: present > uncertain > negated > not_mentioned.

**Scope.** A cue before a mention governs it when nothing between them ends its scope. A negation
cue governs the whole coordinated list after it, up to the clause's end, as NegEx's and NegBio's
list handling do: in "No pneumonia, effusions, edema, pneumothorax, adenopathy, nodules or masses."
every item is negated. A scope ends at a terminator ("but", "however", "although", "apart from",
"which"...), at a verb that starts a clause of its own ("there is", "is seen", "has increased"...),
at "with" and at "and" + a determiner ("no effusion and the nodule is larger"). Without a list
separator (a comma, "or", "and", "nor", a slash) a cue reaches at most six words. A cue after a
mention reaches back at most six words, and not over a terminator or over "unchanged", "stable"...
When several cues govern a mention, the nearest one decides ("possible atelectasis, no pneumonia").

**Pseudo-negations** look like cues and are not: "no change in", "no interval increase in", "not
significantly changed", "not only" (NegEx's pseudo-negation list, narrowed to what chest reports
say). Their words are no cue; each is a cue of its own that asserts what follows ("possible
atelectasis; no change in the nodule": the nodule is present). "To suggest" passes a negation on
("no consolidation to suggest pneumonia" negates both). **Hypothetical** mentions (ConText's
"hypothetical" category: "CT can be performed to identify a small nodule", "CT is more sensitive in
detecting small nodules", "if ...") assert nothing and are dropped.

**Nodule mimics.** A nodular opacity the same sentence explains as something that is no lung lesion
(a rib fracture or callus, a nipple, overlapping structures, a vessel end-on) is negated when said
outright ("represents a healing rib fracture") and uncertain when hedged ("likely a nipple shadow").
"Infection" names pneumonia unless it is granulomatous, tuberculous, osseous or a sequela.

A statement about both lungs negates findings it never names, as a radiologist reads it: "the lungs
are clear" negates pneumonia and nodules, "no acute cardiopulmonary process" negates pneumonia
only (a chronic nodule is not acute). A named finding anywhere in the report still outranks it, and
a statement about one lung ("the left lung is clear") negates nothing.

Hand-written rather than negspacy or NegBio: negspacy needs spaCy and a language model that is
downloaded separately (nothing may be downloaded at run time here), NegBio a constituency parser and
a Java dependency converter; these rules are small, have no dependencies, run in time linear in the
report's length, and are measured against expert coding by ``secondreader evaluate-labeler`` (see
:mod:`.evaluate`).
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

__all__ = ["FINDING_TERMS", "MORPHOLOGY", "Label", "Mention", "label_report", "mentions"]


class Label(str, Enum):
    PRESENT = "present"
    NEGATED = "negated"
    UNCERTAIN = "uncertain"
    NOT_MENTIONED = "not_mentioned"


#: Terms per finding code (matched case-insensitively on word boundaries; "airspace" also matches
#: "air space" and "air-space").
FINDING_TERMS: Mapping[str, Sequence[str]] = {
    "pneumonia": ("pneumonia", "pneumonias", "bronchopneumonia", "pneumonitis", "consolidation", "consolidations",
                  "consolidative opacity", "consolidative opacities", "airspace opacity", "airspace opacities",
                  "airspace disease", "airspace process", "infiltrate", "infiltrates", "infiltration",
                  "infection", "infections", "infectious process", "infectious processes", "infectious etiology"),
    "nodule": ("nodule", "nodules", "mass", "masses", "rounded opacity", "rounded opacities", "lung lesion",
               "pulmonary lesion", "coin lesion"),
}

#: Morphology phrases that name a finding without its noun, as radiologists write them and the
#: MeSH coders of the OpenI reports code them: a nodular or mass-like opacity is a nodule (what a
#: second reader asks is whether the first reader reported the lesion the AI flags). "Nodular
#: opacity", "fibronodular scarring", "nodular prominence of the hilum", "reticulonodular changes"
#: (a pattern of small nodules: the reader saw nodular opacities), "pulmonary nodularity",
#: "masslike opacification". Not "nodular contour" (of the diaphragm, of the aorta).
MORPHOLOGY: Mapping[str, Sequence[str]] = {
    "nodule": (
        r"(?:fibro|reticulo|micro)?[\s-]*nodular(?:[\s-]+[a-z/]+){0,3}?[\s-]+(?:opacity|opacities|opacification|"
        r"density|densities|infiltrate|infiltrates|lesion|lesions|focus|foci|prominence|scarring|scar|scars|"
        r"thickening|changes?|pattern|markings|shadows?|appearance)",
        r"(?:fibro|reticulo|micro)?nodularity",
        r"mass[\s-]*like",
    ),
}

#: "infection" names pneumonia only when it is a current lung infection, not "granulomatous
#: infection", "sequela of prior infection", "osseous infection" or a urinary one.
_NOT_PNEUMONIA = re.compile(
    r"\b(?:granulomatous|granuloma|tuberculous|tuberculosis|tb|mycobacterial|histoplasmosis|fungal|osseous|bony|bone|"
    r"urinary|soft\s+tissue|skin|prior|old|previous|remote|healed|sequela|sequelae|residuals?|chronic)\s+"
    r"(?:\w+\s+){0,1}$", re.IGNORECASE)
_INFECTION = re.compile(r"^infecti", re.IGNORECASE)

_NEGATION_BEFORE = (
    "no", "not", "without", "negative for", "no evidence of", "no sign of", "no signs of", "free of",
    "clear of", "absence of", "absent", "resolution of", "resolved", "ruled out", "rules out",
    "interval resolution of", "there is no", "there are no", "no new", "no focal", "no acute", "no definite",
    "never", "nor", "no longer", "neither",
)
_UNCERTAIN_BEFORE = (
    "cannot exclude", "can not exclude", "cannot be excluded", "cannot rule out", "can not rule out",
    "not excluded", "possible", "possibly", "may represent", "may be", "might", "could represent",
    "could be", "questionable", "suspicious for", "suspicion of", "suspected", "concern for", "concern is for",
    "concerning for", "worrisome for", "differential includes", "differential diagnosis includes",
    "differential diagnosis would include", "versus", "vs", "probable", "probably", "likely", "question of",
    "equivocal", "indeterminate", "borderline", "suggestive of", "suggesting", "compatible with",
    "consistent with", "evaluate for", "rule out", "may reflect", "may indicate", "could reflect", "presumed",
    "presumably", "favor", "favored", "not ruled out", "suggest", "suggests", "could include", "may include",
    "might include", "would include", "considerations include", "correlation for", "correlate for",
    "correlate clinically for", "clinically correlate for", "to exclude", "evaluation for", "assess for",
)
_NEGATION_AFTER = (
    "is not seen", "are not seen", "not seen", "is absent", "are absent", "has resolved", "have resolved",
    "resolved", "is no longer seen", "are no longer seen", "no longer seen", "not identified",
    "is not identified", "are not identified", "has cleared", "have cleared", "ruled out", "not visualized",
    "are not visualized", "is not visualized", "no longer visualized", "not present", "is not present",
    "are not present", "no longer present", "not demonstrated", "not evident", "not appreciated",
)
_UNCERTAIN_AFTER = (
    "cannot be excluded", "can not be excluded", "is not excluded", "not excluded", "is possible", "is suspected",
    "is questioned", "versus", "vs", "may be present", "may represent", "could represent", "might represent",
    "may reflect", "may be", "not entirely excluded", "not completely excluded", "not totally excluded",
    "cannot be entirely excluded", "cannot be completely excluded", "not ruled out", "cannot be ruled out",
    "can not be ruled out", "is not ruled out", "are not excluded", "are possible", "is questionable",
    "not otherwise excluded", "not definitely excluded",
)
#: ConText's hypothetical triggers, as chest reports use them: the mention is a thing to look for.
_HYPOTHETICAL_BEFORE = (
    "to identify", "to detect", "to locate", "to localize", "to search for", "to look for", "in detecting",
    "for detecting", "in identifying", "for identifying", "more sensitive", "if",
)

#: NegEx pseudo-negations: a negation word that does not negate what follows.
_PSEUDO_NEGATION = re.compile(
    r"\b(?:no|without)\s+(?:(?:significant|interval|definite|appreciable|substantial|marked|further|other|"
    r"measurable|suspicious|visible|apparent|radiographic|gross|notable)\s+){0,2}"
    r"(?:change|changes|increase|decrease|growth|progression|enlargement|improvement|worsening|difference)\b"
    r"|\bnot\s+(?:(?:significantly|substantially|appreciably|markedly|much)\s+)?"
    r"(?:changed|increased|decreased|enlarged|improved|worsened|grown)\b"
    r"|\bnot\s+only\b|\bif\s+anything\b|\bgram[\s-]+negative\b|\bnot\s+necessarily\b|\bwithout\s+difficulty\b",
    re.IGNORECASE)
#: Words a cue reaches through: "no consolidation to suggest pneumonia" negates both; "resolution of the
#: previously seen consolidation" negates it.
_TRANSPARENT = re.compile(r"\bto\s+(?:suggest|indicate)\b|\b(?:previously|recently|formerly|earlier)\s+(?:seen|noted|"
                          r"identified|described|demonstrated|present|shown|visualized|reported)\b", re.IGNORECASE)

#: Hard scope terminators: a cue never reaches over them (in either direction).
_SCOPE_END = re.compile(r"\b(?:but|however|although|though|apart\s+from|except|aside\s+from|yet|whereas|"
                        r"otherwise|which|with\s+the\s+exception\s+of|other\s+than|in\s+addition|additionally|"
                        r"also|while)\b", re.IGNORECASE)
#: Soft terminators: a new clause or a verb of its own ends a cue's reach over a list.
_CLAUSE = re.compile(
    r"\b(?:there\s+(?:is|are|was|were|has|have)|is|are|was|were|has|have|had|been|being|remains?|appears?|"
    r"seen|noted|identified|demonstrated|shows?|represents?|persists?|measur\w*|unchanged|stable|"
    r"again|persistent|present|with|and\s+(?:the|a|an|this|these|that|there|his|her))\b", re.IGNORECASE)
_LIST_SEPARATOR = re.compile(r",|/|\b(?:or|and|nor)\b", re.IGNORECASE)
_WORD = re.compile(r"[a-z0-9]+", re.IGNORECASE)
_MAX_WORDS = 6  # a cue's reach without a list (NegEx's window is five words)

#: Whole-lung normal statements and the findings each negates without naming them.
_NORMAL_STATEMENTS: Sequence[tuple[re.Pattern[str], tuple[str, ...]]] = (
    (re.compile(r"\b(?:(?:both\s+)?lungs|lung\s+fields)\s+(?:are\s+|remain\s+|appear\s+|look\s+)?"
                r"(?:(?:well[\s-]+)?(?:expanded|inflated|aerated)\s+and\s+)?(?:clear|normal)\b"
                r"|\bclear\s+lungs\b|\bnormal\s+lungs\b", re.IGNORECASE), ("pneumonia", "nodule")),
    (re.compile(r"\bno\s+acute\s+(?:cardiopulmonary|cardiothoracic|pulmonary|intrathoracic)\s+"
                r"(?:process|abnormality|abnormalities|disease|findings?)\b", re.IGNORECASE), ("pneumonia",)),
)
#: Sentence ends, but not after an abbreviation ("atelectasis vs. pneumonia" is one sentence).
_SENTENCE = re.compile(r"(?<=[.!?;])(?<!\bvs\.)(?<!\bv\.)(?<!\be\.g\.)(?<!\bi\.e\.)(?<!\bapprox\.)(?<!\bdr\.)"
                       r"(?<!\bcf\.)\s+|\n+", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Mention:
    """One mention of a finding: the words matched (``term``), its label and the sentence it is in
    (as written in the report)."""

    finding: str
    term: str
    label: Label
    sentence: str


def _alternation(items: Sequence[str]) -> str:
    return "|".join(sorted(items, key=len, reverse=True))


def _term_pattern(code: str) -> re.Pattern[str]:
    terms = [re.escape(t).replace(r"\ ", r"[\s-]+").replace("airspace", r"air[\s-]*space")
             for t in FINDING_TERMS[code]]
    return re.compile(r"\b(" + _alternation([*terms, *MORPHOLOGY.get(code, ())]) + r")\b", re.IGNORECASE)


def _cue_pattern(cues: Sequence[str], prefix: str = "") -> re.Pattern[str]:
    return re.compile(r"\b" + prefix + "(?:" + _alternation([re.escape(c).replace(r"\ ", r"\s+") for c in cues])
                      + r")\b", re.IGNORECASE)


#: An auxiliary before a cue after the mention belongs to the cue ("nodule is not entirely excluded").
_AUXILIARY = r"(?:(?:is|are|was|were|has|have|had|be|been)\s+){0,2}"
_PATTERNS = {code: _term_pattern(code) for code in FINDING_TERMS}
#: Cues before a mention (with the pseudo-negations, which assert the finding: "possible atelectasis,
#: no change in the nodule"; the nearest cue decides).
_BEFORE = ((_cue_pattern(_NEGATION_BEFORE), Label.NEGATED), (_cue_pattern(_UNCERTAIN_BEFORE), Label.UNCERTAIN),
           (_cue_pattern(_HYPOTHETICAL_BEFORE), None))
_AFTER = ((_cue_pattern(_NEGATION_AFTER, _AUXILIARY), Label.NEGATED),
          (_cue_pattern(_UNCERTAIN_AFTER, _AUXILIARY), Label.UNCERTAIN))

#: Nodule mimics: a nodular opacity the report explains as something that is not a lung lesion.
#: Said outright ("represents a healing rib fracture") the report negates a nodule; hedged
#: ("nodular opacity, likely nipple shadow") it leaves it uncertain.
_MIMIC = re.compile(
    r"^[^.;]{0,80}?\b(?P<verb>represents?|representing|reflects?|is|are|due\s+to|secondary\s+to|consistent\s+with|"
    r"compatible\s+with|corresponds?\s+to|from)\s+(?P<hedge>(?:(?:likely|probably|possibly|most\s+likely|may|might|"
    r"could|xxxx|to|be|represent|reflect)\s+)*)(?:an?\s+|the\s+)?(?:(?:healing|healed|old|prior|overlying|bilateral|"
    r"left|right)\s+)*(?:rib\s+fractures?|fractures?|callus|nipples?|nipple\s+shadows?|overlapping|superimposed|"
    r"superimposition|summation|end[\s-]+on\s+vessels?|vessels?|costochondral|osteophytes?|artifacts?|skin\s+folds?|"
    r"ekg\s+leads?|buttons?)\b", re.IGNORECASE)
_HEDGE = re.compile(r"\b(?:likely|probably|possibly|may|might|could|perhaps|presumably)\b", re.IGNORECASE)
_HEDGED_MIMIC = re.compile(r"^[^.;]{0,80}?(?:,\s*|\b(?:likely|probably|possibly|may|might|could|xxxx)\s+)(?:an?\s+|"
                           r"the\s+)?(?:xxxx\s+)?(?:nipples?|nipple\s+shadows?)\b", re.IGNORECASE)


def _mask(text: str, pattern: re.Pattern[str]) -> str:
    """``text`` with ``pattern``'s matches blanked out (same length, so offsets still hold)."""
    return pattern.sub(lambda m: " " * len(m.group(0)), text)


def _cues(text: str, table: Sequence[tuple[re.Pattern[str], Label | None]]) -> list[tuple[int, int, Label | None]]:
    """Every cue in ``text`` as (start, end, label), in order; a cue inside a longer one is dropped
    ("not" in "can not exclude")."""
    found = [(m.start(), m.end(), label) for pattern, label in table for m in pattern.finditer(text)]
    found.sort(key=lambda c: (-(c[1] - c[0]), c[0]))
    starts: list[int] = []
    kept: list[tuple[int, int, Label | None]] = []
    for cue in found:
        index = bisect.bisect_right(starts, cue[0])
        if (index and kept[index - 1][1] > cue[0]) or (index < len(kept) and kept[index][0] < cue[1]):
            continue
        starts.insert(index, cue[0])
        kept.insert(index, cue)
    return kept


def _reaches(gap: str, *, forward: bool) -> bool:
    """Whether a cue reaches over ``gap`` (the words between it and the mention)."""
    if _CLAUSE.search(gap):
        return False
    words = len(_WORD.findall(gap))
    return words <= _MAX_WORDS or (forward and bool(_LIST_SEPARATOR.search(gap)))


#: The most a cue's scope reaches, in characters either side of a mention: a clause is shorter, and
#: the bound keeps the labeler linear in the report's length (a report may be 100,000 characters).
_REACH = 400


def _clause_bounds(ends: Sequence[tuple[int, int]], size: int, start: int, end: int) -> tuple[int, int]:
    """The span of the clause around ``[start, end)``: between the hard terminators (``ends``, the
    sentence's terminator spans in order) either side, and at most :data:`_REACH` characters away."""
    index = bisect.bisect_right(ends, (start, size + 1))  # the terminators that start before the mention
    lo = next((t_end for _, t_end in reversed(ends[max(0, index - 2):index]) if t_end <= start), 0)
    index = bisect.bisect_left(ends, (end, -1))  # the first that starts after it
    hi = ends[index][0] if index < len(ends) else size
    return max(lo, start - _REACH), min(hi, end + _REACH)


@dataclass(frozen=True, slots=True)
class _Sentence:
    """A sentence read once: its pseudo-negations blanked (``masked``), its scope terminators, and
    its cues before (with the pseudo-negations, which assert) and after a mention, each in order."""

    text: str
    masked: str
    ends: list[tuple[int, int]]
    before: list[tuple[int, int, Label | None]]
    before_ends: list[int]
    after: list[tuple[int, int, Label | None]]
    after_starts: list[int]

    @classmethod
    def read(cls, text: str) -> _Sentence:
        masked = _mask(_mask(text, _PSEUDO_NEGATION), _TRANSPARENT)
        before = _cues(masked, _BEFORE) + [(m.start(), m.end(), Label.PRESENT) for m in _PSEUDO_NEGATION.finditer(text)]
        before.sort(key=lambda c: c[1])
        after = _cues(masked, _AFTER)
        return cls(text, masked, [(m.start(), m.end()) for m in _SCOPE_END.finditer(masked)], before,
                   [c[1] for c in before], after, [c[0] for c in after])

    def label(self, start: int, end: int, *, after: bool = True) -> Label | None:
        """The label of the mention at ``[start, end)``; None when it is hypothetical. The nearest
        cue before it that reaches it decides; a cue after it (``after``) may make it uncertain or
        negated."""
        lo, hi = _clause_bounds(self.ends, len(self.text), start, end)
        before: Label | None | bool = False  # False: no cue governs from before
        for index in range(bisect.bisect_right(self.before_ends, start) - 1, -1, -1):
            c_start, c_end, label = self.before[index]
            if c_start < lo:
                break
            if _reaches(self.masked[c_end:start], forward=True):
                before = label
                break
            if _CLAUSE.search(self.masked[c_end:start]):
                break  # a farther cue would reach over the same verb
        if before is None:
            return None
        following: Label | bool = False
        if after:
            for index in range(bisect.bisect_left(self.after_starts, end), len(self.after)):
                c_start, _, label = self.after[index]
                if c_start > hi or not _reaches(self.masked[end:c_start], forward=False):
                    break
                if label is not None:
                    following = label
                    break
        found = {before, following}
        if Label.UNCERTAIN in found:
            return Label.UNCERTAIN
        if Label.NEGATED in found:
            return Label.NEGATED
        return Label.PRESENT


def _mimic(after: str) -> Label:
    """A present nodule's label once the rest of its sentence (``after``) is read for a mimic."""
    found = _MIMIC.match(after)
    if found is not None:
        hedged = found.group("hedge").strip() or _HEDGE.search(after[:found.start("verb")])
        return Label.UNCERTAIN if hedged else Label.NEGATED
    return Label.UNCERTAIN if _HEDGED_MIMIC.match(after) else Label.PRESENT


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(text) if s and s.strip()]


def mentions(text: str, findings: Sequence[str] | None = None) -> list[Mention]:
    """Every mention of the findings' terms in ``text``, each with its label; then the findings a
    whole-lung normal statement negates without naming them."""
    out: list[Mention] = []
    implied: list[Mention] = []
    codes = list(findings) if findings is not None else list(FINDING_TERMS)
    for code in codes:
        if code not in _PATTERNS:
            raise ValueError(f"no terms for finding {code!r}")
    for text_ in _sentences(text):
        sentence = _Sentence.read(text_)
        for code in codes:
            for match in _PATTERNS[code].finditer(text_):
                term = match.group(0)
                if code == "pneumonia" and _INFECTION.match(term) and _NOT_PNEUMONIA.search(
                        text_[max(0, match.start() - 80):match.start()]):
                    continue
                label = sentence.label(match.start(), match.end())
                if code == "nodule" and label is Label.PRESENT:
                    label = _mimic(text_[match.end():match.end() + 200])
                if label is not None:
                    out.append(Mention(code, term, label, text_))
            for statement, negates in _NORMAL_STATEMENTS:
                found = statement.search(text_) if code in negates else None
                if found is not None and sentence.label(found.start(), found.end(), after=False) is not Label.UNCERTAIN:
                    implied.append(Mention(code, found.group(0), Label.NEGATED, text_))
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
