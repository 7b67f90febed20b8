"""Dense (localisation) models: the network outputs a logit per pixel and finding.

``DensePredictor`` implements the ``Predictor`` protocol for bundles whose card says
``saliency.method == "dense"`` (``cxr-nodule``): the heatmap is the network's own probability map
(the sigmoid of its logits smoothed by a small Gaussian), not a saliency method; the study-level
logit is the maximum of the smoothed logits (calibrated by the card's calibration like any
other finding), so confident maps do not tie at a probability of 1.0. Regions
are the parts of the map over the card's ``region_floor`` that peak at or over its
``region_threshold``. :func:`load_predictor` picks the right predictor for any bundle.

Training (:mod:`secondreader.training.dense`) uses :class:`MapRecipe`, :func:`study_logits`
and :func:`map_peaks` too, so the evaluated scores are the served scores (the served heatmap is
the sigmoid of :meth:`MapRecipe.logits`; :func:`probability_maps` is that for a card without
``flip_average``, from raw logits).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from skimage.feature import peak_local_max

from ..errors import ModelError
from ..explain.regions import Region, extract_regions
from .card import ModelCard, load_card
from .network import build_network
from .predictor import Precision, Prediction, Predictor, TorchPredictor, load_weights, resolve_device

__all__ = ["DensePredictor", "MapRecipe", "dense_regions", "gaussian_smooth", "load_predictor", "map_peaks",
           "predictor_for", "probability_maps", "smoothed_logits", "study_logits"]

logger = logging.getLogger(__name__)


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def gaussian_smooth(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """float (N, 1, H, W) images, each smoothed by a Gaussian of ``sigma`` pixels (separable: rows,
    then columns; radius ceil(3 sigma), at least 1; reflect padding); same shape. The package's one
    Gaussian: the served maps (:func:`smoothed_logits`) and training's blur augmentation use it.

    Not MONAI's ``GaussianFilter``: that pads with zeros and truncates at another radius (the served
    maps' borders would move by up to half a logit), and even its ``separable_filtering`` with this
    kernel and reflect padding differs in the last bits, which changes what a seeded fit produces."""
    k = _gaussian_kernel(sigma).to(x.device)
    r = k.numel() // 2
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))


def smoothed_logits(logit_maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """float (N, C, H, W) logits, each channel smoothed by a Gaussian of ``sigma`` pixels
    (:func:`gaussian_smooth`); float32, same shape. Scores are taken here, before the sigmoid:
    a confident network's probabilities saturate at 1.0 and would tie, its logits do not."""
    x = logit_maps.float()
    if sigma <= 0:
        return x
    n, c, h, w = x.shape
    return gaussian_smooth(x.reshape(n * c, 1, h, w), sigma).reshape(n, c, h, w)


@dataclass(frozen=True, slots=True)
class MapRecipe:
    """How a dense network's raw output becomes the scored map: its logits, averaged with the
    mirror image's (the network applied to the left-right flipped input, flipped back) when
    ``flip_average``, then smoothed by a Gaussian of ``sigma`` pixels. Serving
    (:class:`DensePredictor`) and training's evaluation both use :meth:`logits`, so the
    evaluated maps are the served maps."""

    sigma: float = 1.0
    flip_average: bool = False

    def logits(self, network: torch.nn.Module, inputs: torch.Tensor,
               channels: Sequence[int] | slice = slice(None)) -> torch.Tensor:
        """float (N, 1, H, W) inputs → smoothed logit maps float32 (N, C, H, W) of ``channels``
        (the caller holds inference mode). With ``flip_average`` the input and its mirror go
        through the network as one batch of 2N (eval-mode batch norm keeps them independent; in
        training mode it would mix them, so that is refused)."""
        if not self.flip_average:
            return smoothed_logits(network(inputs)[:, channels], self.sigma)
        if network.training:
            raise ValueError("flip-averaged maps need the network in eval mode: batch statistics would mix "
                             "an image with its mirror")
        both = network(torch.cat([inputs, torch.flip(inputs, dims=(-1,))]))[:, channels]
        n = inputs.shape[0]
        return smoothed_logits(0.5 * (both[:n] + torch.flip(both[n:], dims=(-1,))), self.sigma)


def probability_maps(logit_maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """float (N, C, H, W) logits → the heatmaps: the sigmoid of :func:`smoothed_logits`; float32,
    same shape, in [0, 1]."""
    return torch.sigmoid(smoothed_logits(logit_maps, sigma))


def study_logits(smoothed: torch.Tensor | np.ndarray) -> np.ndarray:
    """Each map's maximum smoothed logit: (N, C, H, W) → float32 (N, C). The study score before
    calibration; the heatmap's maximum is its sigmoid."""
    return torch.as_tensor(smoothed).float().amax(dim=(-2, -1)).cpu().numpy().astype(np.float32)


def map_peaks(prob_map: np.ndarray, *, floor: float = 0.02, min_distance: int = 3) -> list[tuple[float, float, float]]:
    """Local maxima of one map (float (H, W): probabilities, or smoothed logits with a logit
    ``floor``) at or over ``floor``, as ``(row, col, value)``, strongest first (at least
    ``min_distance`` pixels apart)."""
    peaks = peak_local_max(np.asarray(prob_map, dtype=np.float32), min_distance=min_distance, threshold_abs=floor,
                           exclude_border=False)
    found = [(float(r), float(c), float(prob_map[r, c])) for r, c in peaks]
    return sorted(found, key=lambda p: -p[2])


def dense_regions(heat: np.ndarray, *, finding: str, frame: int, spacing_mm: tuple[float, float] | None,
                  threshold: float, floor: float, max_regions: int = 5) -> list[Region]:
    """Regions of a probability map on the source grid (float32 (rows, cols) in [0, 1]): the
    connected parts at or over ``floor`` whose peak is at or over ``threshold``, strongest first.
    Each region's ``peak`` is relative to the map's maximum, as :func:`extract_regions` gives it."""
    top = float(heat.max()) if heat.size else 0.0
    if top < threshold:
        return []
    regions = extract_regions(heat, finding=finding, frame=frame, spacing_mm=spacing_mm,
                              threshold=floor / top, min_fraction=0.0, max_regions=10_000)
    return [r for r in regions if r.peak * top >= threshold][:max_regions]


class DensePredictor:
    """A dense bundle's network with its weights (thread-safe): logit maps → probability maps."""

    def __init__(self, card: ModelCard, *, device: str = "auto") -> None:
        if card.saliency.method != "dense":
            raise ModelError(f"model {card.ref} is not a dense model")
        self.card = card
        self.device = resolve_device(device)
        try:
            network = build_network(card.network_class, card.network_args, dense=True)
        except (TypeError, ValueError) as exc:
            raise ModelError(f"model {card.ref}: cannot build its network ({exc})") from None
        load_weights(network, card)
        self.network = network.to(self.device).eval()
        for parameter in self.network.parameters():
            parameter.requires_grad_(False)
        self._channels = [f.channel for f in card.findings]
        self.recipe = MapRecipe(card.saliency.smoothing_sigma, card.saliency.flip_average)
        self._lock = threading.Lock()
        logger.info("loaded dense model %s on %s", card.ref, self.device)

    @classmethod
    def from_bundle(cls, bundle_dir: Path, *, device: str = "auto") -> DensePredictor:
        return cls(load_card(bundle_dir), device=device)

    def maps(self, batch: torch.Tensor) -> torch.Tensor:
        """float32 (N, 1, H, W) model inputs → smoothed logit maps (N, n_findings, H, W) on the CPU."""
        if batch.ndim != 4 or batch.shape[1] != 1:
            raise ValueError(f"batch must be (N, 1, H, W), not {tuple(batch.shape)}")
        with self._lock, torch.inference_mode():
            return self.recipe.logits(self.network, batch.to(self.device, dtype=torch.float32), self._channels).cpu()

    def predict(self, batch: torch.Tensor, *, explain: bool = True) -> list[Prediction]:
        maps = self.maps(batch)
        logits = study_logits(maps)
        heat = torch.sigmoid(maps).numpy().astype(np.float32)
        return [Prediction(logits=logits[i], saliency=heat[i] if explain else None) for i in range(len(logits))]


def predictor_for(card: ModelCard, *, device: str = "auto", precision: Precision = "auto",
                  compile: bool = False) -> Predictor:
    """The predictor a card needs: :class:`DensePredictor` for dense cards, else
    :class:`~secondreader.model.predictor.TorchPredictor` (with ``precision`` and ``compile``; the
    dense U-Net runs in fp32, where bf16 measured slower)."""
    if card.saliency.method == "dense":
        return DensePredictor(card, device=device)
    return TorchPredictor(card, device=device, precision=precision, compile=compile)


def load_predictor(bundle_dir: Path, *, device: str = "auto") -> Predictor:
    """:func:`predictor_for` the bundle in ``bundle_dir``."""
    return predictor_for(load_card(bundle_dir), device=device)
