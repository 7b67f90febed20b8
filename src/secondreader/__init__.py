"""secondreader: an AI second reader for chest radiographs.

Subpackages: ``dicom`` (reading, eligibility, pixels, the receiver and senders), ``model`` (cards,
scopes and modes, networks, predictors), ``explain`` (heatmaps, regions), ``scoring`` (calibration,
priority), ``outputs`` (overlays, SC/SEG/SR), ``reports`` (first reads: labeler, HL7, FHIR),
``worklist`` (routing, reviews), ``store`` (the job and worklist store), ``service`` (the BentoML
service), ``audit`` (retrospective audits), ``training`` (the recipes that make ``models/``);
``vocabulary`` holds the finding codes, ``schema`` types the study result (contract 2; its JSON
Schema, ``result.schema.json``, is generated from it) and ``fileio`` replaces files atomically.
``pipeline`` composes the screening steps and writes nothing (``outputs.writer`` does); the CLI,
the service, the DICOM receiver and the audit all call it. The five contracts (CLI, study result,
HTTP, DICOM outputs, settings) are in ``docs/contracts.md``; which way imports go is in
``docs/architecture.md``.
"""

from __future__ import annotations

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = ["__version__"]
