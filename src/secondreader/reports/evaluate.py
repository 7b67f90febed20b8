"""The report labeler measured against expert coding: the Indiana University chest X-ray reports
(OpenI), whose every report was coded with MeSH terms by people.

``secondreader evaluate-labeler REPORTS`` reads the original OpenI XML files (a ``.tgz``/``.tar``
or a folder), labels each report's FINDINGS and IMPRESSION with :mod:`.labeler` and compares the
labels with the coding, per finding:

- **sensitivity**: of the reports coded with the finding (:data:`MESH_FINDINGS`), the share the
  labeler reads as mentioning it (*present* or *uncertain*: as in discordance, an uncertain
  mention counts as reported);
- **specificity**: of the reports coded ``normal`` (and nothing else), the share it reads as not
  mentioning it (*negated* or *not mentioned*). A report coded with other findings only is in
  neither figure (its coding says nothing about this finding for sure), but is shown in the
  confusion table;
- Wilson 95% intervals, the confusion by label, and every error with the sentences behind it.

A report *wrongly read as positive* hides a miss (the AI's finding counts as already reported), so
specificity is the figure that guards second review.

``--part check`` / ``--part tune`` split the reports by a hash of their id (one in three checks):
the rules are written looking at the tune part's errors only, and the check part shows whether they
generalise.
"""

from __future__ import annotations

import hashlib
import io
import logging
import tarfile
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..stats import wilson_interval
from .labeler import Label, Mention, mentions

__all__ = ["MESH_FINDINGS", "NORMAL_MESH", "TARGETS", "OpenIReport", "evaluate", "format_text", "part_of",
           "read_openi"]

#: The one place that says which MeSH coding means which finding: a report is coded with a finding
#: when one of its ``<major>`` terms starts with one of these headings ("Nodule/lung/upper lobe/right"
#: is Nodule). Pneumonia as the issue measured it (pneumonia and the airspace findings a reader names
#: it by); nodule with mass, as the labeler's nodule terms include masses.
MESH_FINDINGS: Mapping[str, tuple[str, ...]] = {
    "pneumonia": ("Pneumonia", "Consolidation", "Infiltrate", "Airspace Disease"),
    "nodule": ("Nodule", "Mass"),
}
#: The coding of a normal report (its only ``<major>`` term).
NORMAL_MESH = "normal"
#: The report sections the labeler reads (a first read's text is its findings and impression).
SECTIONS = ("FINDINGS", "IMPRESSION")
#: Acceptance targets (issue 29, on the held-back half): finding -> (sensitivity, specificity).
TARGETS: Mapping[str, tuple[float, float]] = {"pneumonia": (0.98, 0.99), "nodule": (0.95, 0.99)}
_LABELS = (Label.PRESENT, Label.UNCERTAIN, Label.NEGATED, Label.NOT_MENTIONED)
_RANK = {Label.PRESENT: 3, Label.UNCERTAIN: 2, Label.NEGATED: 1, Label.NOT_MENTIONED: 0}
_MAX_MEMBER_BYTES = 1_000_000  # an OpenI report is a few kB

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class OpenIReport:
    """One OpenI report: its id (``CXR207``), the text the labeler reads, and its MeSH major terms."""

    report_id: str
    text: str
    mesh: tuple[str, ...]


def _parse(data: bytes, fallback_id: str) -> OpenIReport:
    root = ET.fromstring(data)
    uid = root.find("uId")
    report_id = (uid.get("id") if uid is not None else None) or fallback_id
    sections = {node.get("Label"): (node.text or "").strip() for node in root.iter("AbstractText")}
    text = "\n".join(sections[name] for name in SECTIONS if sections.get(name))
    mesh = tuple((node.text or "").strip() for node in root.iter("major"))
    return OpenIReport(report_id, text, mesh)


def _members(path: Path) -> Iterator[tuple[str, bytes]]:
    if path.is_dir():
        for file in sorted(path.rglob("*.xml")):
            yield file.stem, file.read_bytes()
        return
    with tarfile.open(path) as archive:
        for member in sorted(archive.getmembers(), key=lambda m: m.name):
            if not (member.isfile() and member.name.endswith(".xml")) or member.size > _MAX_MEMBER_BYTES:
                continue
            handle = archive.extractfile(member)
            if handle is not None:
                yield Path(member.name).stem, handle.read()


def read_openi(path: Path) -> list[OpenIReport]:
    """The OpenI reports in a folder (searched recursively) or a tar archive (``.tgz``), in name
    order; a file that is not an OpenI report is skipped.

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist.
    ValueError
        When it holds no OpenI report.
    """
    if not path.exists():
        raise FileNotFoundError(f"no such file or folder: {path}")
    if path.is_file() and not tarfile.is_tarfile(path):
        raise ValueError(f"{path.name} is neither a folder nor a tar archive of OpenI XML reports")
    reports, skipped = [], 0
    for name, data in _members(path):
        try:
            reports.append(_parse(data, name))
        except ET.ParseError:
            skipped += 1
    if skipped:
        logger.warning("skipped %d file(s) that are not well-formed XML", skipped)
    if not reports:
        raise ValueError(f"no OpenI XML report in {path.name}")
    return reports


def part_of(report_id: str) -> str:
    """``check`` for one report in three (by the SHA-256 of its id), else ``tune``."""
    return "check" if int(hashlib.sha256(report_id.encode()).hexdigest()[:8], 16) % 3 == 0 else "tune"


def coding(report: OpenIReport, finding: str) -> str:
    """``positive`` (coded with the finding), ``normal`` (coded normal only) or ``other``."""
    headings = {term.split("/", 1)[0].strip() for term in report.mesh}
    if headings & set(MESH_FINDINGS[finding]):
        return "positive"
    if headings == {NORMAL_MESH}:
        return "normal"
    return "other"


def _rate(count: int, total: int) -> dict[str, Any]:
    lo, hi = wilson_interval(count, total)
    return {"count": count, "total": total, "value": round(count / total, 4) if total else None,
            "ci95": [round(lo, 4), round(hi, 4)]}


def evaluate(reports: Iterable[OpenIReport], findings: Sequence[str] | None = None, *,
             labeler: Callable[[str, Sequence[str]], list[Mention]] = mentions) -> dict[str, Any]:
    """Per finding: sensitivity and specificity with Wilson 95% intervals, the confusion by label
    for reports coded with the finding, coded normal and coded otherwise, and every error with the
    sentences behind it. ``labeler`` is :func:`.labeler.mentions` (another one can be compared)."""
    codes = list(findings) if findings is not None else list(MESH_FINDINGS)
    unknown = [c for c in codes if c not in MESH_FINDINGS]
    if unknown:
        raise ValueError(f"no MeSH mapping for finding(s) {', '.join(unknown)}")
    reports = list(reports)
    out: dict[str, Any] = {"reports": len(reports), "sections": list(SECTIONS),
                           "mapping": {c: list(MESH_FINDINGS[c]) for c in codes}, "normal": NORMAL_MESH,
                           "findings": {}}
    per_report = [(report, labeler(report.text, codes)) for report in reports]
    for code in codes:
        confusion = {group: {label.value: 0 for label in _LABELS} for group in ("positive", "normal", "other")}
        errors = []
        for report, found in per_report:
            own = [m for m in found if m.finding == code]
            label = max((m.label for m in own), key=_RANK.__getitem__, default=Label.NOT_MENTIONED)
            group = coding(report, code)
            confusion[group][label.value] += 1
            read_positive = label in (Label.PRESENT, Label.UNCERTAIN)
            if group == "positive" and not read_positive:
                sentences = [{"label": m.label.value, "term": m.term, "sentence": m.sentence} for m in own]
                errors.append({"report": report.report_id, "kind": "missed", "label": label.value,
                               "mesh": [t for t in report.mesh if t.split("/", 1)[0] in MESH_FINDINGS[code]],
                               "sentences": sentences, "text": None if sentences else report.text})
            elif group == "normal" and read_positive:
                errors.append({"report": report.report_id, "kind": "false_positive", "label": label.value,
                               "mesh": list(report.mesh),
                               "sentences": [{"label": m.label.value, "term": m.term, "sentence": m.sentence}
                                             for m in own if m.label in (Label.PRESENT, Label.UNCERTAIN)],
                               "text": None})
        pos, norm = confusion["positive"], confusion["normal"]
        tp = pos[Label.PRESENT.value] + pos[Label.UNCERTAIN.value]
        tn = norm[Label.NEGATED.value] + norm[Label.NOT_MENTIONED.value]
        out["findings"][code] = {
            "sensitivity": _rate(tp, sum(pos.values())),
            "specificity": _rate(tn, sum(norm.values())),
            "targets": (dict(zip(("sensitivity", "specificity"), TARGETS[code], strict=True))
                        if code in TARGETS else None),
            "confusion": confusion,
            "errors": errors,
        }
    return out


def meets_targets(summary: Mapping[str, Any]) -> dict[str, bool]:
    """Per finding with targets: whether both its figures reach them."""
    met = {}
    for code, figures in summary["findings"].items():
        targets = figures.get("targets")
        if targets:
            met[code] = all(figures[k]["value"] is not None and figures[k]["value"] >= targets[k]
                            for k in ("sensitivity", "specificity"))
    return met


def _figure(rate: Mapping[str, Any]) -> str:
    if rate["value"] is None:
        return f"n/a (0 reports; 95% CI {rate['ci95'][0]:.3f}-{rate['ci95'][1]:.3f})"
    return (f"{rate['value']:.3f} ({rate['count']}/{rate['total']}; "
            f"95% CI {rate['ci95'][0]:.3f}-{rate['ci95'][1]:.3f})")


def format_text(summary: Mapping[str, Any], *, title: str = "") -> str:
    """The evaluation as a radiologist reads it: figures, confusion, then each error's sentences."""
    buffer = io.StringIO()
    write = buffer.write
    write(f"Report labeler against the OpenI MeSH coding{f' ({title})' if title else ''}: "
          f"{summary['reports']} reports, sections {' + '.join(summary['sections'])}\n")
    write(f"A report reads positive when its label is present or uncertain. Specificity is against reports "
          f"coded '{summary['normal']}' only.\n")
    met = meets_targets(summary)
    for code, figures in summary["findings"].items():
        write(f"\n== {code}  (coded: MeSH {', '.join(summary['mapping'][code])})\n")
        targets = figures.get("targets") or {}
        for key in ("sensitivity", "specificity"):
            target = f"   target >= {targets[key]:.2f}" if key in targets else ""
            write(f"  {key:<12} {_figure(figures[key])}{target}\n")
        if code in met:
            write(f"  targets: {'met' if met[code] else 'NOT met'}\n")
        write(f"  {'label':<16}" + "".join(f"{name:>16}" for name in
                                            (f"coded {code}", "coded normal", "coded otherwise")) + "\n")
        for label in _LABELS:
            row = [figures["confusion"][g][label.value] for g in ("positive", "normal", "other")]
            write(f"  {label.value:<16}" + "".join(f"{n:>16}" for n in row) + "\n")
        errors = figures["errors"]
        write(f"  errors: {sum(e['kind'] == 'missed' for e in errors)} missed, "
              f"{sum(e['kind'] == 'false_positive' for e in errors)} false positive\n")
        for error in errors:
            kind = "missed" if error["kind"] == "missed" else "false positive"
            coded = f" [coded {'; '.join(error['mesh'])}]" if error["kind"] == "missed" else ""
            write(f"  - {error['report']} {kind}, read {error['label'].replace('_', ' ')}{coded}\n")
            for sentence in error["sentences"]:
                write(f"      {sentence['label']:<10} \"{sentence['sentence']}\"  ({sentence['term']})\n")
            if error.get("text"):
                write(f"      no sentence names it; the report reads: \"{' '.join(error['text'].split())}\"\n")
    return buffer.getvalue()
