"""What an audit writes: ``audit.csv`` and ``audit.parquet`` (one row per study) and ``index.html``.

No patient name or ID reaches these files: rows are built from the pipeline's results (which hold
none) and the report labeler's verdicts; the only free text is the report sentence behind a
discordant finding, with UIDs, person names (``A^B``) and paths masked. Accession numbers appear only
when asked for.
"""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ..fileio import atomic_path
from ..outputs.overlay import BANNER
from ..stats import Rate
from .summary import AuditSummary

__all__ = ["audit_table", "write_outputs"]

TIMING_STAGES = ("fetch", "load", "preprocess", "inference", "postprocess", "reconcile", "overlay", "total")
MAX_BAD_FILES_LISTED = 500


def _order(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda r: (-int(r["priority_score"]), r["study_instance_uid"] or "", r["key"]))


def audit_table(rows: Sequence[dict[str, Any]], codes: Sequence[str], *, include_accession: bool) -> pd.DataFrame:
    """One row per study (highest priority score first); columns as documented in docs/audit.md."""
    records = []
    for row in _order(rows):
        record: dict[str, Any] = {
            "study_instance_uid": row["study_instance_uid"],
            "accession_number": row["accession_number"] if include_accession else None,
            "study_month": row["study_month"],
            "status": row["status"],
            "priority_score": int(row["priority_score"]),
            "route": row["route"],
        }
        for code in codes:
            finding = row["findings"].get(code)
            applicable = finding.get("applicable", True) if finding else None
            record[f"ai_{code}_probability"] = finding["probability"] if finding else None
            # a finding outside its model's scope is neither positive nor negative: empty
            record[f"ai_{code}_positive"] = finding["positive"] if finding and applicable else None
            record[f"ai_{code}_mode"] = finding.get("mode", "live") if finding else None
            record[f"ai_{code}_applicable"] = applicable
            record[f"report_{code}"] = row["labels"].get(code)
        record.update({
            "report": row["report"],
            "discordant": bool(row["discordant"]),
            "discordant_findings": ";".join(row["discordant_findings"]),
            "reason": row["reason"],
            "source": row["source"],
            "instances": int(row["instances"]),
            "failed_instances": len(row["bad_files"]),
        })
        for stage in TIMING_STAGES:
            value = row["timing_ms"].get(stage)
            record[f"ms_{stage}"] = round(float(value), 1) if value is not None else None
        records.append(record)
    frame = pd.DataFrame.from_records(records, columns=_columns(codes))
    for column in ("priority_score", "instances", "failed_instances"):
        frame[column] = frame[column].astype("int64")
    frame["discordant"] = frame["discordant"].astype("bool")
    for code in codes:
        frame[f"ai_{code}_probability"] = frame[f"ai_{code}_probability"].astype("float64")
        frame[f"ai_{code}_positive"] = frame[f"ai_{code}_positive"].astype("boolean")
        frame[f"ai_{code}_applicable"] = frame[f"ai_{code}_applicable"].astype("boolean")
        frame[f"ai_{code}_mode"] = frame[f"ai_{code}_mode"].astype("string")
    for stage in TIMING_STAGES:
        frame[f"ms_{stage}"] = frame[f"ms_{stage}"].astype("float64")
    for column in ("study_instance_uid", "accession_number", "study_month", "reason", "source",
                   *(f"report_{c}" for c in codes)):
        frame[column] = frame[column].astype("string")
    return frame


def _columns(codes: Sequence[str]) -> list[str]:
    columns = ["study_instance_uid", "accession_number", "study_month", "status", "priority_score", "route"]
    for code in codes:
        columns += [f"ai_{code}_probability", f"ai_{code}_positive", f"ai_{code}_mode", f"ai_{code}_applicable",
                    f"report_{code}"]
    columns += ["report", "discordant", "discordant_findings", "reason", "source", "instances", "failed_instances"]
    return columns + [f"ms_{s}" for s in TIMING_STAGES]


def _atomic(path: Path, write: Any) -> None:
    with atomic_path(path) as tmp:
        write(tmp)


def write_outputs(out_dir: Path, rows: Sequence[dict[str, Any]], summary: AuditSummary, codes: Sequence[str], *,
                  include_accession: bool, models: Sequence[str], complete: bool) -> dict[str, Path]:
    """Write ``audit.csv``, ``audit.parquet`` and ``index.html`` (each replaced atomically)."""
    table = audit_table(rows, codes, include_accession=include_accession)
    paths = {"csv": out_dir / "audit.csv", "parquet": out_dir / "audit.parquet", "html": out_dir / "index.html"}
    _atomic(paths["csv"], lambda p: table.to_csv(p, index=False))
    _atomic(paths["parquet"], lambda p: table.to_parquet(p, index=False, engine="pyarrow"))
    page = render_html(rows, summary, codes, include_accession=include_accession, models=models, complete=complete)
    _atomic(paths["html"], lambda p: p.write_text(page, encoding="utf-8"))
    return paths


def _pct(rate: Rate) -> str:
    if rate.value is None:
        return "n/a (no screened study with a report)"
    lo, hi = rate.interval
    return f"{100 * rate.value:.1f}% ({rate.count}/{rate.total}; 95% CI {100 * lo:.1f}–{100 * hi:.1f}%)"


def _finding_text(code: str, f: dict[str, Any]) -> str:
    if f.get("applicable", True) is False or f.get("probability") is None:
        return f"{html.escape(code)} not applicable"
    shadow = " (shadow)" if f.get("mode") == "shadow" else ""
    return f"{html.escape(code)} {f['probability']:.2f}{' +' if f['positive'] else ''}{shadow}"


_LABEL_TEXT = {"negated": "report negates it", "not_mentioned": "report does not mention it"}

_CSS = """
body{font-family:system-ui,sans-serif;margin:2rem;color:#222;max-width:72rem}
.banner{background:#222;color:#ff0;padding:.4rem .8rem;font-weight:600}
table{border-collapse:collapse;margin:.5rem 0 1.5rem}td,th{border:1px solid #ccc;padding:.25rem .6rem;text-align:left}
th{background:#f3f3f3}.study{border:1px solid #ccc;border-radius:6px;padding:.8rem;margin:1rem 0}
.pictures{display:flex;gap:1rem;flex-wrap:wrap}.pictures img{max-width:320px;border:1px solid #999}
blockquote{margin:.3rem 0 .6rem 1rem;color:#444;font-style:italic}.muted{color:#777}
"""


def render_html(rows: Sequence[dict[str, Any]], summary: AuditSummary, codes: Sequence[str], *,
                include_accession: bool, models: Sequence[str], complete: bool) -> str:
    e = html.escape
    out = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<title>secondreader audit</title>", f"<style>{_CSS}</style></head><body>",
        f"<div class='banner'>{e(BANNER)}</div>",
        "<h1>Retrospective audit</h1>",
        f"<p class='muted'>Models: {e(', '.join(models))}. Written {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC."
        + ("" if complete else " <strong>Partial: the run was interrupted; rerun to finish.</strong>") + "</p>",
        "<h2>Summary</h2><table>",
        f"<tr><th>Studies</th><td id='studies'>{summary.studies}</td></tr>",
        f"<tr><th>Screened</th><td id='screened'>{summary.screened}</td></tr>",
        f"<tr><th>Ineligible</th><td id='ineligible'>{summary.ineligible}</td></tr>",
        f"<tr><th>Failed</th><td id='failed'>{summary.failed}</td></tr>",
        f"<tr><th>Screened with a report</th><td>{summary.with_report}</td></tr>",
        f"<tr><th>Screened without a report</th><td>{summary.without_report}</td></tr>",
        f"<tr><th>Discordant (AI positive, report negates or does not mention)</th>"
        f"<td id='discordance'>{e(_pct(summary.discordance))}</td></tr></table>",
        "<h3>By finding</h3><table><tr><th>finding</th><th>AI positive</th><th>report mentions</th>"
        "<th>discordant</th><th>shadow: would have flagged</th><th>not applicable (outside the model's scope)</th>"
        "</tr>",
    ]
    for code, stats in summary.by_finding.items():
        out.append(f"<tr><td>{e(code)}</td><td>{stats['ai_positive']}</td><td>{stats['report_mentioned']}</td>"
                   f"<td>{e(_pct(stats['discordant']))}</td><td>{stats.get('shadow_positive', 0)}</td>"
                   f"<td>{stats.get('not_applicable', 0)}</td></tr>")
    out.append("</table><h3>By month (Study Date)</h3><table><tr><th>month</th><th>discordant</th></tr>")
    for month, rate in summary.by_month.items():
        out.append(f"<tr><td>{e(month)}</td><td>{e(_pct(rate))}</td></tr>")
    out.append("</table>")

    discordant = [r for r in _order(rows) if r["discordant"]]
    out.append(f"<h2>Discordant studies ({len(discordant)}), highest priority score first</h2>")
    for row in discordant:
        ident = e(row["study_instance_uid"] or "")
        if include_accession and row["accession_number"]:
            ident += f" · accession {e(row['accession_number'])}"
        findings = ", ".join(_finding_text(c, f) for c, f in row["findings"].items())
        out.append(f"<div class='study'><h3>score {int(row['priority_score'])} · {ident}</h3>"
                   f"<p>{e(row['study_month'] or 'month unknown')} · AI: {findings}</p>")
        for code in row["discordant_findings"]:
            label = row["labels"].get(code, "")
            out.append(f"<p><strong>{e(code)}</strong>: {e(_LABEL_TEXT.get(label, label))}</p>")
            sentence = row["evidence"].get(code)
            out.append(f"<blockquote>{e(sentence)}</blockquote>" if sentence
                       else "<p class='muted'>no sentence of the report mentions it</p>")
            pictures = row["images"].get(code)
            if pictures:
                out.append("<div class='pictures'>")
                if pictures.get("thumbnail"):
                    out.append(f"<a href='{e(pictures['thumbnail'])}'><img src='{e(pictures['thumbnail'])}' "
                               f"alt='image'></a>")
                out.append(f"<a href='{e(pictures['overlay'])}'><img src='{e(pictures['overlay'])}' "
                           f"alt='{e(code)} heatmap overlay'></a></div>")
        out.append("</div>")
    out.append(f"<h2>Bad files ({len(summary.bad_files)})</h2>")
    if summary.bad_files:
        out.append("<table><tr><th>file</th><th>reason</th></tr>")
        for source, reason in summary.bad_files[:MAX_BAD_FILES_LISTED]:
            out.append(f"<tr><td>{e(source)}</td><td>{e(reason)}</td></tr>")
        out.append("</table>")
        if len(summary.bad_files) > MAX_BAD_FILES_LISTED:
            out.append(f"<p>and {len(summary.bad_files) - MAX_BAD_FILES_LISTED} more (see audit.csv)</p>")
    out.append("</body></html>\n")
    return "\n".join(out)
