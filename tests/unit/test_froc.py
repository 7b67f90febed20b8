"""FROC and detection matching against values computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from secondreader.training.froc import (
    ImageDetections,
    froc_bootstrap,
    froc_sensitivities,
    froc_threshold,
    match_image,
    sensitivity_at_threshold,
)


def _three_images() -> list[ImageDetections]:
    # image 0: two lesions; a hit on each, a false region, and a second (ignored) hit on lesion 0
    a = match_image([(11, 10, 0.9), (50, 53, 0.6), (80, 80, 0.7), (10, 11, 0.5)],
                    [(10, 10, 3), (50, 50, 5)], min_radius=4)
    # image 1: no lesion, two false regions
    b = match_image([(5, 5, 0.8), (30, 30, 0.3)], [], min_radius=4)
    # image 2: a small lesion (radius 2) hit 3 px away thanks to min_radius 4; one false region
    c = match_image([(23, 20, 0.4), (20, 30, 0.95)], [(20, 20, 2)], min_radius=4)
    return [a, b, c]


def test_matching_by_hand() -> None:
    a, b, c = _three_images()
    assert a.lesion_scores.tolist() == [0.9, 0.6]
    assert a.false_scores.tolist() == [0.7]
    assert b.lesion_scores.size == 0 and b.false_scores.tolist() == [0.8, 0.3]
    assert c.lesion_scores.tolist() == [0.4] and c.false_scores.tolist() == [0.95]
    # without min_radius the 3-px miss of a radius-2 lesion is a false region
    strict = match_image([(23, 20, 0.4)], [(20, 20, 2)])
    assert strict.lesion_scores.tolist() == [-np.inf] and strict.false_scores.tolist() == [0.4]


def test_a_detection_between_two_lesions_goes_to_the_nearest() -> None:
    found = match_image([(0, 4, 0.7)], [(0, 0, 5), (0, 6, 5)])
    assert found.lesion_scores.tolist() == [-np.inf, 0.7]


def test_froc_by_hand() -> None:
    # lesion scores 0.9, 0.6, 0.4; false regions 0.95, 0.8, 0.7, 0.3 over 3 images:
    # t=0.95: 0/3 found, 1/3 FP/image; t=0.9: 1/3, 1/3; t=0.8: 1/3, 2/3; t=0.7: 1/3, 1;
    # t=0.6: 2/3, 1; t=0.4: 3/3, 1; t=0.3: 3/3, 4/3
    froc = froc_sensitivities(_three_images())
    assert froc == pytest.approx({0.25: 0.0, 0.5: 1 / 3, 1.0: 1.0, 2.0: 1.0})
    assert froc_sensitivities(_three_images(), rates=(0.7,)) == pytest.approx({0.7: 1 / 3})


def test_the_threshold_of_a_froc_point_gives_that_point() -> None:
    # from the table above: the lowest threshold with at most 1 FP/image is 0.4 (3/3 found, 1 FP/image);
    # at most 0.5 FP/image: 0.9 (1/3); at most 0.25: none of the thresholds but infinity
    assert froc_threshold(_three_images(), 1.0) == pytest.approx(0.4)
    assert froc_threshold(_three_images(), 0.5) == pytest.approx(0.9)
    assert froc_threshold(_three_images(), 0.25) == np.inf
    for rate in (0.5, 1.0, 2.0):
        t = froc_threshold(_three_images(), rate)
        sensitivity, per_image = sensitivity_at_threshold(_three_images(), t)
        assert sensitivity == pytest.approx(froc_sensitivities(_three_images(), rates=(rate,))[rate])
        assert per_image <= rate


def test_sensitivity_at_a_threshold() -> None:
    assert sensitivity_at_threshold(_three_images(), 0.65) == pytest.approx((1 / 3, 1.0))
    assert sensitivity_at_threshold(_three_images(), 0.35) == pytest.approx((1.0, 1.0))
    assert sensitivity_at_threshold(_three_images(), 0.3) == pytest.approx((1.0, 4 / 3))


def test_a_perfect_detector_and_an_empty_one() -> None:
    perfect = [match_image([(10, 10, 0.9)], [(10, 10, 3)]), match_image([], [])]
    assert froc_sensitivities(perfect) == pytest.approx({0.25: 1.0, 0.5: 1.0, 1.0: 1.0, 2.0: 1.0})
    blind = [match_image([], [(10, 10, 3)])]
    assert froc_sensitivities(blind) == pytest.approx({0.25: 0.0, 0.5: 0.0, 1.0: 0.0, 2.0: 0.0})


def test_froc_needs_lesions() -> None:
    with pytest.raises(ValueError, match="lesion"):
        froc_sensitivities([match_image([(1, 1, 0.5)], [])])
    with pytest.raises(ValueError, match="image"):
        froc_sensitivities([])


def test_bootstrap_interval_brackets_the_estimate() -> None:
    rng = np.random.default_rng(0)
    images = []
    for _ in range(60):
        lesions = [(50.0, 50.0, 5.0)] if rng.random() < 0.5 else []
        detections = [(float(rng.uniform(0, 100)), float(rng.uniform(0, 100)), float(rng.uniform(0, 0.6)))]
        if lesions and rng.random() < 0.8:
            detections.append((51.0, 50.0, float(rng.uniform(0.3, 1.0))))
        images.append(match_image(detections, lesions))
    point = froc_sensitivities(images)
    ci = froc_bootstrap(images, n_boot=300, seed=1)
    for rate, (lo, hi) in ci.items():
        assert lo <= point[rate] <= hi
    assert ci[2.0][1] - ci[2.0][0] > 0  # a real interval, not a point
