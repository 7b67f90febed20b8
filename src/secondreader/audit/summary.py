"""The audit's statistics: counts by status, discordance rates with Wilson 95% intervals, overall,
by finding and by month, and the bad files. Pure functions of the rows (see :mod:`.stage`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..stats import Rate


@dataclass(slots=True)
class AuditSummary:
    studies: int = 0
    screened: int = 0
    ineligible: int = 0
    failed: int = 0
    with_report: int = 0
    without_report: int = 0
    discordance: Rate = field(default_factory=lambda: Rate(0, 0))
    by_finding: dict[str, dict[str, Any]] = field(default_factory=dict)
    by_month: dict[str, Rate] = field(default_factory=dict)
    bad_files: list[tuple[str, str]] = field(default_factory=list)


def _routes(finding: dict[str, Any] | None) -> bool:
    """A row's finding takes part in the discordance: live, and the study is in its model's scope
    (rows written before modes and scopes have neither key: they counted)."""
    if finding is None:
        return False
    return finding.get("applicable", True) is not False and finding.get("mode", "live") == "live"


def summarise(rows: Sequence[dict[str, Any]], codes: Sequence[str]) -> AuditSummary:
    """Discordance is counted over screened studies that have a report; per finding, over those
    where it routes (its model live and applicable to the study). A shadow model's positives are
    counted apart (what it would have flagged), and so are the studies outside a model's scope:
    neither counts as a positive or a negative."""
    s = AuditSummary(studies=len(rows))
    assessed = [r for r in rows if r["status"] == "screened" and r["report"] == "available"]
    for row in rows:
        if row["status"] == "screened":
            s.screened += 1
            if row["report"] == "available":
                s.with_report += 1
            else:
                s.without_report += 1
        elif row["status"] == "ineligible":
            s.ineligible += 1
        else:
            s.failed += 1
        bad_files = row.get("bad_files") or []
        for bad in bad_files:
            s.bad_files.append((bad["source"], bad["reason"] or "failed"))
        if row["study_instance_uid"] is None and not bad_files:
            s.bad_files.append((row.get("source") or "(unnamed)", row.get("reason") or "unreadable"))
    s.discordance = Rate(sum(1 for r in assessed if r["discordant"]), len(assessed))
    for code in codes:
        routing = [r for r in assessed if _routes(r["findings"].get(code))]
        s.by_finding[code] = {
            "ai_positive": sum(1 for r in routing if r["findings"][code].get("positive")),
            "shadow_positive": sum(1 for r in assessed if r["findings"].get(code, {}).get("mode") == "shadow"
                                   and r["findings"][code].get("positive")),
            "not_applicable": sum(1 for r in assessed if r["findings"].get(code, {}).get("applicable") is False),
            "report_mentioned": sum(1 for r in assessed if r["labels"].get(code) in ("present", "uncertain")),
            "discordant": Rate(sum(1 for r in routing if code in r["discordant_findings"]), len(routing)),
        }
    months = sorted({r["study_month"] or "unknown" for r in assessed})
    for month in months:
        mine = [r for r in assessed if (r["study_month"] or "unknown") == month]
        s.by_month[month] = Rate(sum(1 for r in mine if r["discordant"]), len(mine))
    return s
