"""Predictors: turn model-input tensors into logits and saliency maps.

``Predictor`` is the Protocol the pipeline depends on; ``TorchPredictor`` is the real one (MONAI
network + weights from a bundle, eval mode, batched, GPU when asked; saliency by MONAI's occlusion
sensitivity or GradCAM, as the card says). Tests may inject their own.

Inference path. On the CPU: fp32, MONAI's own ``OcclusionSensitivity`` (one image at a time), as
the model was validated. On a CUDA device: bf16 autocast (``precision="auto"``) and channels-last
weights, inputs copied through pinned host memory with non-blocking copies, and occlusion
sensitivity computed for the whole batch at once (:func:`occlusion_maps`, the same windows and
averaging as MONAI's, checked against it in the tests). ``compile=True`` wraps the network in
``torch.compile`` and compiles every batch shape in ``batch_sizes`` at construction (never on the
request path); batches are then padded up to the next of those shapes.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch
from monai.visualize import GradCAM, OcclusionSensitivity

from ..errors import ModelError
from .card import ModelCard, load_card
from .network import build_network

__all__ = ["Precision", "Prediction", "Predictor", "TorchPredictor", "occlusion_maps", "occlusion_windows",
           "resolve_device"]

Precision = Literal["auto", "fp32", "bf16"]
#: Batch shapes compiled by default when ``compile=True`` (requests are padded up to one of them).
DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)
#: Occluded copies per network call: at most this many input pixels (28x28: 21,400 images).
_OCCLUSION_PIXELS_PER_CALL = 1 << 24

logger = logging.getLogger(__name__)


def load_weights(network: torch.nn.Module, card: ModelCard) -> None:
    """Load the bundle's state dict (``weights_only``) into ``network``; ModelError names what is wrong."""
    try:
        state = torch.load(card.weights_path, map_location="cpu", weights_only=True)
        network.load_state_dict(state)
    except FileNotFoundError:
        raise ModelError(f"model {card.ref}: weights file models/{card.weights_file} is missing") from None
    except (RuntimeError, KeyError, ValueError) as exc:
        raise ModelError(f"model {card.ref}: weights do not fit the network ({type(exc).__name__})") from None

# MONAI 1.6's occlusion sensitivity indexes with a list; torch warns about it on every call. Ignored
# for the whole process as well as around the call: warnings.catch_warnings() swaps a process-global
# filter list, so in the service's screening threads one thread's exit can undo another's filter.
warnings.filterwarnings("ignore", message="Using a non-tuple sequence", category=UserWarning)


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
    if device != "cpu" and re.fullmatch(r"cuda(:\d+)?", device) is None:
        raise ModelError(f"device {device!r} is not one of auto, cpu, cuda or cuda:N")
    resolved = torch.device(device)
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise ModelError(f"device {device} was asked for but there are {torch.cuda.device_count()} CUDA device(s)")
    return resolved


def occlusion_windows(size: tuple[int, int], mask_size: int, overlap: float) -> list[tuple[int, int]]:
    """Top-left corners of the occluded squares, as MONAI's sliding window places them.

    The interval is ``int(mask_size * (1 - overlap))`` (at least 1) in each axis; the last window
    in each axis is moved back so that it ends on the image edge (MONAI ``dense_patch_slices``).
    """
    starts = []
    for side in size:
        m = min(mask_size, side)
        interval = side if m == side else max(1, int(m * (1 - overlap)))
        count = next((d + 1 for d in range(math.ceil(side / interval)) if d * interval + m >= side), 1)
        starts.append([min(d * interval, side - m) for d in range(count)])
    return [(r, c) for r in starts[0] for c in starts[1]]


def occlusion_maps(
    forward: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    *,
    mask_size: int,
    overlap: float,
    max_images_per_call: int | None = None,
) -> torch.Tensor:
    """Occlusion sensitivity of a whole batch at once (MONAI ``mean_img`` mode, constant blending).

    Every image is copied once per window with that ``mask_size`` square set to the image's
    mean; each output pixel gets the mean of the network outputs of the windows that cover it.
    This is what ``monai.visualize.OcclusionSensitivity(mode="mean_img", activate=False)`` gives
    for one image, for N images in as few network calls as ``max_images_per_call`` allows.

    Parameters
    ----------
    forward
        The network: float (B, C, H, W) → (B, K) outputs.
    x
        float (N, C, H, W) inputs.

    Returns
    -------
    torch.Tensor
        float32 (N, K, H, W) on ``x``'s device: the outputs with each pixel occluded.
    """
    n, _, h, w = x.shape
    m_r, m_c = min(mask_size, h), min(mask_size, w)
    corners = occlusion_windows((h, w), mask_size, overlap)
    masks = torch.zeros((len(corners), h, w), dtype=torch.bool, device=x.device)
    for i, (r, c) in enumerate(corners):
        masks[i, r:r + m_r, c:c + m_c] = True
    weights = masks.to(torch.float32)
    coverage = weights.sum(0)
    means = x.mean(dim=(1, 2, 3))
    per_call = max_images_per_call or max(1, _OCCLUSION_PIXELS_PER_CALL // (h * w))
    outputs = []
    images_per_chunk = max(1, per_call // len(corners))
    for start in range(0, n, images_per_chunk):
        xs = x[start:start + images_per_chunk]
        occluded = torch.where(masks[None, :, None], means[start:start + images_per_chunk, None, None, None, None],
                               xs[:, None])
        flat = occluded.reshape(-1, *x.shape[1:])
        out = forward(flat).float()
        outputs.append(out.reshape(xs.shape[0], len(corners), -1))
    per_window = torch.cat(outputs)  # (N, windows, K)
    return torch.einsum("nwk,whv->nkhv", per_window, weights) / coverage


class TorchPredictor:
    """A bundle's network with its weights, ready for inference (thread-safe).

    Parameters
    ----------
    card
        The model card (network, weights, saliency method).
    device
        ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
    precision
        ``auto``: bf16 autocast on CUDA, fp32 on the CPU; or ``fp32`` / ``bf16`` (CUDA only).
    compile
        Wrap the network in ``torch.compile`` and compile ``batch_sizes`` now (CUDA only).
    batch_sizes
        The batch shapes compiled when ``compile`` is set; larger batches are split.
    batched_occlusion
        Occlusion sensitivity for the whole batch in a few network calls (:func:`occlusion_maps`)
        instead of MONAI's one image at a time; ``None``: on CUDA only.
    """

    def __init__(self, card: ModelCard, *, device: str = "auto", precision: Precision = "auto",
                 compile: bool = False, batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
                 batched_occlusion: bool | None = None) -> None:
        self.card = card
        self.device = resolve_device(device)
        cuda = self.device.type == "cuda"
        if precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be auto, fp32 or bf16, not {precision!r}")
        if precision == "bf16" and not cuda:
            raise ValueError("bf16 precision needs a CUDA device; the CPU runs fp32")
        if compile and not cuda:
            raise ValueError("compile=True is for CUDA devices; the CPU runs the eager network")
        self.precision: Literal["fp32", "bf16"] = "bf16" if precision == "bf16" or (precision == "auto" and cuda) \
            else "fp32"
        self.batch_sizes = tuple(sorted({int(b) for b in batch_sizes}))
        if not self.batch_sizes or self.batch_sizes[0] < 1:
            raise ValueError("batch_sizes must be positive")
        network = build_network(card.network_class, card.network_args)
        load_weights(network, card)
        self.network = network.to(self.device).eval()
        if cuda:
            self.network = self.network.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        for parameter in self.network.parameters():
            parameter.requires_grad_(False)
        self._forward: Callable[[torch.Tensor], torch.Tensor] = self.network
        self.compiled = compile
        if compile:
            self._forward = torch.compile(self.network, dynamic=False)
        spec = card.saliency
        self._cam = (
            GradCAM(nn_module=self.network, target_layers=spec.layer or "") if spec.method == "gradcam" else None
        )
        # MONAI's own occlusion on the CPU (the validated path); the batched one on CUDA.
        self._batched = spec.method == "occlusion" and (cuda if batched_occlusion is None else batched_occlusion)
        self._occlusion = (
            OcclusionSensitivity(nn_module=self.network, mask_size=spec.mask_size, overlap=spec.overlap,
                                 mode="mean_img", n_batch=1024, activate=False, verbose=False)
            if spec.method == "occlusion" and not self._batched else None
        )
        self._lock = threading.Lock()
        self.warmup_seconds = 0.0
        if compile:
            self.warm_up()
        logger.info("loaded model %s on %s (%s%s)", card.ref, self.device, self.precision,
                    ", compiled" if compile else "")

    @classmethod
    def from_bundle(cls, bundle_dir: Path, *, device: str = "auto", precision: Precision = "auto",
                    compile: bool = False, batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES) -> TorchPredictor:
        return cls(load_card(bundle_dir), device=device, precision=precision, compile=compile,
                   batch_sizes=batch_sizes)

    def warm_up(self, *, explain: bool = True) -> float:
        """Run every batch shape once (compiling them when ``compile`` is set); returns seconds."""
        start = time.perf_counter()
        for size in self.batch_sizes:
            self.predict(torch.zeros(size, 1, *self.card.input_spec.size), explain=explain)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.warmup_seconds = time.perf_counter() - start
        return self.warmup_seconds

    def predict(self, batch: torch.Tensor, *, explain: bool = True) -> list[Prediction]:
        if batch.ndim != 4 or batch.shape[1] != 1:
            raise ValueError(f"batch must be (N, 1, H, W), not {tuple(batch.shape)}")
        channels = [f.channel for f in self.card.findings]
        with self._lock:
            x = self._to_device(batch)
            if self._cam is not None:
                with torch.inference_mode(), self._autocast():
                    logits_t = self._run(x)[:, channels]
                logits = logits_t.cpu().numpy()
                maps = self._gradcam(x, channels) if explain else None
            elif self._batched:
                with torch.inference_mode(), self._autocast():
                    logits_t = self._run(x)[:, channels]
                    drop = None
                    if explain:
                        occluded = occlusion_maps(self._run, x, mask_size=self.card.saliency.mask_size,
                                                  overlap=self.card.saliency.overlap)[:, channels]
                        drop = (logits_t[:, :, None, None] - occluded).clamp_(min=0.0)
                        peak = drop.amax(dim=(2, 3), keepdim=True)
                        drop = torch.where(peak > 0, drop / peak.clamp(min=torch.finfo(torch.float32).tiny),
                                           torch.zeros_like(drop))
                logits = logits_t.cpu().numpy()
                maps = drop.cpu().numpy() if drop is not None else None
            else:
                with torch.inference_mode():
                    logits = self._run(x)[:, channels].numpy()
                maps = self._monai_occlusion(x, logits, channels) if explain else None
        return [
            Prediction(logits=logits[i].astype(np.float32),
                       saliency=None if maps is None else maps[i].astype(np.float32))
            for i in range(logits.shape[0])
        ]

    # -- the inference path ------------------------------------------------------------------------
    def _to_device(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch.to(dtype=torch.float32)
        if self.device.type != "cuda":
            return x
        if x.device.type == "cpu":
            x = x.pin_memory().to(self.device, non_blocking=True)
        else:
            x = x.to(self.device)
        return x.contiguous(memory_format=torch.channels_last)

    def _autocast(self) -> contextlib.AbstractContextManager[object]:
        if self.precision == "bf16":
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        """float32 (N, K) outputs; compiled networks see only the batch shapes they were built for."""
        if not self.compiled:
            return self._forward(x).float()
        return torch.cat([self._forward(chunk).float()[:n] for chunk, n in self._padded(x)])

    def _padded(self, x: torch.Tensor) -> Iterator[tuple[torch.Tensor, int]]:
        largest = self.batch_sizes[-1]
        for start in range(0, x.shape[0], largest):
            chunk = x[start:start + largest]
            n = chunk.shape[0]
            size = next(b for b in self.batch_sizes if b >= n)
            if size > n:
                pad = chunk[-1:].expand(size - n, *chunk.shape[1:])
                chunk = torch.cat([chunk, pad]).contiguous(memory_format=torch.channels_last)
            yield chunk, n

    # -- saliency ----------------------------------------------------------------------------------
    def _gradcam(self, x: torch.Tensor, channels: list[int]) -> np.ndarray:
        assert self._cam is not None
        maps = np.stack(
            [self._cam(x.detach().clone().requires_grad_(True), class_idx=c).detach().float().cpu().numpy()[:, 0]
             for c in channels],
            axis=1,
        )
        return _scaled(maps)

    def _monai_occlusion(self, x: torch.Tensor, logits: np.ndarray, channels: list[int]) -> np.ndarray:
        """float32 (N, n_findings, H, W), each map scaled so its maximum is 1 (all zero if flat)."""
        assert self._occlusion is not None
        rows = []
        with torch.inference_mode(), warnings.catch_warnings():
            # MONAI 1.6 indexes with a list internally; torch warns about it on every call.
            warnings.filterwarnings("ignore", message="Using a non-tuple sequence", category=UserWarning)
            for i in range(x.shape[0]):
                occluded, _ = self._occlusion(x[i:i + 1])
                drop = logits[i][:, None, None] - occluded[0, channels].float().cpu().numpy()
                rows.append(np.clip(drop, 0.0, None))
        return _scaled(np.stack(rows))


def _scaled(maps: np.ndarray) -> np.ndarray:
    peak = maps.max(axis=(2, 3), keepdims=True)
    scaled: np.ndarray = np.divide(maps, peak, out=np.zeros_like(maps), where=peak > 0).astype(np.float32)
    return scaled
