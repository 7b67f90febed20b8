"""The transparent heatmap layer the viewer blends over the image (outputs/overlay.py)."""

from __future__ import annotations

import numpy as np
import pytest

from secondreader.outputs.overlay import LAYER_MAX_SIDE, heat_colormap, render_layer


def test_layer_is_transparent_where_heat_is_low_and_opaque_at_the_peak() -> None:
    heat = np.zeros((300, 400), dtype=np.float32)
    heat[100:150, 200:260] = 1.0
    heat[0:10, 0:10] = 0.5
    layer = np.asarray(render_layer(heat))
    assert layer.shape == (300, 400, 4)
    assert layer[200, 50, 3] == 0  # heat 0: fully transparent
    assert layer[120, 230, 3] == 255  # heat 1: fully opaque
    assert 100 < layer[5, 5, 3] < 160  # heat 0.5: half way (0.5 - 0.2) / 0.6
    assert (layer[120, 230, :3] == heat_colormap(np.array([[1.0]]))[0, 0]).all()


def test_a_large_grid_is_reduced_uniformly_so_it_still_covers_the_source_grid() -> None:
    rows, cols = 1955, 1841
    heat = np.zeros((rows, cols), dtype=np.float32)
    heat[rows // 2 - 100:rows // 2 + 100, 300:500] = 1.0  # a lesion left of centre
    layer = np.asarray(render_layer(heat))
    h, w = layer.shape[:2]
    assert max(h, w) == LAYER_MAX_SIDE
    assert abs(h / rows - w / cols) < 2 / LAYER_MAX_SIDE
    # The lesion lands where the source pixel maps to, in the reduced grid.
    assert layer[round(rows / 2 * h / rows), round(400 * w / cols), 3] == 255
    assert layer[round(rows / 2 * h / rows), round(1400 * w / cols), 3] == 0


def test_bad_heat_is_refused() -> None:
    with pytest.raises(ValueError, match="2-D"):
        render_layer(np.zeros((3, 3, 3), dtype=np.float32))
