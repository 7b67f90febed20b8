"""Batch retrospective audits (``secondreader audit``): the screening pipeline over an archive
(folder, zip or DICOMweb), reconciled with the signed reports; an audit table and an HTML report.

- :mod:`.archive`: archives → study tasks (folder/zip index, DICOMweb QIDO-RS/WADO-RS)
- :mod:`.reports`: first reads from a CSV or a file of HL7 v2 ORU messages
- :mod:`.stage`: one study through the pipeline and the reconciliation (the work unit of every engine)
- :mod:`.checkpoint`: the append-only checkpoint that makes a run resumable
- :mod:`.engines`: ``local`` (worker processes, model batched in the main process) and ``ray`` (Ray Data)
- :mod:`.summary` / :mod:`.report`: the statistics and the files written (CSV, Parquet, HTML)
- :mod:`.run`: the orchestration, with a progress bar
"""


from __future__ import annotations

import importlib
from typing import Any

__all__ = ["AuditConfig", "AuditOutcome", "Checkpoint", "CheckpointMismatchError", "ReportIndex", "load_reports",
           "run_audit", "wilson_interval"]

# Imported on first use: ``secondreader --help`` must not pay for torch, pandas and Ray.
_HOMES = {"AuditConfig": "run", "AuditOutcome": "run", "run_audit": "run", "Checkpoint": "checkpoint",
          "CheckpointMismatchError": "checkpoint", "ReportIndex": "reports",
          "load_reports": "reports", "wilson_interval": "summary"}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
