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


def _regions_on_the_whole_frame(heat: np.ndarray, threshold: float = 0.5, min_fraction: float = 0.002
                                ) -> list[tuple[tuple[int, int, int, int], tuple[float, float], int, float]]:
    """The straightforward version (label the whole frame), as the reference."""
    from skimage.measure import label, regionprops

    top = float(heat.max())
    out = []
    for props in regionprops(label(heat >= threshold * top, connectivity=2), intensity_image=heat):
        if props.area < max(1, int(min_fraction * heat.size)):
            continue
        c = props.centroid_weighted
        out.append((tuple(int(v) for v in props.bbox), (round(float(c[0]), 1), round(float(c[1]), 1)),
                    int(props.area), float(props.intensity_max) / top))
    out.sort(key=lambda r: (-r[3], r[0]))
    return out[:3]


@pytest.mark.parametrize("seed", range(6))
def test_labelling_only_the_hot_box_gives_the_whole_frame_answer(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(300, 900)), int(rng.integers(300, 900)))
    heat = sum(_blob(shape, (int(rng.integers(0, shape[0])), int(rng.integers(0, shape[1]))),
                     float(rng.uniform(25, 60)), float(rng.uniform(0.3, 1.0))) for _ in range(4))
    heat = (heat / heat.max()).astype(np.float32)
    got = extract_regions(heat, finding="x", frame=1, spacing_mm=None)
    want = _regions_on_the_whole_frame(heat)
    assert [(r.bbox, r.centroid, r.area_px, r.peak) for r in got] == want
    assert got  # the strongest blob always gives a region
