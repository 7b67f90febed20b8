from __future__ import annotations

import numpy as np
import pytest

from secondreader.explain.heatmap import heatmap_on_source
from secondreader.preprocessing import GeometryRecord, InputSpec, prepare_frame, window_frame


def test_centre_square_crop_of_a_tall_image() -> None:
    g = GeometryRecord.centre_square(2128, 2000, (28, 28))
    assert (g.crop_row0, g.crop_col0, g.crop_side) == (64, 0, 2000)


def test_model_input_is_the_stretched_area_average_of_the_centre_square() -> None:
    rng = np.random.default_rng(1)
    img = rng.random((300, 280)).astype(np.float32)
    spec = InputSpec(size=(28, 28), mean=0.25, std=0.5)
    tensor, geometry = prepare_frame(img, spec)
    assert tuple(tensor.shape) == (1, 28, 28)
    square = img[10:290, :]  # (300 - 280) // 2 = 10
    averaged = square.reshape(28, 10, 28, 10).mean(axis=(1, 3))
    lo, hi = np.percentile(averaged, [0.5, 99.5])
    expected = np.clip((averaged - lo) / (hi - lo), 0, 1)
    np.testing.assert_allclose(tensor[0].numpy() * 0.5 + 0.25, expected, atol=1e-4)
    assert geometry.crop_row0 == 10


def test_a_model_grid_spot_maps_back_onto_the_source_spot() -> None:
    g = GeometryRecord.centre_square(1000, 800, (28, 28))
    heat = np.zeros((28, 28), np.float32)
    heat[7, 21] = 1.0
    src = heatmap_on_source(heat, g)
    assert src.shape == (1000, 800)
    peak = np.unravel_index(np.argmax(src), src.shape)
    expected = g.to_source_point(7, 21)
    assert abs(peak[0] - expected[0]) <= 800 / 28 and abs(peak[1] - expected[1]) <= 800 / 28
    assert src[:100].max() == 0.0 and src[900:].max() == 0.0  # outside the crop the model never saw


def test_monochrome1_inversion_and_percentile_window() -> None:
    values = np.linspace(100, 4000, 300 * 300, dtype=np.float32).reshape(300, 300)
    mono2 = window_frame(values, windowed=False, invert=False)
    mono1 = window_frame(values[::-1, ::-1].max() + values.min() - values, windowed=False, invert=True)
    np.testing.assert_allclose(mono1, mono2, atol=1e-5)


def test_input_spec_validates() -> None:
    with pytest.raises(ValueError, match="std must be positive"):
        InputSpec(size=(28, 28), mean=0.0, std=0.0)
    with pytest.raises(ValueError, match="crop rows"):
        GeometryRecord(100, 100, 50, 0, 80, (28, 28))


def test_contrast_standardisation_makes_window_choices_agree() -> None:
    """A picture and a linearly re-windowed copy of it give the same model input."""
    rng = np.random.default_rng(2)
    img = rng.random((280, 280)).astype(np.float32) * 0.6 + 0.2  # a low-contrast export
    spec = InputSpec(size=(28, 28), mean=0.5, std=0.25)
    a, _ = prepare_frame(img, spec)
    b, _ = prepare_frame(np.clip((img - 0.2) / 0.6, 0, 1), spec)
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-4)
