"""Heatmap resampling by matrix products against the scikit-image resize it replaces."""

from __future__ import annotations

import numpy as np
import pytest

from secondreader.explain.heatmap import bilinear_matrix, heatmap_on_source
from secondreader.preprocessing import GeometryRecord


@pytest.mark.parametrize(("rows", "cols", "size"), [(700, 840, (28, 28)), (1955, 1841, (28, 28)), (300, 300, (64, 48)),
                                                     (50, 90, (28, 28))])
def test_matches_the_scikit_image_resize(rows: int, cols: int, size: tuple[int, int]) -> None:
    geometry = GeometryRecord.centre_square(rows, cols, size)
    saliency = np.random.default_rng(rows).random(size, dtype=np.float32)
    got = heatmap_on_source(saliency, geometry)
    expected = np.clip(geometry.to_source(saliency), 0.0, 1.0)
    assert got.shape == (rows, cols) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=2e-6)
    # zero outside the crop, the map inside
    side = geometry.crop_side
    inside = got[geometry.crop_row0:geometry.crop_row0 + side, geometry.crop_col0:geometry.crop_col0 + side]
    assert got.sum() == pytest.approx(inside.sum(), rel=1e-6) and inside.max() > 0.9


def test_weights_sum_to_one_and_the_input_is_checked() -> None:
    m = bilinear_matrix(2048, 28)
    np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="saliency must have shape"):
        heatmap_on_source(np.zeros((27, 28), np.float32), GeometryRecord.centre_square(100, 100, (28, 28)))
