"""Fine-tuning a shipped model (``init_from``) on a DICOM manifest, the format radiologists' reviews
are exported in."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from skimage.transform import resize

from secondreader.model.card import load_card
from secondreader.training.config import load_config
from secondreader.training.data import load_medmnist
from secondreader.training.train import train

from ..conftest import ROOT
from ..factories import make_cxr_dataset, write

pytestmark = [pytest.mark.shared_data, pytest.mark.weights, pytest.mark.slow]


def _manifest(shared_data: Path, tmp_path: Path, n: int = 24) -> Path:
    source = load_medmnist(shared_data / "pneumoniamnist" / "pneumoniamnist.npz", limit=n)
    rows = []
    for split in ("train", "val", "test"):
        for i in range(n):
            picture = resize(source[split].images[i, 0].numpy().astype(float), (280, 280), order=1)
            path = write(make_cxr_dataset(280, 280, pixels=np.clip(picture, 0, 1)), tmp_path / split / f"{i}.dcm")
            rows.append({"path": str(path.relative_to(tmp_path)), "split": split,
                         "pneumonia": str(int(source[split].labels[i]))})
    manifest = tmp_path / "reviews.csv"
    with open(manifest, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "split", "pneumonia"])
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def _config(tmp_path: Path, manifest: Path, name: str, **changes: object) -> Path:
    raw = yaml.safe_load((ROOT / "training" / "configs" / "cxr-pneumonia.yaml").read_text())
    raw["data"] = {"kind": "manifest", "path": str(manifest), "finding": "pneumonia"}
    raw["schedule"].update({"epochs": 1, "batch_size": 16})
    raw["output_dir"] = str(tmp_path / name / "bundle")
    raw["checkpoint_dir"] = str(tmp_path / name / "runs")
    raw.update(changes)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_fine_tuning_starts_from_the_shipped_weights(shared_data: Path, models_dir: Path, tmp_path: Path) -> None:
    manifest = _manifest(shared_data, tmp_path)
    shipped = load_card(models_dir / "cxr-pneumonia")
    # a learning rate of ~0: the fine-tuned weights must be the shipped ones
    path = _config(tmp_path, manifest, "tuned", init_from=str(models_dir / "cxr-pneumonia"))
    cfg = load_config(path)
    cfg.schedule.max_lr = 1e-9
    meta = train(cfg, config_path=path)
    init = meta["secondreader"]["training"]["init_from"]
    assert init == {"model": shipped.ref, "weights_sha256": shipped.metadata["secondreader"]["weights_sha256"]}
    assert meta["secondreader"]["input"]["mean"] == pytest.approx(shipped.input_spec.mean)
    source = torch.load(shipped.weights_path, weights_only=True)
    tuned = torch.load(cfg.output_dir / "models" / "model.pt", weights_only=True)
    for key, value in source.items():
        if "running" in key or "num_batches" in key:
            continue  # batch-norm statistics move in training mode whatever the learning rate
        assert torch.allclose(value, tuned[key], atol=1e-5), key
    # and it ranks the manifest's test images like the shipped model does; one epoch from scratch cannot
    scratch = train(load_config(_config(tmp_path, manifest, "scratch")))
    assert meta["secondreader"]["metrics"]["test"]["auroc"] > 0.85
    assert meta["secondreader"]["metrics"]["test"]["auroc"] > scratch["secondreader"]["metrics"]["test"]["auroc"]


def test_fine_tuning_refuses_another_network(shared_data: Path, models_dir: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "empty.csv"
    manifest.write_text("path,split,pneumonia\n")
    path = _config(tmp_path, manifest, "mismatch", init_from=str(models_dir / "cxr-pneumonia"))
    cfg = load_config(path)
    cfg.network.args["block_inplanes"] = [8, 16, 32, 64]
    with pytest.raises(ValueError, match="network"):
        train(cfg)
    cfg.init_from = tmp_path / "nowhere"
    with pytest.raises(ValueError, match="init_from"):
        train(cfg)
