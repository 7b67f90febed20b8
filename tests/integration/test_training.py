"""The training pipeline on a tiny subset of PneumoniaMNIST: export, reload, and an interrupted run
that resumes to exactly the weights of an uninterrupted one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from secondreader.model.card import load_card
from secondreader.model.predictor import TorchPredictor
from secondreader.scoring.calibration import Calibrator
from secondreader.training.config import CalibrationConfig, TrainConfig, load_config
from secondreader.training.data import load_medmnist
from secondreader.training.losses import LossConfig
from secondreader.training.metrics import auroc, expected_calibration_error
from secondreader.training.train import predict_logits, train

from ..conftest import ROOT

pytestmark = [pytest.mark.shared_data, pytest.mark.slow]


def _tiny(shared_data: Path, tmp_path: Path, name: str) -> TrainConfig:
    raw = yaml.safe_load((ROOT / "training" / "configs" / "cxr-pneumonia.yaml").read_text())
    raw["data"]["path"] = str(shared_data / "pneumoniamnist" / "pneumoniamnist.npz")
    raw["data"]["limit"] = 192
    # the CPU: its bit-for-bit repeatability is what these tests compare (tests/gpu covers CUDA)
    raw["schedule"].update({"epochs": 2, "batch_size": 64, "device": "cpu"})
    raw["output_dir"] = str(tmp_path / name / "bundle")
    raw["checkpoint_dir"] = str(tmp_path / name / "runs")
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_config(path)


def test_tiny_training_exports_a_bundle_that_reloads_and_predicts(shared_data: Path, tmp_path: Path) -> None:
    cfg = _tiny(shared_data, tmp_path, "a")
    # a small subset still holds both classes (the file lists the training normals first)
    subset = load_medmnist(cfg.data.path, limit=cfg.data.limit)["train"].labels
    assert len(subset) == 192 and 0.5 < subset.mean() < 0.95
    meta = train(cfg)
    bundle = cfg.output_dir
    card = load_card(bundle)
    assert card.name == "cxr-pneumonia" and card.device_uid == meta["secondreader"]["device_uid"]
    assert set(meta["secondreader"]["metrics"]) == {"validation", "test"}
    assert meta["secondreader"]["metrics"]["test"]["n"] == 192
    training = meta["secondreader"]["training"]
    assert training["device"] == "cpu, float32" and training["machine"].endswith("; cpu, float32")
    assert training["loss"] == "binary cross-entropy"
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
    # same weights, same version: the same Device UID (it is derived, not random)
    assert load_card(straight.output_dir).device_uid == load_card(interrupted.output_dir).device_uid


def test_resume_refuses_a_changed_config(shared_data: Path, tmp_path: Path) -> None:
    cfg = _tiny(shared_data, tmp_path, "c")
    train(cfg, stop_after_epochs=1)
    changed = cfg.model_copy(update={"seed": cfg.seed + 1})
    with pytest.raises(ValueError, match="another configuration"):
        train(changed, resume=True)


def test_a_dicom_manifest_trains_through_the_serving_chain(shared_data: Path, tmp_path: Path) -> None:
    """ML engineers' own data: a CSV of DICOM files with labels and splits (unknown labels skipped)."""
    import csv

    import numpy as np
    from skimage.transform import resize

    from secondreader.training.data import load_manifest, load_medmnist

    from ..factories import make_cxr_dataset, write

    source = load_medmnist(shared_data / "pneumoniamnist" / "pneumoniamnist.npz", limit=24)
    rows = []
    for split in ("train", "val", "test"):
        for i in range(24):
            picture = resize(source[split].images[i, 0].numpy().astype(float), (280, 280), order=1)
            path = write(make_cxr_dataset(280, 280, pixels=np.clip(picture, 0, 1)), tmp_path / split / f"{i}.dcm")
            label = "" if i == 0 else str(int(source[split].labels[i]))
            rows.append({"path": str(path.relative_to(tmp_path)), "split": split, "pneumonia": label})
    write(make_cxr_dataset(300, 300, modality="MR"), tmp_path / "mr.dcm")
    rows.append({"path": "mr.dcm", "split": "train", "pneumonia": "1"})
    manifest = tmp_path / "manifest.csv"
    with open(manifest, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "split", "pneumonia"])
        writer.writeheader()
        writer.writerows(rows)
    splits = load_manifest(manifest, finding="pneumonia", size=(28, 28))
    assert [len(splits[s].labels) for s in ("train", "val", "test")] == [23, 23, 23]
    assert list(splits["val"].labels) == [int(v) for v in source["val"].labels[1:]]
    # the upsampled copies come back close to the original 28x28 pictures (after standardisation)
    original = source["train"].images[1, 0].numpy()
    lo, hi = np.percentile(original, [0.5, 99.5])
    assert np.abs(splits["train"].images[0, 0].numpy() - np.clip((original - lo) / (hi - lo), 0, 1)).mean() < 0.05

    raw = yaml.safe_load((ROOT / "training" / "configs" / "cxr-pneumonia.yaml").read_text())
    raw["data"] = {"kind": "manifest", "path": str(manifest), "finding": "pneumonia"}
    raw["schedule"].update({"epochs": 1, "batch_size": 16})
    raw["output_dir"] = str(tmp_path / "bundle")
    raw["checkpoint_dir"] = str(tmp_path / "runs")
    config = tmp_path / "manifest.yaml"
    config.write_text(yaml.safe_dump(raw))
    meta = train(load_config(config))
    assert meta["secondreader"]["metrics"]["test"]["n"] == 23
    assert load_card(tmp_path / "bundle").findings[0].code == "pneumonia"


def test_the_configs_loss_and_calibration_are_the_ones_trained_with(shared_data: Path, tmp_path: Path) -> None:
    built_in = _tiny(shared_data, tmp_path, "bce")
    focal = _tiny(shared_data, tmp_path, "focal").model_copy(update={
        "loss": LossConfig.model_validate({"terms": [{"class": "FocalLoss", "args": {"gamma": 2.0}}]}),
        "calibration": CalibrationConfig(method="isotonic")})
    a, b = train(built_in)["secondreader"], train(focal)["secondreader"]
    assert b["training"]["loss"] == "monai.losses.FocalLoss(gamma=2.0)"
    assert a["weights_sha256"] != b["weights_sha256"]
    assert 0.5 < b["metrics"]["validation"]["auroc"] <= 1.0
    assert a["findings"]["pneumonia"]["calibration"]["method"] == "platt"
    stored = b["findings"]["pneumonia"]["calibration"]
    assert stored["method"] == "isotonic" and len(stored["logits"]) == len(stored["probabilities"]) >= 2
    assert "isotonic regression (" in (focal.output_dir / "docs" / "README.md").read_text()
    # served as stored: the card's calibrator maps logits as the stored knots do, and gives the
    # bundle's test figures (its ECE too, which any other monotone map would change)
    card = load_card(focal.output_dir)
    served = card.findings[0].calibration
    assert served.method == "isotonic" and served == Calibrator.from_json(stored)
    test = load_medmnist(focal.data.path, limit=focal.data.limit)["test"]
    logits = predict_logits(TorchPredictor(card, device="cpu").network, test.images, card.input_spec)
    p = served.probability(logits)
    assert np.allclose(p, np.interp(logits, stored["logits"], stored["probabilities"]))
    assert auroc(p, test.labels) == pytest.approx(b["metrics"]["test"]["auroc"], abs=1e-3)
    assert expected_calibration_error(p, test.labels) == pytest.approx(b["metrics"]["test"]["ece"], abs=2e-3)


def test_the_cli_never_overwrites_the_shipped_bundle_unasked(shared_data: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """`secondreader train CONFIG` writes a new bundle under $SECONDREADER_HOME/runs/, whatever the
    config's output_dir says; the shipped bundle in $SECONDREADER_MODELS_DIR stays byte for byte."""
    import shutil

    from secondreader.cli import main

    models, home = tmp_path / "models", tmp_path / "home"
    shutil.copytree(ROOT / "models" / "cxr-pneumonia", models / "cxr-pneumonia")
    shipped = {p.relative_to(models): p.read_bytes() for p in sorted(models.rglob("*")) if p.is_file()}
    monkeypatch.setenv("SECONDREADER_MODELS_DIR", str(models))
    monkeypatch.setenv("SECONDREADER_HOME", str(home))
    raw = yaml.safe_load((ROOT / "training" / "configs" / "cxr-pneumonia.yaml").read_text())
    raw["data"].update({"path": str(shared_data / "pneumoniamnist" / "pneumoniamnist.npz"), "limit": 192})
    raw["schedule"].update({"epochs": 1, "batch_size": 64, "device": "cpu"})
    raw["output_dir"] = str(models / "cxr-pneumonia")  # an older config naming the shipped bundle: not used
    raw["checkpoint_dir"] = str(tmp_path / "checkpoints")
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(raw))
    capsys.readouterr()
    assert main(["train", str(config)]) == 0
    out = capsys.readouterr()
    assert {p.relative_to(models): p.read_bytes() for p in sorted(models.rglob("*")) if p.is_file()} == shipped
    (bundle,) = (home / "runs").iterdir()
    assert bundle.name.startswith(f"cxr-pneumonia-{raw['version']}-") and bundle.name.endswith("Z")
    assert load_card(bundle).name == "cxr-pneumonia"
    assert json.loads(out.out)["bundle"] == str(bundle.absolute())
    assert f"bundle written to {bundle.absolute()}" in out.err
    was = json.loads(shipped[Path("cxr-pneumonia/configs/metadata.json")])
    assert f"shipped  {was['version']:<12}{was['secondreader']['weights_sha256'][:8]}" in out.err  # compared
