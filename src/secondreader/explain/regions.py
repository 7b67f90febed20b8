"""Heatmap on the source grid → regions (threshold, connected components, bbox, centroid, area)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from skimage.measure import label, regionprops

__all__ = ["Region", "extract_regions"]


@dataclass(frozen=True, slots=True)
class Region:
    """A connected area of high saliency, in source pixel coordinates of one frame.

    ``bbox`` is ``(row_min, col_min, row_max, col_max)`` with ``[start, stop)`` in each axis;
    ``centroid`` is the heat-weighted centre ``(row, col)``; ``peak`` is the highest heat in it.
    """

    finding: str
    frame: int
    bbox: tuple[int, int, int, int]
    centroid: tuple[float, float]
    area_px: int
    area_mm2: float | None
    peak: float

    def __post_init__(self) -> None:
        r0, c0, r1, c1 = self.bbox
        if not (0 <= r0 < r1 and 0 <= c0 < c1):
            raise ValueError(f"bbox must be [start, stop) with start < stop, not {self.bbox}")
        if self.frame < 1:
            raise ValueError("frame is 1-based")


def extract_regions(
    heat: np.ndarray,
    *,
    finding: str,
    frame: int,
    spacing_mm: tuple[float, float] | None,
    threshold: float = 0.5,
    min_fraction: float = 0.002,
    max_regions: int = 3,
) -> list[Region]:
    """Regions of ``heat`` (float32 (rows, cols), scaled so its maximum is 1) over ``threshold``.

    Components smaller than ``min_fraction`` of the image are dropped; at most ``max_regions`` are
    kept, strongest peak first.
    """
    if heat.ndim != 2:
        raise ValueError(f"heat must be 2-D, not shape {heat.shape}")
    top = float(heat.max()) if heat.size else 0.0
    if top <= 0:
        return []
    mask = heat >= threshold * top
    # Label only the box around the pixels over the threshold (the same components, fewer pixels:
    # on a 2k x 2k radiograph the hot area is usually a small part of the frame).
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return []
    dr, dc = int(rows[0]), int(cols[0])
    window = (slice(dr, int(rows[-1]) + 1), slice(dc, int(cols[-1]) + 1))
    labels = label(mask[window], connectivity=2)
    min_area = max(1, int(min_fraction * heat.size))
    regions: list[Region] = []
    for props in regionprops(labels, intensity_image=heat[window]):
        if props.area < min_area:
            continue
        r0, c0, r1, c1 = (int(v) for v in props.bbox)
        r0, c0, r1, c1 = r0 + dr, c0 + dc, r1 + dr, c1 + dc
        local = props.centroid_weighted
        centroid = (float(local[0]) + dr, float(local[1]) + dc)
        area_mm2 = None
        if spacing_mm is not None:
            area_mm2 = round(float(props.area) * spacing_mm[0] * spacing_mm[1], 1)
        regions.append(
            Region(
                finding=finding,
                frame=frame,
                bbox=(r0, c0, r1, c1),
                centroid=(round(centroid[0], 1), round(centroid[1], 1)),
                area_px=int(props.area),
                area_mm2=area_mm2,
                peak=float(props.intensity_max) / top,
            )
        )
    regions.sort(key=lambda r: (-r.peak, r.bbox))
    return regions[:max_regions]
