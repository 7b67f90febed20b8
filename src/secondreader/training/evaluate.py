"""``secondreader evaluate BUNDLE``: recompute a shipped bundle's metrics from its weights.

A classification bundle is scored on a MedMNIST split (``--data``). A localisation bundle is scored
with the config that trained it (``--config``): on the generated-chest test (its card's
``test_generated`` figures, recomputed) and on each real background's test images (model-B nodules),
which the shipped model *trained on*: those show how far the recipe gets on anatomy it has seen, not
held-out performance (the card's leave-one-background-out figures are that).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..model.card import load_card
from ..model.dense import DensePredictor
from ..model.predictor import TorchPredictor
from ..scoring.calibration import calibrated_probability
from .config import load_config
from .data import load_medmnist
from .metrics import binary_metrics
from .train import predict_logits

__all__ = ["evaluate_bundle", "evaluate_dense_bundle"]


def evaluate_bundle(bundle: Path, data: Path, *, split: str = "test", device: str = "cpu") -> dict[str, Any]:
    """Metrics of the bundle's first finding on ``split``, at the bundle's operating point."""
    card = load_card(bundle)
    if card.saliency.method == "dense":
        raise ValueError(f"{card.ref} is a localisation model: evaluate it with --config (the config that "
                         "trained it), not --data")
    predictor = TorchPredictor(card, device="cpu" if device == "auto" else device)
    finding = card.findings[0]
    chosen = load_medmnist(data)[split]
    logits = predict_logits(predictor.network.cpu(), chosen.images, card.input_spec)
    p = calibrated_probability(logits, finding.calibration_a, finding.calibration_b)
    metrics = binary_metrics(p, chosen.labels, finding.operating_point).to_json()
    return {"model": card.ref, "finding": finding.code, "split": split, **metrics}


def evaluate_dense_bundle(bundle: Path, config: Path) -> dict[str, Any]:
    """A localisation bundle's generated-chest test recomputed, and its figures on the test images of
    the real backgrounds it trained on (each with the FROC's sensitivity by nodule contrast and size)."""
    from .localisation import (
        Calibration,
        background_test_set,
        generated_test_set,
        load_backgrounds,
        localisation_metrics,
        score_set,
    )

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
    cal = Calibration(finding.calibration_a, finding.calibration_b, finding.operating_point, finding.urgent_point)
    spec, side = card.input_spec, lc.input_size

    def metrics(data: Any) -> dict[str, Any]:
        return localisation_metrics(score_set(network, data, spec, lc, recipe), cal, seed=cfg.seed, side=side)

    backgrounds = load_backgrounds(lc, cfg.data.path)
    seen = {bg.id: metrics(background_test_set(lc, backgrounds, f, spec, seed=cfg.seed))
            for f, bg in enumerate(backgrounds) if not bg.real_lesions}
    return {"model": card.ref, "finding": finding.code,
            "test_generated": metrics(generated_test_set(lc, spec, seed=cfg.seed)),
            "trained_on_backgrounds": seen,
            "note": "trained_on_backgrounds: the held-out folds' test images of each real background, scored by "
                    "the shipped model, which trained on those backgrounds (not held-out figures)"}
