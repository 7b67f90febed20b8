"""``secondreader train CONFIG``: train, calibrate on validation, evaluate on test, write a bundle.

Reproducible: a fixed seed, deterministic algorithms, and a fixed thread count. Test data is used
once, after every choice (calibration, operating point) was made on the validation split. Trains on
the first CUDA device when there is one (``schedule.device``), with bfloat16 autocast there.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import platform
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import monai
import numpy as np
import pydicom
import torch
from monai.transforms import Compose, RandAdjustContrast, RandAffine, Randomizable, RandShiftIntensity
from monai.utils import set_determinism
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn

from ..model.card import ModelCard, load_card
from ..model.network import build_network
from ..model.predictor import resolve_device
from ..preprocessing import InputSpec, model_input_transform
from ..scoring.calibration import Calibrator, fit_calibrator
from .config import OperatingPointConfig, TrainConfig, run_digest
from .data import load_splits
from .losses import build_loss, describe_loss
from .metrics import auroc, binary_metrics, threshold_for_sensitivity, youden_threshold
from .modelcard import write_model_card
from .plots import reliability_png

__all__ = ["predict_inputs", "predict_logits", "train", "training_device", "training_memory_format"]

logger = logging.getLogger(__name__)


def _augmenter(cfg: TrainConfig, seed: int) -> Compose:
    a = cfg.augment
    deg = float(np.deg2rad(a.rotate_deg))
    side = cfg.network.args.get("spatial_size", 28)
    aug = Compose(
        [
            RandAffine(prob=1.0, rotate_range=(deg,), scale_range=(a.scale, a.scale),
                       translate_range=(a.translate * side, a.translate * side), padding_mode="border"),
            RandAdjustContrast(prob=0.5, gamma=a.contrast_gamma),
            RandShiftIntensity(offsets=a.brightness, prob=0.5),
        ]
    )
    aug.set_random_state(seed=seed)
    return aug


def predict_inputs(images: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """float32 (N, 1, H, W) images in [0, 1] → model inputs, through the serving transform."""
    transform = model_input_transform(spec)
    return torch.stack([torch.as_tensor(transform(img)).as_subclass(torch.Tensor) for img in images])


def predict_logits(network: torch.nn.Module, images: torch.Tensor, spec: InputSpec, *, batch: int = 512) -> np.ndarray:
    """Logits of channel 0 for float32 (N, 1, H, W) images in [0, 1], through the serving transform,
    on the network's device (float32)."""
    network.eval()
    device = next(network.parameters(), torch.empty(0)).device  # a module without weights: the CPU
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            x = predict_inputs(images[i:i + batch], spec).to(device)
            out.append(network(x)[:, 0].float().cpu().numpy())
    return np.concatenate(out)


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


#: the built-in classifier loss, as bundles name it
BUILT_IN_CLASSIFIER_LOSS = "binary cross-entropy"


def _classifier_loss(cfg: TrainConfig) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``(logits (N,), labels (N,)) -> loss``: the config's MONAI terms (given the (N, 1) shapes they
    expect), or the built-in cross-entropy the shipped classifier trained with."""
    if cfg.loss is None:
        return torch.nn.BCEWithLogitsLoss()
    terms = build_loss(cfg.loss)
    return lambda logits, labels: terms(logits[:, None], labels[:, None], None)


def _state_dict_bytes(network: torch.nn.Module) -> bytes:
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


def _checkpoint_path(cfg: TrainConfig) -> Path:
    return (cfg.checkpoint_dir or Path("runs") / cfg.name) / "checkpoint.pt"


def _randomizables(transform: Any) -> list[Any]:
    """Every object with its own random state inside ``transform`` (RandAffine keeps a second one
    in its RandAffineGrid), in a stable order."""
    found: list[Any] = []

    def visit(obj: Any) -> None:
        if isinstance(obj, Randomizable) and obj not in found:
            found.append(obj)
            for key in sorted(vars(obj)):
                value = getattr(obj, key)
                if isinstance(value, Randomizable):
                    visit(value)

    if isinstance(transform, Compose):
        for t in transform.transforms:
            visit(t)
    else:
        visit(transform)
    return found


def _rng_state(transform: Any) -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = transform.R.get_state()
    return {"keys": torch.as_tensor(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
            "cached": float(cached)}


def _set_rng_state(transform: Any, state: dict[str, Any]) -> None:
    keys = state["keys"].numpy().astype(np.uint32)
    transform.R.set_state(("MT19937", keys, state["pos"], state["has_gauss"], state["cached"]))


def train(cfg: TrainConfig, *, config_path: Path | None = None, resume: bool = False,
          stop_after_epochs: int | None = None, folds_only: bool = False) -> dict[str, Any]:
    """Train the model ``cfg`` describes and write its bundle to ``cfg.output_dir``.

    A checkpoint (weights, optimiser, schedule and every random state) is written after each
    epoch; ``resume=True`` continues from it, and gives the same weights as an uninterrupted run.
    ``stop_after_epochs`` stops early without writing a bundle (as an interruption would).
    ``folds_only`` (localisation recipes) evaluates the recipe leaving one background out and writes
    no model (:func:`~secondreader.training.localisation.train_localisation`).
    Returns the bundle's metadata (also written to ``configs/metadata.json``), or ``{}`` when stopped.
    """
    if cfg.data.kind == "lesion_insertion":
        from .localisation import train_localisation

        return train_localisation(cfg, config_path=config_path, resume=resume, stop_after_epochs=stop_after_epochs,
                                  folds_only=folds_only)
    if cfg.data.kind == "jsrt":
        from .realnodule import train_real_nodules

        return train_real_nodules(cfg, config_path=config_path, resume=resume, stop_after_epochs=stop_after_epochs,
                                  folds_only=folds_only)
    if folds_only:
        raise ValueError("--folds-only evaluates a localisation recipe (data.kind lesion_insertion) leaving one "
                         f"background out; this config's data.kind is {cfg.data.kind}")
    started = time.time()
    device, amp = training_device(cfg.schedule.device, cfg.schedule.mixed_precision)
    torch.set_num_threads(cfg.schedule.threads)
    set_determinism(seed=cfg.seed)
    # Deterministic kernels on the CPU (bit-for-bit repeatable runs). On CUDA some of the ResNet's
    # backward kernels (adaptive average pooling) have no deterministic version: a GPU run is seeded
    # and draws the same batches, but is not bit-for-bit repeatable.
    torch.use_deterministic_algorithms(device.type == "cpu", warn_only=True)
    source = init_source(cfg)
    splits = load_splits(cfg.data.kind, cfg.data.path, finding=cfg.data.finding, limit=cfg.data.limit,
                         size=cfg.data.image_size)
    train_split, val_split, test_split = splits["train"], splits["val"], splits["test"]
    for name, chosen in (("val", val_split), ("test", test_split)):
        if len(np.unique(chosen.labels)) < 2:
            raise ValueError(f"the {name} split holds {len(chosen.labels)} images, all labelled {chosen.labels[0]}: "
                             "calibration and AUROC need positives and negatives in it")
    side = int(train_split.images.shape[-1])
    if source is not None:
        # Fine-tuning keeps the shipped model's input normalisation: its weights expect it.
        spec = source.input_spec
        if spec.size != (side, side):
            raise ValueError(f"init_from model {source.ref} takes {spec.size[0]}x{spec.size[1]} inputs, "
                             f"the data gives {side}x{side}")
    else:
        standardised = predict_inputs(train_split.images, InputSpec(size=(side, side), mean=0.0, std=1.0))
        spec = InputSpec(size=(side, side), mean=float(standardised.mean()), std=float(standardised.std()))
    to_model = model_input_transform(spec)
    augment = _augmenter(cfg, cfg.seed)

    network = build_network(cfg.network.class_, cfg.network.args)
    if source is not None:
        network.load_state_dict(torch.load(source.weights_path, map_location="cpu", weights_only=True))
        logger.info("fine-tuning from %s", source.ref)
    layout = training_memory_format(cfg.schedule.channels_last)
    to_layout(network, layout, device)
    optimiser = torch.optim.AdamW(network.parameters(), lr=cfg.schedule.max_lr, weight_decay=cfg.schedule.weight_decay)
    steps_per_epoch = (len(train_split.labels) + cfg.schedule.batch_size - 1) // cfg.schedule.batch_size
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=cfg.schedule.max_lr,
                                                    total_steps=cfg.schedule.epochs * steps_per_epoch)
    loss_fn = _classifier_loss(cfg)
    generator = torch.Generator().manual_seed(cfg.seed)
    labels = torch.as_tensor(train_split.labels, dtype=torch.float32)
    hardware = training_hardware(device, amp, cfg.schedule.channels_last)
    logger.info("training %s on %s", cfg.name, hardware["device"])

    history: list[dict[str, Any]] = []
    first_epoch = 0
    checkpoint = _checkpoint_path(cfg)
    digest = run_digest(cfg, *(hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()
                               for a in (train_split.images, train_split.labels)),
                        hashlib.sha256(source.weights_path.read_bytes()).hexdigest() if source else "",
                        f"{device.type} amp={amp}")
    if resume and checkpoint.is_file():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        if state["config"] != digest:
            raise ValueError("the checkpoint was made with another configuration, code or training data; delete it "
                             "or fix the config")
        network.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        for transform, rng in zip(_randomizables(augment), state["augment"], strict=True):
            _set_rng_state(transform, rng)
        history = list(state["history"])
        first_epoch = int(state["epoch"])
        logger.info("resuming %s after epoch %d", cfg.name, first_epoch)
    with training_progress(TextColumn("{task.fields[status]}")) as progress:
        task = progress.add_task(f"training {cfg.name}", total=cfg.schedule.epochs * steps_per_epoch, status="",
                                 completed=first_epoch * steps_per_epoch)
        for epoch in range(first_epoch, cfg.schedule.epochs):
            network.train()
            order = torch.randperm(len(labels), generator=generator)
            total = 0.0
            for start in range(0, len(order), cfg.schedule.batch_size):
                idx = order[start:start + cfg.schedule.batch_size]
                x = torch.stack([
                    torch.as_tensor(to_model(augment(train_split.images[i]))).as_subclass(torch.Tensor)
                    for i in idx.tolist()
                ])
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    out = network(x.to(device, memory_format=layout))
                loss = loss_fn(out[:, 0].float(), labels[idx].to(device))
                optimiser.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
                optimiser.step()
                scheduler.step()
                total += float(loss.detach()) * len(idx)
                progress.advance(task)
            val_auc = auroc(predict_logits(network, val_split.images, spec), val_split.labels)
            history.append({"epoch": epoch + 1, "loss": round(total / len(order), 5), "val_auroc": round(val_auc, 5)})
            progress.update(task, status=f"epoch {epoch + 1} loss {total / len(order):.4f} val AUROC {val_auc:.4f}")
            logger.info("epoch %d loss %.4f val_auroc %.4f", epoch + 1, total / len(order), val_auc)
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"epoch": epoch + 1, "config": digest, "model": network.state_dict(),
                        "optimiser": optimiser.state_dict(), "scheduler": scheduler.state_dict(),
                        "generator": generator.get_state(), "history": history,
                        "augment": [_rng_state(t) for t in _randomizables(augment)]}, checkpoint.with_suffix(".tmp"))
            checkpoint.with_suffix(".tmp").replace(checkpoint)
            if stop_after_epochs is not None and epoch + 1 >= stop_after_epochs and epoch + 1 < cfg.schedule.epochs:
                logger.info("stopping after epoch %d as asked; resume with --resume", epoch + 1)
                return {}

    # evaluated in the layout it is served in (the saved weights are contiguous), so that the bundle's
    # calibration and figures come from the logits serving computes
    to_layout(network, torch.contiguous_format)
    # Calibration and operating points: validation split only.
    val_logits = predict_logits(network, val_split.images, spec)
    calibrator, val_p, operating_point, urgent_point = calibrate_on_validation(
        val_logits, val_split.labels, cfg.operating_point, cfg.calibration.method)

    # The untouched test split, once.
    test_p = calibrator.probability(predict_logits(network, test_split.images, spec))
    metrics: dict[str, Any] = {
        "validation": binary_metrics(val_p, val_split.labels, operating_point, seed=cfg.seed).to_json(),
        "test": binary_metrics(test_p, test_split.labels, operating_point, seed=cfg.seed).to_json(),
    }
    if cfg.data.kind == "nih_pneumonia":  # adult films: the test figures by view, and the review budget's cost
        from .realdata import nih_test_breakdown

        metrics["test_by_view"] = nih_test_breakdown(cfg.data.path, test_p, operating_point, limit=cfg.data.limit,
                                                     seed=cfg.seed)
        # validation is held out too (it fixes only the monotone calibration and the threshold): both
        # pooled are the steadier estimate of the AUROC, and the one the targets are held against
        metrics["held_out"] = binary_metrics(np.concatenate([val_p, test_p]),
                                             np.concatenate([val_split.labels, test_split.labels]),
                                             operating_point, seed=cfg.seed).to_json()

    weights = _state_dict_bytes(network)
    out = cfg.output_dir
    weights_sha256 = write_bundle_weights(out, weights)
    device_uid = device_uid_for(cfg.name, cfg.version, weights_sha256)

    metadata = _metadata(cfg, spec, side, calibrator, operating_point, urgent_point, metrics, history,
                         device_uid, weights_sha256, config_path, time.time() - started,
                         hardware)
    if source is not None:
        metadata["secondreader"]["training"]["init_from"] = {
            "model": source.ref, "weights_sha256": source.metadata["secondreader"].get("weights_sha256")}
    (out / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
    write_model_card(out / "docs" / "README.md", metadata)
    reliability_png(out / "docs" / "reliability.png",
                    {"validation": (val_p, val_split.labels), "test": (test_p, test_split.labels)})
    logger.info("wrote bundle %s (test AUROC %.4f)", cfg.name, metrics["test"]["auroc"])
    return metadata


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


def _metadata(cfg: TrainConfig, spec: InputSpec, side: int, calibrator: Calibrator, operating_point: float,
              urgent_point: float, metrics: dict[str, Any], history: list[dict[str, Any]], device_uid: str,
              weights_sha256: str, config_path: Path | None, seconds: float,
              hardware: dict[str, str]) -> dict[str, Any]:
    code = cfg.data.finding
    return {
        **bundle_header(cfg, "classification"),
        "copyright": "secondreader authors; training data under its own licence (see data_source)",
        "data_source": cfg.provenance.get("data_source", ""),
        "data_type": "8-bit greyscale chest radiographs, centre-cropped and resized to "
                     f"{side}x{side}",
        "intended_use": cfg.provenance.get("intended_use", ""),
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "magnitude",
                    "modality": "CR/DX",
                    "num_channels": 1,
                    "spatial_shape": [side, side],
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": False,
                    "channel_def": {"0": "image"},
                }
            },
            "outputs": {
                "pred": {
                    "type": "probabilities",
                    "format": "classes",
                    "num_channels": 1,
                    "spatial_shape": [1],
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_onehot": False,
                    "channel_def": {"0": code},
                }
            },
        },
        "secondreader": {
            "device_uid": device_uid,
            "weights_file": "model.pt",
            "weights_sha256": weights_sha256,
            "network": {"class": cfg.network.class_, "args": cfg.network.args},
            "saliency": cfg.saliency.model_dump(),
            "input": {"spatial_shape": [side, side], "mean": round(spec.mean, 6), "std": round(spec.std, 6),
                      "preprocessing": "header VOI or 0.5-99.5 percentile window, MONOCHROME1 inversion, "
                                       "centre square crop, area resize, 0.5-99.5 percentile stretch, "
                                       "normalise"},
            "findings": {
                code: {
                    "channel": 0,
                    "display_name": cfg.data.display_name,
                    "calibration": {**calibrator.to_json(), "fitted_on": "validation"},
                    "operating_point": round(operating_point, 6),
                    "operating_point_method": cfg.operating_point.describe(),
                    "urgent_point": round(urgent_point, 6),
                    "urgent_point_method": cfg.operating_point.describe_urgent(),
                }
            },
            "metrics": metrics,
            **scope_and_mode(cfg, {"auroc": float(metrics.get("held_out", metrics["test"])["auroc"])}),
            "training": {
                "config": str(config_path) if config_path else None,
                "seed": cfg.seed,
                "epochs": cfg.schedule.epochs,
                "loss": describe_loss(cfg.loss, BUILT_IN_CLASSIFIER_LOSS),
                "history": history,
                "seconds": round(seconds, 1),
                **hardware,
            },
            "provenance": cfg.provenance,
        },
    }
