"""Free-response ROC (FROC) for localisation: lesion sensitivity against false regions per image.

A detection is a point with a score. It *hits* a lesion when it lies within
``max(lesion radius, min_radius)`` of the lesion's centre (the nearest such lesion when several
qualify). At a threshold ``t``, a lesion is found when some detection with score >= ``t`` hits it;
every detection with score >= ``t`` that hits no lesion is a false region. A second hit on a lesion
already found is neither (as in LUNA16). The FROC sensitivity at ``f`` false regions per image is the
highest sensitivity over the thresholds whose false regions per image are at most ``f``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["FROC_RATES", "ImageDetections", "froc_bootstrap", "froc_sensitivities", "froc_threshold", "match_image",
           "sensitivity_at_threshold"]

#: False regions per image at which sensitivities are reported (issue 3).
FROC_RATES = (0.25, 0.5, 1.0, 2.0)


@dataclass(frozen=True, slots=True)
class ImageDetections:
    """One image after matching: ``lesion_scores`` float64 (n_lesions,), the best score of a
    detection hitting each lesion (``-inf`` when none does); ``false_scores`` float64 (n_false,),
    the scores of the detections that hit no lesion."""

    lesion_scores: np.ndarray
    false_scores: np.ndarray


def match_image(detections: Sequence[tuple[float, float, float]], lesions: Sequence[tuple[float, float, float]],
                *, min_radius: float = 0.0) -> ImageDetections:
    """Match ``detections`` ``(row, col, score)`` to ``lesions`` ``(row, col, radius)`` on one image."""
    best = np.full(len(lesions), -np.inf)
    false: list[float] = []
    centres = np.asarray([(r, c) for r, c, _ in lesions], dtype=np.float64).reshape(-1, 2)
    reach = np.asarray([max(radius, min_radius) for _, _, radius in lesions], dtype=np.float64)
    for row, col, score in detections:
        if len(lesions):
            dist = np.hypot(centres[:, 0] - row, centres[:, 1] - col)
            inside = np.nonzero(dist <= reach)[0]
        else:
            inside = np.zeros(0, dtype=int)
        if inside.size:
            j = int(inside[np.argmin(dist[inside])])
            best[j] = max(best[j], float(score))
        else:
            false.append(float(score))
    return ImageDetections(best, np.asarray(false, dtype=np.float64))


def _curve(images: Sequence[ImageDetections]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every candidate threshold, ascending, with the lesion sensitivity and false regions per image
    of the detections at or over it."""
    if not images:
        raise ValueError("FROC needs at least one image")
    lesion = np.concatenate([im.lesion_scores for im in images])
    if lesion.size == 0:
        raise ValueError("FROC needs at least one lesion")
    false = np.sort(np.concatenate([im.false_scores for im in images]))
    thresholds = np.unique(np.concatenate([lesion[np.isfinite(lesion)], false, [np.inf]]))
    lesion_sorted = np.sort(lesion)
    # counts of scores >= t for every candidate threshold t
    found = lesion.size - np.searchsorted(lesion_sorted, thresholds, side="left")
    false_count = false.size - np.searchsorted(false, thresholds, side="left")
    return thresholds, found / lesion.size, false_count / len(images)


def froc_sensitivities(images: Sequence[ImageDetections], rates: Sequence[float] = FROC_RATES) -> dict[float, float]:
    """Lesion sensitivity at each rate of false regions per image (see the module docstring).

    Raises
    ------
    ValueError
        When there are no images or no lesions.
    """
    _thresholds, sensitivity, per_image = _curve(images)
    out = {}
    for rate in rates:
        allowed = per_image <= rate + 1e-12
        out[float(rate)] = float(sensitivity[allowed].max()) if allowed.any() else 0.0
    return out


def froc_threshold(images: Sequence[ImageDetections], rate: float) -> float:
    """The score threshold of the FROC point at ``rate`` false regions per image: the lowest one
    that keeps the false regions at or under ``rate`` (``inf`` when even the highest does not)."""
    thresholds, _sensitivity, per_image = _curve(images)
    allowed = per_image <= rate + 1e-12
    return float(thresholds[allowed].min()) if allowed.any() else float("inf")


def sensitivity_at_threshold(images: Sequence[ImageDetections], threshold: float) -> tuple[float, float]:
    """``(lesion sensitivity, false regions per image)`` when detections below ``threshold`` are dropped."""
    lesion = np.concatenate([im.lesion_scores for im in images])
    false = np.concatenate([im.false_scores for im in images])
    return float((lesion >= threshold).mean()) if lesion.size else 0.0, float((false >= threshold).sum() / len(images))


def froc_bootstrap(images: Sequence[ImageDetections], rates: Sequence[float] = FROC_RATES, *, n_boot: int = 1000,
                   seed: int = 0, alpha: float = 0.05) -> dict[float, tuple[float, float]]:
    """Percentile bootstrap intervals of the FROC sensitivities (resampling images)."""
    rng = np.random.default_rng(seed)
    values: dict[float, list[float]] = {float(r): [] for r in rates}
    n = len(images)
    for _ in range(n_boot):
        sample = [images[i] for i in rng.integers(0, n, n)]
        if sum(im.lesion_scores.size for im in sample) == 0:
            continue
        for rate, s in froc_sensitivities(sample, rates).items():
            values[rate].append(s)
    return {rate: (float(np.quantile(v, alpha / 2)), float(np.quantile(v, 1 - alpha / 2)))
            for rate, v in values.items()}
