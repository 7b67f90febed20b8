"""secondreader: an AI second reader for chest radiographs.

Subpackages: ``dicom`` (reading, eligibility, pixels), ``model`` (cards, networks, predictors),
``explain`` (heatmaps, regions), ``scoring`` (calibration, priority), ``outputs`` (overlays),
``training`` (the training pipeline). ``pipeline.run_study`` composes them.
"""

from __future__ import annotations

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = ["__version__"]
