"""Predictors: turn model-input tensors into logits and saliency maps.

``Predictor`` is the Protocol the pipeline depends on; ``TorchPredictor`` is the real one (MONAI
network + weights from a bundle, eval mode, batched, GPU when asked). Tests may inject their own.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from monai.visualize import GradCAM

from ..errors import ModelError
from .card import ModelCard, load_card
from .network import build_network

__all__ = ["Prediction", "Predictor", "TorchPredictor", "resolve_device"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Prediction:
    """One image's raw output.

    ``logits``: float32 (n_findings,), in the card's finding order. ``saliency``: float32
    (n_findings, H, W) on the model input grid, each map scaled to [0, 1], or ``None``.
    """

    logits: np.ndarray
    saliency: np.ndarray | None

    def __post_init__(self) -> None:
        if self.logits.ndim != 1:
            raise ValueError(f"logits must be 1-D, not shape {self.logits.shape}")
        if self.saliency is not None and (
            self.saliency.ndim != 3 or self.saliency.shape[0] != self.logits.shape[0]
        ):
            raise ValueError("saliency must be (n_findings, H, W) matching logits")


class Predictor(Protocol):
    card: ModelCard

    def predict(self, batch: torch.Tensor, *, explain: bool = True) -> list[Prediction]:
        """``batch``: float32 (N, 1, H, W) model inputs → one :class:`Prediction` per image."""
        ...


def resolve_device(device: str) -> torch.device:
    """``auto`` → the first CUDA device when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"device {device} was asked for but no CUDA device is available")
    return torch.device(device)


class TorchPredictor:
    """A bundle's network with its weights, ready for inference (thread-safe)."""

    def __init__(self, card: ModelCard, *, device: str = "auto") -> None:
        self.card = card
        self.device = resolve_device(device)
        network = build_network(card.network_class, card.network_args)
        try:
            state = torch.load(card.weights_path, map_location="cpu", weights_only=True)
            network.load_state_dict(state)
        except FileNotFoundError:
            raise ModelError(f"model {card.ref}: weights file models/{card.weights_file} is missing") from None
        except (RuntimeError, KeyError, ValueError) as exc:
            raise ModelError(f"model {card.ref}: weights do not fit the network ({type(exc).__name__})") from None
        self.network = network.to(self.device).eval()
        for parameter in self.network.parameters():
            parameter.requires_grad_(False)
        self._cam = GradCAM(nn_module=self.network, target_layers=card.saliency_layer)
        self._lock = threading.Lock()
        logger.info("loaded model %s on %s", card.ref, self.device)

    @classmethod
    def from_bundle(cls, bundle_dir: Path, *, device: str = "auto") -> TorchPredictor:
        return cls(load_card(bundle_dir), device=device)

    def predict(self, batch: torch.Tensor, *, explain: bool = True) -> list[Prediction]:
        if batch.ndim != 4 or batch.shape[1] != 1:
            raise ValueError(f"batch must be (N, 1, H, W), not {tuple(batch.shape)}")
        x = batch.to(self.device, dtype=torch.float32)
        channels = [f.channel for f in self.card.findings]
        with self._lock:
            with torch.inference_mode():
                logits = self.network(x).float().cpu().numpy()[:, channels]
            maps = None
            if explain:
                maps = np.stack(
                    [self._cam(x.detach().clone().requires_grad_(True), class_idx=c).detach().float().cpu().numpy()[:, 0] for c in channels],
                    axis=1,
                ).astype(np.float32)
        return [
            Prediction(logits=logits[i].astype(np.float32), saliency=None if maps is None else maps[i])
            for i in range(logits.shape[0])
        ]
