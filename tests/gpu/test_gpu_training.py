"""``secondreader train`` on a CUDA device (bfloat16 autocast) against the same tiny runs on the CPU;
runs with ``-m gpu``. The batches and their augmentation are drawn on the CPU from the same seeds, so
the two runs see the same data in the same order and their losses must follow each other."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from secondreader.model.dense import load_predictor
from secondreader.model.predictor import TorchPredictor
from secondreader.training.config import TrainConfig
from secondreader.training.train import train

from ..integration.test_nodule_training import _config as nodule_config
from ..integration.test_training import _tiny as pneumonia_config

pytestmark = [pytest.mark.gpu, pytest.mark.shared_data, pytest.mark.slow]


def _on(cfg: TrainConfig, device: str) -> TrainConfig:
    return cfg.model_copy(update={"schedule": cfg.schedule.model_copy(update={"device": device})})


def test_pneumonia_trains_on_cuda_in_bf16_and_follows_the_cpu_run(shared_data: Path, tmp_path: Path) -> None:
    cpu = train(pneumonia_config(shared_data, tmp_path, "cpu"))["secondreader"]
    gpu = train(_on(pneumonia_config(shared_data, tmp_path, "gpu"), "cuda"))["secondreader"]
    assert gpu["training"]["device"].startswith("cuda:0, ") and gpu["training"]["device"].endswith("bfloat16 autocast")
    assert cpu["training"]["device"] == "cpu, float32"
    for a, b in zip(cpu["training"]["history"], gpu["training"]["history"], strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=0.1, abs=0.02)
    assert np.isfinite(gpu["metrics"]["test"]["auroc"])
    # the weights went to the bundle as a CPU state dict: they load and predict on either device
    bundle = tmp_path / "gpu" / "bundle"
    for device in ("cpu", "cuda"):
        (prediction,) = TorchPredictor.from_bundle(bundle, device=device).predict(torch.zeros(1, 1, 28, 28))
        assert np.isfinite(prediction.logits).all()


def test_nodule_folds_and_final_model_train_on_cuda(shared_data: Path, tmp_path: Path) -> None:
    keep = ("nih-00000001-000", "nih-00027426-000")
    cpu = train(nodule_config(shared_data, tmp_path / "cpu", keep=keep))["secondreader"]
    gpu = train(_on(nodule_config(shared_data, tmp_path / "gpu", keep=keep), "cuda"))["secondreader"]
    assert gpu["training"]["device"].endswith("bfloat16 autocast")
    assert [f["background"] for f in gpu["metrics"]["folds"]] == [f["background"] for f in cpu["metrics"]["folds"]]
    assert gpu["weights_sha256"] != cpu["weights_sha256"]  # another device's arithmetic, not a copy
    assert all(np.isfinite(f["auroc"]) for f in gpu["metrics"]["folds"])
    predictor = load_predictor(tmp_path / "gpu" / "bundle", device="cuda")
    x = torch.rand(2, 1, *predictor.card.input_spec.size) * 2 - 1
    assert all(np.isfinite(p.logits).all() for p in predictor.predict(x))
