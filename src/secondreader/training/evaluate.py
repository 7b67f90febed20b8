"""``secondreader evaluate BUNDLE --data NPZ``: recompute a shipped bundle's metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..model.card import load_card
from ..model.predictor import TorchPredictor
from ..scoring.calibration import calibrated_probability
from .data import load_medmnist
from .metrics import binary_metrics
from .train import predict_logits

__all__ = ["evaluate_bundle"]


def evaluate_bundle(bundle: Path, data: Path, *, split: str = "test", device: str = "cpu") -> dict[str, Any]:
    """Metrics of the bundle's first finding on ``split``, at the bundle's operating point."""
    card = load_card(bundle)
    if card.saliency.method == "dense":
        raise ValueError(f"{card.ref} is a localisation model: its metrics come from its training run "
                         "(leave one background out), reproduced by `secondreader train` with its config")
    predictor = TorchPredictor(card, device="cpu" if device == "auto" else device)
    finding = card.findings[0]
    chosen = load_medmnist(data)[split]
    logits = predict_logits(predictor.network.cpu(), chosen.images, card.input_spec)
    p = calibrated_probability(logits, finding.calibration_a, finding.calibration_b)
    metrics = binary_metrics(p, chosen.labels, finding.operating_point).to_json()
    return {"model": card.ref, "finding": finding.code, "split": split, **metrics}
