"""Predictors: turn model-input tensors into logits and saliency maps.

``Predictor`` is the Protocol the pipeline depends on; ``TorchPredictor`` is the real one (MONAI
network + weights from a bundle, eval mode, batched, GPU when asked; saliency by MONAI's occlusion
sensitivity or GradCAM, as the card says). Tests may inject their own.
"""

from __future__ import annotations

import logging
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from monai.visualize import GradCAM, OcclusionSensitivity

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
        spec = card.saliency
        self._cam = (
            GradCAM(nn_module=self.network, target_layers=spec.layer or "") if spec.method == "gradcam" else None
        )
        self._occlusion = (
            OcclusionSensitivity(nn_module=self.network, mask_size=spec.mask_size, overlap=spec.overlap,
                                 mode="mean_img", n_batch=1024, activate=False, verbose=False)
            if spec.method == "occlusion" else None
        )
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
            maps = self._saliency(x, logits, channels) if explain else None
        return [
            Prediction(logits=logits[i].astype(np.float32), saliency=None if maps is None else maps[i])
            for i in range(logits.shape[0])
        ]

    def _saliency(self, x: torch.Tensor, logits: np.ndarray, channels: list[int]) -> np.ndarray:
        """float32 (N, n_findings, H, W), each map scaled so its maximum is 1 (all zero if flat)."""
        if self._cam is not None:
            maps = np.stack(
                [self._cam(x.detach().clone().requires_grad_(True), class_idx=c).detach().float().cpu().numpy()[:, 0]
                 for c in channels],
                axis=1,
            )
        else:
            assert self._occlusion is not None
            rows = []
            with torch.inference_mode(), warnings.catch_warnings():
                # MONAI 1.6 indexes with a list internally; torch warns about it on every call.
                warnings.filterwarnings("ignore", message="Using a non-tuple sequence", category=UserWarning)
                for i in range(x.shape[0]):
                    occluded, _ = self._occlusion(x[i:i + 1])
                    drop = logits[i][:, None, None] - occluded[0, channels].float().cpu().numpy()
                    rows.append(np.clip(drop, 0.0, None))
            maps = np.stack(rows)
        peak = maps.max(axis=(2, 3), keepdims=True)
        scaled: np.ndarray = np.divide(maps, peak, out=np.zeros_like(maps), where=peak > 0).astype(np.float32)
        return scaled
