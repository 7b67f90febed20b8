"""The training pipeline on a tiny subset of PneumoniaMNIST: export, reload, and an interrupted run
that resumes to exactly the weights of an uninterrupted one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from secondreader.model.card import load_card
from secondreader.model.predictor import TorchPredictor
from secondreader.training.config import TrainConfig, load_config
from secondreader.training.train import train

from ..conftest import ROOT

pytestmark = [pytest.mark.shared_data, pytest.mark.slow]


def _tiny(shared_data: Path, tmp_path: Path, name: str) -> TrainConfig:
    raw = yaml.safe_load((ROOT / "training" / "configs" / "cxr-pneumonia.yaml").read_text())
    raw["data"]["path"] = str(shared_data / "pneumoniamnist" / "pneumoniamnist.npz")
    raw["data"]["limit"] = 192
    raw["schedule"].update({"epochs": 2, "batch_size": 64})
    raw["output_dir"] = str(tmp_path / name / "bundle")
    raw["checkpoint_dir"] = str(tmp_path / name / "runs")
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_config(path)


def test_tiny_training_exports_a_bundle_that_reloads_and_predicts(shared_data: Path, tmp_path: Path) -> None:
    cfg = _tiny(shared_data, tmp_path, "a")
    meta = train(cfg)
    bundle = cfg.output_dir
    card = load_card(bundle)
    assert card.name == "cxr-pneumonia" and card.device_uid == meta["secondreader"]["device_uid"]
    assert set(meta["secondreader"]["metrics"]) == {"validation", "test"}
    assert meta["secondreader"]["metrics"]["test"]["n"] == 192
    assert (bundle / "docs" / "README.md").is_file()
    assert (bundle / "docs" / "reliability.png").read_bytes()[:4] == b"\x89PNG"
    predictor = TorchPredictor(card, device="cpu")
    (prediction,) = predictor.predict(torch.zeros(1, 1, 28, 28))
    assert prediction.logits.shape == (1,) and prediction.saliency is not None


def test_an_interrupted_run_resumes_to_the_same_weights(shared_data: Path, tmp_path: Path) -> None:
    straight = _tiny(shared_data, tmp_path, "straight")
    train(straight)
    interrupted = _tiny(shared_data, tmp_path, "interrupted")
    assert train(interrupted, stop_after_epochs=1) == {}
    assert not (interrupted.output_dir / "models" / "model.pt").exists()
    train(interrupted, resume=True)
    a = torch.load(straight.output_dir / "models" / "model.pt", weights_only=True)
    b = torch.load(interrupted.output_dir / "models" / "model.pt", weights_only=True)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_a_changed_config(shared_data: Path, tmp_path: Path) -> None:
    cfg = _tiny(shared_data, tmp_path, "c")
    train(cfg, stop_after_epochs=1)
    changed = cfg.model_copy(update={"seed": cfg.seed + 1})
    with pytest.raises(ValueError, match="another configuration"):
        train(changed, resume=True)
