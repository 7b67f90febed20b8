"""Saliency on the model grid → heatmap on the *source* pixel grid (via ``GeometryRecord``)."""

from __future__ import annotations

import numpy as np

from ..preprocessing import GeometryRecord

__all__ = ["heatmap_on_source"]


def heatmap_on_source(saliency: np.ndarray, geometry: GeometryRecord) -> np.ndarray:
    """``saliency``: float32 (H, W) in [0, 1] on the model input grid.

    Returns float32 (source_rows, source_cols) in [0, 1], zero outside the square the model saw.
    """
    heat = geometry.to_source(np.clip(saliency, 0.0, 1.0))
    return np.clip(heat, 0.0, 1.0, out=heat)
