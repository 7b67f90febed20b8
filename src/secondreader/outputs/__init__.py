"""Artefacts written for people and PACS: PNG overlays (DICOM outputs come later)."""
