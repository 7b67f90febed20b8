from __future__ import annotations

import numpy as np
import pytest

from secondreader.explain.regions import extract_regions


def _blob(shape: tuple[int, int], centre: tuple[int, int], sigma: float, height: float = 1.0) -> np.ndarray:
    r, c = np.mgrid[0:shape[0], 0:shape[1]]
    return height * np.exp(-((r - centre[0]) ** 2 + (c - centre[1]) ** 2) / (2 * sigma**2))


def test_two_blobs_give_two_regions_strongest_first_with_area_in_mm2() -> None:
    heat = _blob((400, 300), (100, 80), 12) + _blob((400, 300), (300, 220), 10, 0.8)
    regions = extract_regions(heat.astype(np.float32), finding="nodule", frame=1, spacing_mm=(0.5, 0.25))
    assert len(regions) == 2
    first, second = regions
    assert first.peak == pytest.approx(1.0) and second.peak == pytest.approx(0.8, abs=0.01)
    r0, c0, r1, c1 = first.bbox
    assert r0 < 100 < r1 and c0 < 80 < c1
    assert first.centroid == pytest.approx((100, 80), abs=0.5)
    assert first.area_mm2 == pytest.approx(first.area_px * 0.125, abs=0.1)


def test_no_spacing_gives_null_area_and_flat_heat_gives_no_region() -> None:
    heat = _blob((200, 200), (100, 100), 15).astype(np.float32)
    (region,) = extract_regions(heat, finding="pneumonia", frame=2, spacing_mm=None)
    assert region.area_mm2 is None and region.frame == 2
    assert extract_regions(np.zeros((50, 50), np.float32), finding="x", frame=1, spacing_mm=None) == []
