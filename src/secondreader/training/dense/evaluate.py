"""Scoring dense models the way serving scores them, and the figures a bundle reports.

- :func:`predict_maps` and :func:`score_set`: the served smoothed logit maps (:class:`MapRecipe`),
  each image's study logit (the map's maximum) and its peaks matched to the inserted nodules
  (:class:`Scored`); where a label is unknown the map neither scores the study nor yields detections;
- :class:`Calibration` and :func:`calibrate`: calibration and operating points fitted on validation;
- :func:`localisation_metrics`: study-level metrics and the FROC with bootstrap intervals, and the
  sensitivity by nodule contrast and diameter band (:func:`sensitivity_by_band`);
- :func:`held_out_metrics` and :func:`pool_folds`: the leave-one-out (or cross-validation) folds
  pooled, each fold's scores on its own calibrated scale.

(``secondreader evaluate``, which recomputes a shipped bundle's figures, is
:mod:`secondreader.training.evaluate`; it uses these.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ...model.dense import MapRecipe, map_peaks
from ...preprocessing import InputSpec
from ...scoring.calibration import Calibrator
from ..common import calibrate_on_validation
from ..config import LesionConfig, TrainConfig
from ..froc import (
    FROC_RATES,
    ImageDetections,
    froc_bootstrap,
    froc_sensitivities,
    froc_threshold,
    match_image,
    sensitivity_at_threshold,
)
from ..metrics import auroc, binary_metrics, decision_rates
from .data import EvalSet
from .inputs import standardise

__all__ = ["CONTRAST_BANDS", "DIAMETER_BANDS", "Calibration", "Scored", "cal_scores", "calibrate", "held_out_metrics",
           "localisation_metrics", "pool_folds", "predict_maps", "score_set", "sensitivity_by_band"]


#: Peaks of a smoothed logit map below this (a probability of 0.02) are not detections.
_PEAK_FLOOR = math.log(0.02 / 0.98)


def predict_maps(network: torch.nn.Module, inputs: torch.Tensor, *, recipe: MapRecipe, batch: int = 32) -> np.ndarray:
    """Smoothed logit maps float32 (N, S, S) of channel 0 for normalised inputs (N, 1, S, S), as
    the served predictor makes them (its heatmap is their sigmoid), on the network's device (float32)."""
    out = []
    network.eval()
    device = next(network.parameters(), torch.empty(0)).device  # a module without weights: the CPU
    with torch.inference_mode():
        for i in range(0, len(inputs), batch):
            out.append(recipe.logits(network, inputs[i:i + batch].to(device), [0])[:, 0].float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0,) + tuple(inputs.shape[-2:]), np.float32)


@dataclass(slots=True)
class Scored:
    """A set's study logits, labels and matched detections (peaks of the probability map)."""

    logits: np.ndarray
    labels: np.ndarray
    images: list[ImageDetections]
    #: per image, ``(radius, contrast)`` of each nodule, in the order of its ``lesion_scores``
    nodules: list[list[tuple[float, float]]] | None = None

    def to_json(self) -> dict[str, Any]:
        def enc(a: np.ndarray) -> list[float | None]:
            return [None if not np.isfinite(v) else round(float(v), 6) for v in a]

        out: dict[str, Any] = {"logits": enc(self.logits), "labels": self.labels.tolist(),
                               "images": [[enc(im.lesion_scores), enc(im.false_scores)] for im in self.images]}
        if self.nodules is not None:
            out["nodules"] = [[[round(r, 3), round(c, 4)] for r, c in ns] for ns in self.nodules]
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Scored:
        def dec(values: list[float | None]) -> np.ndarray:
            return np.asarray([-np.inf if v is None else v for v in values], dtype=np.float64)

        nodules = [[(float(r), float(c)) for r, c in ns] for ns in data["nodules"]] if "nodules" in data else None
        return cls(dec(data["logits"]), np.asarray(data["labels"], dtype=np.int64),
                   [ImageDetections(dec(a), dec(b)) for a, b in data["images"]], nodules)


def score_set(network: torch.nn.Module, data: EvalSet, spec: InputSpec, lc: LesionConfig,
              recipe: MapRecipe) -> Scored:
    """Study logits and matched peaks of ``data``; where an image's label is unknown, the map
    neither scores the study nor yields detections."""
    inputs = data.inputs if data.normalised else standardise(data.inputs, spec)
    maps = predict_maps(network, inputs, recipe=recipe)
    unknown = data.unknown or [None] * len(maps)
    logits = np.empty(len(maps), dtype=np.float64)
    images = []
    for k, (m, nods, where) in enumerate(zip(maps, data.nodules, unknown, strict=True)):
        peaks = map_peaks(m, floor=_PEAK_FLOOR)
        if where is not None:
            m = np.where(where, -np.inf, m)
            peaks = [p for p in peaks if not where[int(p[0]), int(p[1])]]
        logits[k] = float(m.max()) if np.isfinite(m).any() else float(maps[k].max())
        images.append(match_image(peaks, [(n.row, n.col, n.radius) for n in nods], min_radius=lc.hit_radius_min))
    return Scored(logits, data.labels, images, [[(n.radius, n.contrast) for n in nods] for nods in data.nodules])


@dataclass(frozen=True, slots=True)
class Calibration:
    """A model's calibration and its operating points, fitted on its validation pictures."""

    calibrator: Calibrator
    operating_point: float
    urgent_point: float

    def probability(self, logits: np.ndarray) -> np.ndarray:
        return self.calibrator.probability(logits)

    def map_threshold(self, probability: float) -> float:
        """The raw map value whose calibrated study probability is ``probability``."""
        return float(1 / (1 + math.exp(-self.calibrator.logit_for(probability))))

    def to_json(self) -> dict[str, Any]:
        """Unrounded, for a fold's saved state (``--resume`` must score as the run did)."""
        return {"calibrator": self.calibrator.to_json(digits=None), "operating_point": self.operating_point,
                "urgent_point": self.urgent_point}

    @classmethod
    def from_json(cls, state: dict[str, Any]) -> Calibration:
        return cls(Calibrator.from_json(state["calibrator"]), state["operating_point"], state["urgent_point"])


def calibrate(val: Scored, cfg: TrainConfig) -> Calibration:
    """Calibration and operating points of the config's rule, fitted on validation's study logits."""
    calibrator, _p, op, urgent = calibrate_on_validation(val.logits, val.labels, cfg.operating_point,
                                                        cfg.calibration.method)
    return Calibration(calibrator, op, urgent)


def cal_scores(map_values: np.ndarray, cal: Calibration) -> np.ndarray:
    """Map values (peaks' smoothed logits) → calibrated study-scale probabilities (-inf stays -inf)."""
    out = np.full(map_values.shape, -np.inf)
    finite = np.isfinite(map_values)
    out[finite] = cal.probability(map_values[finite])
    return out


def localisation_metrics(scored: Scored, cal: Calibration, *, seed: int, side: int = 0) -> dict[str, Any]:
    """Study-level metrics at the operating point and the FROC, with bootstrap intervals; with the
    model grid's ``side``, the FROC's sensitivity at 1 false region per image by nodule band too."""
    p = cal.probability(scored.logits)
    images = [ImageDetections(cal_scores(im.lesion_scores, cal), cal_scores(im.false_scores, cal))
              for im in scored.images]
    out: dict[str, Any] = {"study": binary_metrics(p, scored.labels, cal.operating_point, seed=seed).to_json()}
    if any(im.lesion_scores.size for im in images):
        nodules = [n for ns in scored.nodules for n in ns] if scored.nodules is not None and side else None
        sens_op, fp_op = sensitivity_at_threshold(images, cal.operating_point)
        out["froc"] = {**_froc_summary(images, nodules, side, seed=seed),
                       "at_operating_point": {"sensitivity": round(sens_op, 4),
                                              "false_regions_per_image": round(fp_op, 4)}}
    return out


def _froc_summary(images: Sequence[ImageDetections], nodules: Sequence[tuple[float, float]] | None, side: int, *,
                  seed: int) -> dict[str, Any]:
    """The FROC of ``images`` (calibrated scores) with bootstrap intervals and, given each lesion's
    ``(radius, contrast)`` in order, its sensitivity at 1 false region per image by band."""
    froc = froc_sensitivities(images)
    ci = froc_bootstrap(images, seed=seed)
    out: dict[str, Any] = {
        "n_images": len(images), "n_lesions": int(sum(im.lesion_scores.size for im in images)),
        "sensitivity": {str(r): round(froc[r], 4) for r in FROC_RATES},
        "sensitivity_ci95": {str(r): [round(ci[r][0], 4), round(ci[r][1], 4)] for r in FROC_RATES}}
    if nodules is not None:
        scores = np.concatenate([im.lesion_scores for im in images])
        out["by_band_at_1"] = sensitivity_by_band(scores, nodules, froc_threshold(images, 1.0), side)
    return out


#: Bands of the held-out nodules for the sensitivity breakdown: contrast (the largest rise of the
#: display value the nodule made where it was inserted) and diameter (a fraction of the model grid's
#: side; about 14 and 21 mm on a 35 cm film).
CONTRAST_BANDS = (0.0, 0.10, 0.15, 0.20)


DIAMETER_BANDS = (0.0, 0.04, 0.06)


def sensitivity_by_band(lesion_scores: np.ndarray, nodules: Sequence[tuple[float, float]], threshold: float,
                        side: int) -> dict[str, list[dict[str, Any]]]:
    """Lesion sensitivity at ``threshold`` within each contrast and diameter band. ``lesion_scores``
    float (n,) and ``nodules`` ``(radius, contrast)`` (n,) in the same order; radii on a ``side``
    grid."""
    attrs = np.asarray(nodules, dtype=np.float64).reshape(-1, 2)
    found = lesion_scores >= threshold
    out: dict[str, list[dict[str, Any]]] = {}
    for name, values, edges in (("contrast", attrs[:, 1], CONTRAST_BANDS),
                                ("diameter_fraction", 2 * attrs[:, 0] / side, DIAMETER_BANDS)):
        rows = []
        for lo, hi in zip(edges, (*edges[1:], math.inf), strict=True):
            inside = (values >= lo) & (values < hi)
            rows.append({"from": lo, "to": None if math.isinf(hi) else hi, "n": int(inside.sum()),
                         "sensitivity": round(float(found[inside].mean()), 4) if inside.any() else None})
        out[name] = rows
    return out


def held_out_metrics(states: list[dict[str, Any]], *, seed: int, side: int) -> dict[str, Any]:
    """The folds' figures, as the bundle's metrics hold them: ``test`` (pooled), ``folds``, and
    where a fold has a real opacity of unknown nature ``test_strict`` and ``folds_strict``; empty
    without folds."""
    if not states:
        return {}
    pooled, per_fold = pool_folds(states, seed=seed, side=side)
    metrics: dict[str, Any] = {"test": pooled, "folds": per_fold}
    if any("test_strict" in state for state in states):
        strict, strict_folds = pool_folds(states, seed=seed, side=side, key="test_strict")
        metrics["test_strict"] = {**strict, "method": strict["method"] + "; real opacities of unknown "
                                  "nature counted as false regions and scoring the study"}
        metrics["folds_strict"] = [f for f, state in zip(strict_folds, states, strict=True) if "test_strict" in state]
    return metrics


def pool_folds(results: list[dict[str, Any]], *, seed: int, side: int,
                key: str = "test") -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Pooled leave-one-background-out metrics: each fold's test set scored by its own model and
    calibrated by its own validation fit, then pooled; and each fold's own figures. ``key`` picks
    the scoring (``test_strict`` where a fold has it: unknown opacities counted, else ``test``).
    The pooled FROC also breaks the sensitivity at 1 false region per image down by the nodules'
    contrast and diameter (``by_band_at_1``; radii on a ``side`` grid)."""
    probs, labels, images, per_fold = [], [], [], []
    ops: list[float] = []
    nodules: list[tuple[float, float]] | None = []
    for state in results:
        cal = Calibration.from_json(state["calibration"])
        scored = Scored.from_json(state.get(key, state["test"]))
        if scored.nodules is None or nodules is None:
            nodules = None  # a fold kept by an older version: no breakdown
        else:
            nodules.extend(n for ns in scored.nodules for n in ns)
        p = cal.probability(scored.logits)
        probs.append(p)
        labels.append(scored.labels)
        ops.append(cal.operating_point)
        fold_images = [ImageDetections(cal_scores(im.lesion_scores, cal), cal_scores(im.false_scores, cal))
                       for im in scored.images]
        images.extend(fold_images)
        pred = p >= cal.operating_point
        y = scored.labels.astype(bool)
        froc = froc_sensitivities(fold_images) if any(im.lesion_scores.size for im in fold_images) else {}
        per_fold.append({"background": state["background"], "n": int(len(y)), "auroc": round(auroc(p, y), 4),
                         "sensitivity": round(float(pred[y].mean()), 4),
                         "specificity": round(float((~pred[~y]).mean()), 4),
                         "froc_1": round(froc.get(1.0, 0.0), 4), "seconds": state["seconds"]})
        if "trained_on" in state:  # a learning-curve run: the real backgrounds this fold's model saw
            per_fold[-1]["trained_on"] = state["trained_on"]
    p_all, y_all = np.concatenate(probs), np.concatenate(labels)
    # Each fold's probabilities are on its own calibrated scale; the pooled operating-point figures
    # apply each fold's own operating point.
    positive = np.concatenate([pr >= op for pr, op in zip(probs, ops, strict=True)])
    study = binary_metrics(p_all, y_all, float(np.median(ops)), seed=seed).to_json()
    study.update({**decision_rates(positive, y_all).to_json(), "threshold": "each fold's own operating point"})
    pooled = {"study": study, "froc": _froc_summary(images, nodules, side, seed=seed),
              "method": "leave one real background out; test nodules by insertion model B at source resolution"}
    return pooled, per_fold
