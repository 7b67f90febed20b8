"""A dense model's MONAI bundle: its metadata, routing gate and files.

:func:`dense_metadata` is the ``configs/metadata.json`` of a localisation bundle (input and output
format, the served map recipe, calibration and operating points, metrics, how it was trained);
:func:`routing_gate` decides whether its findings may route studies (only when it met its targets
on held-out data); :func:`write_dense_bundle` writes the weights, metadata, reliability plot and
model card.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...model.card import ModelCard
from ...preprocessing import InputSpec
from ..common import bundle_header, device_uid_for, write_bundle_weights
from ..config import TrainConfig
from ..losses import describe_loss
from ..plots import reliability_png
from .evaluate import Calibration
from .fit import BUILT_IN_DENSE_LOSS

__all__ = ["TARGET_AUROC", "TARGET_FROC_AT_1", "dense_metadata", "routing_gate", "write_dense_bundle"]

logger = logging.getLogger(__name__)


#: Issue 3's targets on the leave-one-background-out test: a model that misses them is shipped for
#: its heatmaps and regions, but does not route studies (see ModelCard.routes).
TARGET_AUROC, TARGET_FROC_AT_1 = 0.95, 0.9


def routing_gate(metrics: dict[str, Any]) -> dict[str, Any]:
    """Whether this model's findings may route studies: only when it met its targets on held-out data
    (scored both ways where a held-out background holds a real opacity of unknown nature: the lower
    figures count)."""
    tests = [metrics.get("test", {})] + ([metrics["test_strict"]] if "test_strict" in metrics else [])
    auroc = min(float(t.get("study", {}).get("auroc", 0.0)) for t in tests)
    froc_1 = min(float(t.get("froc", {}).get("sensitivity", {}).get("1.0", 0.0)) for t in tests)
    met = auroc >= TARGET_AUROC and froc_1 >= TARGET_FROC_AT_1
    reason = (f"held-out study AUROC {auroc:.3f} (target {TARGET_AUROC}), FROC sensitivity at 1 false region "
              f"per image {froc_1:.3f} (target {TARGET_FROC_AT_1})")
    return {"enabled": met, "reason": ("targets met: " if met else "targets not met: ") + reason}


def dense_metadata(cfg: TrainConfig, spec: InputSpec, cal: Calibration, metrics: dict[str, Any], device_uid: str,
                   weights_sha256: str, config_path: Path | None, seconds: float,
                   folds_reused: Sequence[str], hardware: dict[str, str]) -> dict[str, Any]:
    """The bundle's ``configs/metadata.json``: the MONAI fields, the served map recipe and region
    thresholds, the finding's calibration and operating points, ``metrics``, :func:`routing_gate`'s
    verdict on them, and how the model was trained."""
    lc = cfg.lesions
    assert lc is not None
    code, side = cfg.data.finding, lc.input_size
    threshold = cal.map_threshold(cal.operating_point)
    return {
        **bundle_header(cfg, "localisation"),
        "copyright": "secondreader authors; background images under their own licences (see data_source)",
        "data_source": cfg.provenance.get("data_source", ""),
        "data_type": f"greyscale chest radiographs, centre-cropped and resized to {side}x{side}",
        "intended_use": cfg.provenance.get("intended_use", ""),
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "magnitude", "modality": "CR/DX", "num_channels": 1,
                                 "spatial_shape": [side, side], "dtype": "float32", "value_range": [0, 1],
                                 "is_patch_data": False, "channel_def": {"0": "image"}}},
            "outputs": {"pred": {"type": "probabilities", "format": "segmentation", "num_channels": 1,
                                 "spatial_shape": [side, side], "dtype": "float32", "value_range": [0, 1],
                                 "is_onehot": False, "channel_def": {"0": code}}},
        },
        "secondreader": {
            "device_uid": device_uid,
            "weights_file": "model.pt",
            "weights_sha256": weights_sha256,
            "network": {"class": cfg.network.class_, "args": cfg.network.args},
            "saliency": {"method": "dense", "smoothing_sigma": cfg.saliency.smoothing_sigma,
                         "flip_average": cfg.saliency.flip_average,
                         "region_threshold": round(threshold, 6),
                         "region_floor": round(max(1e-4, 0.5 * threshold), 6)},
            "input": {"spatial_shape": [side, side], "mean": round(spec.mean, 6), "std": round(spec.std, 6),
                      "preprocessing": "header VOI or 0.5-99.5 percentile window, MONOCHROME1 inversion, "
                                       "centre square crop, area resize, 0.5-99.5 percentile stretch, normalise"},
            "findings": {code: {
                "channel": 0,
                "display_name": cfg.data.display_name,
                "study_score": "maximum of the smoothed logit map (the heatmap is its sigmoid)",
                "calibration": {**cal.calibrator.to_json(), "fitted_on": "validation"},
                "operating_point": round(cal.operating_point, 6),
                "operating_point_method": cfg.operating_point.describe(),
                "urgent_point": round(cal.urgent_point, 6),
                "urgent_point_method": cfg.operating_point.describe_urgent(),
            }},
            "metrics": metrics,
            "routing": routing_gate(metrics),
            "training": {
                "config": str(config_path) if config_path else None,
                "seed": cfg.seed,
                "epochs": cfg.schedule.epochs,
                "loss": describe_loss(cfg.loss, BUILT_IN_DENSE_LOSS),
                "lesions": lc.model_dump(mode="json", exclude={"backgrounds"}),
                "backgrounds": [{"id": b.id, "source": b.source, "real_lesions": b.real_lesions,
                                 "unknown": [u.note for u in b.unknown]} for b in lc.backgrounds],
                "seconds": round(seconds, 1),
                **hardware,
                "folds_reused": list(folds_reused),
            },
            "provenance": cfg.provenance,
        },
    }


def write_dense_bundle(cfg: TrainConfig, spec: InputSpec, cal: Calibration, metrics: dict[str, Any], weights: bytes,
                       *, config_path: Path | None, started: float, folds_reused: Sequence[str],
                       hardware: dict[str, str], source: ModelCard | None,
                       curves: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """Write the bundle to ``cfg.output_dir``: ``models/model.pt`` (``weights``), its metadata
    (:func:`dense_metadata`; with ``source``, the bundle it was fine-tuned from), the reliability
    plot of ``curves`` (calibrated study probabilities against the truth) and the model card.
    Returns the metadata."""
    out = cfg.output_dir
    weights_sha256 = write_bundle_weights(out, weights)
    metadata = dense_metadata(cfg, spec, cal, metrics, device_uid_for(cfg.name, cfg.version, weights_sha256),
                              weights_sha256, config_path, time.time() - started, folds_reused, hardware)
    if source is not None:
        metadata["secondreader"]["training"]["init_from"] = {
            "model": source.ref, "weights_sha256": source.metadata["secondreader"].get("weights_sha256")}
    reliability_png(out / "docs" / "reliability.png", curves)
    metadata["secondreader"]["calibration_plot"] = "docs/reliability.png"
    (out / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
    from ..modelcard_dense import write_dense_model_card

    write_dense_model_card(out / "docs" / "README.md", metadata)
    logger.info("wrote bundle %s in %.0f s", cfg.name, time.time() - started)
    return metadata
