"""``secondreader train CONFIG``: train, calibrate on validation, evaluate on test, write a bundle.

Reproducible: a fixed seed, deterministic algorithms, and a fixed thread count. Test data is used
once, after every choice (calibration, operating point) was made on the validation split. Trains on
the first CUDA device when there is one (``schedule.device``), with bfloat16 autocast there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import Compose, RandAdjustContrast, RandAffine, Randomizable, RandShiftIntensity
from monai.utils import set_determinism
from rich.progress import TextColumn

from ..fileio import atomic_path
from ..model.network import build_network
from ..preprocessing import InputSpec, model_input_transform
from ..scoring.calibration import Calibrator
from .common import (
    bundle_header,
    calibrate_on_validation,
    device_uid_for,
    init_source,
    scope_and_mode,
    state_dict_bytes,
    to_layout,
    training_device,
    training_hardware,
    training_memory_format,
    training_progress,
    write_bundle_weights,
)
from .config import TrainConfig, run_digest
from .data import Split, load_manifest, load_medmnist
from .losses import build_loss, describe_loss
from .metrics import auroc, binary_metrics
from .modelcard import write_model_card
from .plots import reliability_png
from .realdata import load_nih_splits

__all__ = ["predict_inputs", "predict_logits", "train"]

logger = logging.getLogger(__name__)


def load_splits(kind: str, path: Path, *, finding: str, limit: int | None = None, size: int = 28) -> dict[str, Split]:
    """The train, val and test splits of a classifier's ``data.kind``: a MedMNIST ``.npz``, a
    manifest of DICOM files, or the NIH pneumonia films (split by patient)."""
    if kind == "medmnist_npz":
        return load_medmnist(path, limit=limit)
    if kind == "manifest":
        return load_manifest(path, finding=finding, size=(size, size), limit=limit)
    if kind == "nih_pneumonia":
        return load_nih_splits(path, size, limit=limit)[0]
    raise ValueError(f"unknown data kind {kind!r}")


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


#: the built-in classifier loss, as bundles name it
BUILT_IN_CLASSIFIER_LOSS = "binary cross-entropy"


def _classifier_loss(cfg: TrainConfig) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``(logits (N,), labels (N,)) -> loss``: the config's MONAI terms (given the (N, 1) shapes they
    expect), or the built-in cross-entropy the shipped classifier trained with."""
    if cfg.loss is None:
        return torch.nn.BCEWithLogitsLoss()
    terms = build_loss(cfg.loss)
    return lambda logits, labels: terms(logits[:, None], labels[:, None], None)


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
    no model (:func:`~secondreader.training.dense.run.train_localisation`).
    Returns the bundle's metadata (also written to ``configs/metadata.json``), or ``{}`` when stopped.
    """
    if cfg.data.kind == "lesion_insertion":
        from .dense.run import train_localisation

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
            with atomic_path(checkpoint) as tmp:
                torch.save({"epoch": epoch + 1, "config": digest, "model": network.state_dict(),
                            "optimiser": optimiser.state_dict(), "scheduler": scheduler.state_dict(),
                            "generator": generator.get_state(), "history": history,
                            "augment": [_rng_state(t) for t in _randomizables(augment)]}, tmp)
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

    weights = state_dict_bytes(network)
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
