"""``secondreader evaluate BUNDLE``: recompute a shipped bundle's metrics from its weights.

A classification bundle is scored on a split (``--data``) of a MedMNIST ``.npz`` or of a manifest of
DICOM files (CSV or JSON); where the manifest marks the finding (boxes, masks), the report adds how
often the served heatmap's peak falls on the mark (the pointing game). A localisation bundle is scored
with the config that trained it (``--config``): on the generated-chest test (its card's
``test_generated`` figures, recomputed) and on each real background's test images (model-B nodules),
which the shipped model *trained on*: those show how far the recipe gets on anatomy it has seen, not
held-out performance (the card's leave-one-background-out figures are that).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from scipy import ndimage

from ..model.card import load_card
from ..model.dense import DensePredictor
from ..model.predictor import TorchPredictor
from ..scoring.calibration import CALIBRATION_METHODS
from ..stats import wilson_interval
from .common import calibrate_on_validation
from .config import OperatingPointConfig, load_config
from .data import Split, load_manifest, load_medmnist
from .metrics import binary_metrics
from .train import predict_inputs, predict_logits

if TYPE_CHECKING:
    from ..preprocessing import InputSpec
    from .config import LesionConfig
    from .dense.data import EvalSet
    from .dense.evaluate import Scored
    from .lesions import RealBackground

__all__ = ["evaluate_bundle", "evaluate_dense_bundle", "heatmap_peak", "saliency_pointing", "train_serve_gap"]


def evaluate_bundle(bundle: Path, data: Path, *, split: str = "test", device: str = "cpu",
                    recalibrate: str | None = None) -> dict[str, Any]:
    """Metrics of the bundle's first finding on ``split``, at the bundle's operating point. With
    ``recalibrate`` (platt, temperature, isotonic) the report adds ``recalibrated``: the same
    logits calibrated by that method fitted on the data's ``val`` split, at the operating point the
    bundle's rule (Youden, or a sensitivity) chooses there, so calibrations can be compared on one
    trained model without retraining."""
    if recalibrate is not None and recalibrate not in CALIBRATION_METHODS:
        raise ValueError(f"unknown calibration method {recalibrate!r}: one of {', '.join(CALIBRATION_METHODS)}")
    card = load_card(bundle)
    if card.saliency.method == "dense":
        raise ValueError(f"{card.ref} is a localisation model: evaluate it with --config (the config that "
                         "trained it), not --data")
    predictor = TorchPredictor(card, device="cpu" if device == "auto" else device)
    finding = card.findings[0]
    names = (split, "val") if recalibrate is not None else (split,)
    if data.suffix.lower() == ".npz":
        splits = load_medmnist(data)
    else:
        splits = load_manifest(data, finding=finding.code, size=card.input_spec.size, splits=names)
    chosen = splits[split]
    logits = predict_logits(predictor.network, chosen.images, card.input_spec)
    p = finding.calibration.probability(logits)
    metrics = binary_metrics(p, chosen.labels, finding.operating_point).to_json()
    report = {"model": card.ref, "finding": finding.code, "split": split, **metrics}
    if recalibrate is not None:
        if split == "val":
            raise ValueError("--recalibrate fits on the val split: evaluate another split with it")
        val = splits["val"]
        rule = OperatingPointConfig.from_description(finding.operating_point_method)
        cal, _p, op, _urgent = calibrate_on_validation(
            predict_logits(predictor.network, val.images, card.input_spec), val.labels, rule, recalibrate)
        report["recalibrated"] = {"calibration": {**cal.to_json(), "fitted_on": "val"}, "operating_point": round(op, 6),
                                  "operating_point_method": f"{rule.describe()} on val",
                                  **binary_metrics(cal.probability(logits), chosen.labels, op).to_json()}
    if chosen.annotated is not None:
        report["saliency_pointing"] = saliency_pointing(predictor, chosen)
    return report


def heatmap_peak(heat: np.ndarray) -> tuple[int, int] | None:
    """The cell where a heatmap peaks, or None for an empty (all-zero) map; where several cells tie
    (a flat top), the tied cell nearest to their centre, not the first in memory order."""
    top = float(heat.max())
    if top <= 0:
        return None
    tied = np.argwhere(heat >= top)
    centre = tied.mean(axis=0)
    row, col = tied[int(np.argmin(((tied - centre) ** 2).sum(axis=1)))]
    return int(row), int(col)


def _near_mark(mask: np.ndarray) -> np.ndarray:
    """The mark grown by one model-grid cell in every direction (the pointing game's tolerance)."""
    return np.asarray(ndimage.binary_dilation(mask, structure=np.ones((3, 3), bool)))


def saliency_pointing(predictor: TorchPredictor, split: Split, *, batch: int = 64) -> dict[str, Any]:
    """The pointing game on the positive images whose finding was marked: the share whose served
    heatmap (the bundle's saliency, first finding) peaks on the mark or within one model-grid cell
    of it, with a Wilson 95% interval; an empty heatmap is a miss. ``chance_rate`` is what a peak
    placed at random would score (the marks' mean share of the grid, grown by that cell). Heatmaps
    of negatives and unmarked positives are not scored."""
    assert split.masks is not None and split.annotated is not None
    chosen = np.nonzero(split.annotated & (split.labels == 1))[0]
    hits, chance = 0, 0.0
    for start in range(0, len(chosen), batch):
        idx = chosen[start:start + batch]
        x = predict_inputs(split.images[torch.from_numpy(idx)], predictor.card.input_spec)
        for k, prediction in zip(idx, predictor.predict(x, explain=True), strict=True):
            assert prediction.saliency is not None
            near = _near_mark(split.masks[k])
            chance += float(near.mean())
            peak = heatmap_peak(prediction.saliency[0])
            hits += peak is not None and bool(near[peak])
    n = len(chosen)
    return {"n": n, "hits": hits, "hit_rate": round(hits / n, 4) if n else None,
            "hit_rate_ci95": [round(v, 4) for v in wilson_interval(hits, n)] if n else None,
            "chance_rate": round(chance / n, 4) if n else None,
            "method": "pointing game: the heatmap's peak on the marked region or within one model-grid cell of it, "
                      "positive images with a box or mask; an empty heatmap misses"}



def evaluate_dense_bundle(bundle: Path, config: Path) -> dict[str, Any]:
    """A localisation bundle's generated-chest test recomputed, and its figures on the test images of
    the real backgrounds it trained on (each with the FROC's sensitivity by nodule contrast and size)."""
    from .dense.data import background_test_set, generated_test_set, load_backgrounds
    from .dense.evaluate import Calibration, localisation_metrics, score_set

    card = load_card(bundle)
    if card.saliency.method != "dense":
        raise ValueError(f"{card.ref} is not a localisation model: evaluate it with --data")
    cfg = load_config(config)
    lc = cfg.lesions
    if lc is None or cfg.name != card.name:
        raise ValueError(f"{config} is not the lesion-insertion config of {card.name}")
    predictor = DensePredictor(card, device="cpu")
    network, recipe = predictor.network, predictor.recipe  # the served map recipe, not a second copy of it
    finding = card.findings[0]
    cal = Calibration(finding.calibration, finding.operating_point, finding.urgent_point)
    spec, side = card.input_spec, lc.input_size

    def score(data: EvalSet) -> Scored:
        return score_set(network, data, spec, lc, recipe)

    def metrics(scored: Scored) -> dict[str, Any]:
        return localisation_metrics(scored, cal, seed=cfg.seed, side=side)

    backgrounds = load_backgrounds(lc, cfg.data.path)
    seen, gap = {}, {}
    for f, bg in enumerate(backgrounds):
        if bg.real_lesions:
            continue
        test = background_test_set(lc, backgrounds, f, spec, seed=cfg.seed)
        served = score(test)  # scored once: its metrics, and its negatives' largest logits for the gap
        seen[bg.id] = metrics(served)
        gap[bg.id] = train_serve_gap(score, lc, bg, test, served, spec, seed=cfg.seed)
    return {"model": card.ref, "finding": finding.code,
            "test_generated": metrics(score(generated_test_set(lc, spec, seed=cfg.seed))),
            "trained_on_backgrounds": seen,
            "train_serve_gap": gap,
            "note": "trained_on_backgrounds: the held-out folds' test images of each real background, scored by "
                    "the shipped model, which trained on those backgrounds (not held-out figures). "
                    "train_serve_gap: the same background's pictures as training makes them beside its served "
                    "test images, without nodules: fine detail (mean absolute difference of neighbouring "
                    "pixels of the model input) and the map's largest logit"}


def train_serve_gap(score: Callable[[EvalSet], Scored], lc: LesionConfig, background: RealBackground,
                    served: EvalSet, served_scores: Scored, spec: InputSpec, *, seed: int,
                    count: int = 24) -> dict[str, Any]:
    """How the pictures training makes of ``background`` differ from its served images (``served``,
    its test set, as ``score`` scored it: the negatives are used): their fine detail, and the median
    over pictures of the map's largest logit (a region of unknown label left out, as in scoring).
    Training pictures are taken as the pool holds them (geometry and density), before the blur and
    noise each training step adds. A model sees on duty what it learned on only if both are close; a
    higher largest logit on served negatives is false regions that training never showed it."""
    import numpy as np

    from .dense.data import build_pool, pool_eval_set
    from .dense.inputs import standardise

    plain = lc.model_copy(update={"positive_fraction": 1e-9, "distractor_fraction": 0.0})
    pool = build_pool([background], plain, per_background=count, generated=0, seed=seed, stream=77)
    training = pool_eval_set(pool, np.ones(len(pool), dtype=bool))
    negatives = served_scores.labels == 0

    def detail(x: torch.Tensor) -> float:
        return float((x[..., :, 1:] - x[..., :, :-1]).abs().mean())

    return {"fine_detail": {"training": round(detail(standardise(training.inputs, spec)), 4),
                            "served": round(detail(served.inputs[torch.from_numpy(negatives)]), 4)},
            "largest_logit_median": {"training": round(float(np.median(score(training).logits)), 3),
                                     "served": round(float(np.median(served_scores.logits[negatives])), 3)}}
