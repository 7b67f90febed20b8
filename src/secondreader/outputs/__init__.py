"""Artefacts written for people and PACS: PNG overlays and DICOM outputs (SC, SEG, SR), written
from a screened study by :mod:`~secondreader.outputs.writer`."""
