"""What both training recipes share: the classifier's (:mod:`.train`) and the dense localiser's
(:mod:`.dense`, :mod:`.realnodule`).

- the device and hardware a run trains on (:func:`training_device`, :func:`training_hardware`, the
  memory layout), and its progress bar;
- calibration and operating points fitted on validation (:func:`calibrate_on_validation`), and the
  targets that make a model live (:func:`scope_and_mode`);
- the bundle's shared parts: its metadata header, its weights file and SHA-256, its Device UID, and
  the bundle a fine-tuning run starts from (:func:`init_source`).

Imports only downward (model, scoring, this package's config and metrics), so the recipes can
import it and never each other.
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import platform
import uuid
from pathlib import Path
from typing import Any

import monai
import numpy as np
import pydicom
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn

from ..model.card import ModelCard, load_card
from ..model.predictor import resolve_device
from ..scoring.calibration import Calibrator, fit_calibrator
from .config import OperatingPointConfig, TrainConfig
from .metrics import threshold_for_sensitivity, youden_threshold

__all__ = ["bundle_header", "calibrate_on_validation", "device_uid_for", "init_source", "scope_and_mode",
           "state_dict_bytes", "to_layout", "training_device", "training_hardware", "training_memory_format",
           "training_progress", "write_bundle_weights"]

logger = logging.getLogger(__name__)


def training_progress(*extra: ProgressColumn) -> Progress:
    """A run's progress bar, on stderr: stdout carries ``secondreader train``'s JSON line."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    *extra, console=Console(stderr=True), transient=False)


def training_device(device: str, mixed_precision: bool) -> tuple[torch.device, bool]:
    """The device ``schedule.device`` names (``auto``: the first CUDA device when there is one) and
    whether forward passes run in bfloat16 autocast there (CUDA only). Asking for CUDA where there
    is none is an error, not a silent fall back to the CPU."""
    resolved = resolve_device(device)
    if resolved.type == "cuda" and resolved.index is None:
        resolved = torch.device("cuda", torch.cuda.current_device())
    return resolved, resolved.type == "cuda" and mixed_precision


@functools.cache
def _cpu_model() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``), else what :mod:`platform` knows; read once."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            found = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), "")
    except OSError:
        found = ""
    return found or platform.processor() or platform.machine()


def training_memory_format(channels_last: bool) -> torch.memory_format:
    """The memory layout of the training step's network and inputs (``schedule.channels_last``)."""
    return torch.channels_last if channels_last else torch.contiguous_format


def to_layout(network: torch.nn.Module, layout: torch.memory_format, device: torch.device | None = None) -> None:
    """Move ``network`` (in place) to ``layout`` (and ``device``): channels-last for training steps
    with ``schedule.channels_last``, back to the contiguous layout serving uses before it is scored."""
    network.to(device, memory_format=layout)  # type: ignore[call-overload]  # (memory_format: not in torch's stubs)


def training_hardware(device: torch.device, amp: bool, channels_last: bool = False) -> dict[str, str]:
    """What a run trained on, for its bundle: ``machine`` (the CPU, its threads and the device) and
    ``device``. Weights are bit-for-bit repeatable only on the same kind of CPU or GPU."""
    cpu = _cpu_model()
    if device.type == "cuda":
        where = f"{device}, {torch.cuda.get_device_name(device)}, {'bfloat16 autocast' if amp else 'float32'}"
    else:
        where = "cpu, float32"
    if channels_last:
        where += ", channels-last"
    return {"machine": f"{platform.machine()} {torch.get_num_threads()} threads ({cpu}); {where}", "device": where}


def state_dict_bytes(network: torch.nn.Module) -> bytes:
    """``network``'s state dict as a bundle's ``model.pt`` holds it (on the CPU, contiguous)."""
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}, buffer)
    return buffer.getvalue()


def write_bundle_weights(out: Path, weights: bytes) -> str:
    """Make a bundle's folders (configs, models, docs) under ``out`` and write its state dict to
    ``models/model.pt``; returns the weights' SHA-256 (hex)."""
    for folder in ("configs", "models", "docs"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    (out / "models" / "model.pt").write_bytes(weights)
    return hashlib.sha256(weights).hexdigest()


def device_uid_for(name: str, version: str, weights_sha256: str) -> str:
    """The model's Device UID: a ``2.25.`` UUID-derived UID from its name, version and weights, so
    it is the same whenever the same weights are produced and changes with every version.
    (pydicom's ``generate_uid(prefix=None)`` ignores its entropy sources and is random.)"""
    digest = hashlib.sha256("\n".join(["secondreader", name, version, weights_sha256]).encode()).digest()
    return f"2.25.{uuid.UUID(bytes=digest[:16], version=4).int}"


def init_source(cfg: TrainConfig, *, dense: bool = False) -> ModelCard | None:
    """The bundle ``init_from`` names (fine-tuning), checked against the configured network and
    the kind of model (``dense``: a localisation model, trained with a lesion_insertion config).

    Raises
    ------
    ValueError
        When its network class or arguments differ from the config's, or it is the other kind.
    """
    if cfg.init_from is None:
        return None
    from ..errors import ModelError

    try:
        card = load_card(cfg.init_from)
    except ModelError as exc:
        raise ValueError(f"init_from: {exc}") from None
    if card.network_class != cfg.network.class_ or card.network_args != cfg.network.args:
        raise ValueError(f"init_from model {card.ref} has network {card.network_class} {card.network_args}; "
                         "the config's network must be the same to fine-tune it")
    if (card.saliency.method == "dense") != dense:
        kind = "a dense localisation model" if not dense else "a classification model"
        fix = "a lesion_insertion config" if not dense else "a medmnist_npz or manifest config"
        raise ValueError(f"init_from model {card.ref} is {kind}: fine-tune it with {fix}")
    return card


def calibrate_on_validation(logits: np.ndarray, labels: np.ndarray, op_cfg: OperatingPointConfig,
                            method: str = "platt") -> tuple[Calibrator, np.ndarray, float, float]:
    """Calibration (``method``: platt, temperature, isotonic) fitted on validation, then the
    operating point (Youden or a target sensitivity) and the urgent point (the given specificity,
    never below the operating point, nor, with ``urgent_sensitivity``, below the score that keeps that
    share of the positives). Returns ``(calibrator, calibrated probabilities, operating
    point, urgent point)``. A validation split of one class cannot place either point: that is
    refused, naming what it holds."""
    labels = np.asarray(labels)
    positives = int((labels == 1).sum())
    if positives == 0 or positives == len(labels):
        raise ValueError(f"the validation split holds {len(labels)} studies, {positives} of them positive: "
                         "calibration and the operating points need positive and negative studies; give it more "
                         "studies (for lesion insertion: lesions.validation_per_background, validation_generated)")
    try:
        calibrator = fit_calibrator(method, logits, labels)
    except ValueError as exc:
        # A model that ranks validation backwards (tiny data, too few epochs) keeps raw sigmoid
        # probabilities; its card shows the AUROC that says so.
        logger.warning("%s calibration failed (%s); keeping uncalibrated probabilities", method, exc)
        calibrator = Calibrator("platt")
    p = calibrator.probability(logits)
    negatives = np.sort(p[labels == 0])
    if op_cfg.method == "youden":
        operating_point = youden_threshold(p, labels)
    elif op_cfg.method == "specificity":  # a review budget: at most 1 - specificity of the negatives flagged
        k = int(np.ceil(op_cfg.specificity * len(negatives) - 1e-9))
        if k >= len(negatives) or (k > 0 and negatives[k] == negatives[k - 1]):
            # above the k-th lowest negative: a tie at the cut must not flag more than the budget
            operating_point = float(np.nextafter(negatives[min(k, len(negatives)) - 1], np.inf))
        else:
            operating_point = float(negatives[k])
    else:
        operating_point = threshold_for_sensitivity(p, labels, op_cfg.sensitivity)
    at_specificity = negatives[min(len(negatives) - 1, int(np.ceil(op_cfg.urgent_specificity * len(negatives))))]
    urgent_point = float(max(at_specificity, operating_point))
    if op_cfg.urgent_sensitivity is not None:  # about that share of the positives is urgent, no more
        urgent_point = max(urgent_point, threshold_for_sensitivity(p, labels, op_cfg.urgent_sensitivity))
    operating_point = float(np.clip(operating_point, 1e-4, 1 - 1e-4))
    urgent_point = float(np.clip(urgent_point, operating_point, 1 - 1e-4))
    return calibrator, p, operating_point, urgent_point


def scope_and_mode(cfg: TrainConfig, achieved: dict[str, float]) -> dict[str, Any]:
    """The bundle's ``scope`` (from the config) and default ``mode``: ``live`` when every one of the
    config's ``targets`` is reached by the ``achieved`` held-out figures, else ``shadow`` (a model
    without targets is live). The reason names each figure against its target."""
    missed = [name for name, floor in cfg.targets.items() if not achieved.get(name, float("-inf")) >= floor]
    parts = "; ".join(f"{name} {achieved.get(name, float('nan')):.3f} (target {floor:g})"
                      for name, floor in cfg.targets.items())
    reason = ("no targets set" if not cfg.targets else
              ("targets met on held-out data: " if not missed else "targets not met on held-out data: ") + parts)
    out: dict[str, Any] = {"mode": {"default": "shadow" if missed else "live", "reason": reason},
                           "routing": {"enabled": not missed, "reason": reason}}
    if cfg.scope is not None:
        out["scope"] = cfg.scope
    return out


def bundle_header(cfg: TrainConfig, task: str) -> dict[str, Any]:
    """The MONAI bundle metadata fields every secondreader model shares (schema, versions, name)."""
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json",
        "version": cfg.version,
        "changelog": cfg.changelog or {cfg.version: cfg.description},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "pydicom_version": pydicom.__version__,
        "optional_packages_version": {},
        "name": cfg.name,
        "task": f"Chest radiograph {task}: {cfg.data.display_name}",
        "description": cfg.description,
        "authors": "secondreader",
    }
