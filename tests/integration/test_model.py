"""The shipped pneumonia model: its card's test metrics reproduce, and full-resolution DICOM
versions of held-out test images score like the 28x28 originals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from skimage.transform import resize

from secondreader.dicom.io import InputFile
from secondreader.model.card import load_card
from secondreader.pipeline import ScreeningOptions, screen_inputs
from secondreader.training.data import load_medmnist
from secondreader.training.evaluate import evaluate_bundle
from secondreader.training.metrics import auroc

from ..factories import make_cxr_dataset, write

pytestmark = [pytest.mark.weights, pytest.mark.shared_data, pytest.mark.slow]


@pytest.fixture(scope="module")
def npz(shared_data: Path) -> Path:
    return shared_data / "pneumoniamnist" / "pneumoniamnist.npz"


def test_card_metrics_reproduce_on_the_test_split(models_dir: Path, npz: Path) -> None:
    meta = json.loads((models_dir / "cxr-pneumonia" / "configs" / "metadata.json").read_text())
    card_test = meta["secondreader"]["metrics"]["test"]
    report = evaluate_bundle(models_dir / "cxr-pneumonia", npz, split="test", device="cpu")
    assert report["n"] == 624
    for key in ("auroc", "accuracy", "sensitivity", "specificity"):
        assert report[key] == pytest.approx(card_test[key], abs=0.01), key
        # every figure carries its interval, in the evaluation and in the bundle (the same counts)
        lo, hi = report[f"{key}_ci95"]
        assert lo < report[key] < hi and card_test[f"{key}_ci95"][0] < card_test[key] < card_test[f"{key}_ci95"][1]
    assert report["accuracy_ci95"] == card_test["accuracy_ci95"]  # Wilson: a function of the counts alone
    # The anchor: beat every ResNet row of the MedMNIST v2 table at 28 px.
    assert report["auroc"] >= 0.962 and report["accuracy"] >= 0.884


def test_recalibrating_the_shipped_weights_on_val_gives_back_the_bundles_calibration(models_dir: Path,
                                                                                     npz: Path) -> None:
    """--recalibrate platt refits the shipped calibration from the shipped weights on the val split:
    the same a, b and operating point. Temperature scaling is monotone in the logit, so the bundle's
    rule (95% sensitivity on val) cuts at the same image and keeps the same decisions; only the
    probabilities (and their ECE) change."""
    card = load_card(models_dir / "cxr-pneumonia")
    finding = card.findings[0]
    platt = evaluate_bundle(models_dir / "cxr-pneumonia", npz, split="test", recalibrate="platt")
    refit = platt["recalibrated"]
    assert refit["calibration"]["a"] == pytest.approx(finding.calibration.a, abs=1e-4)
    assert refit["calibration"]["b"] == pytest.approx(finding.calibration.b, abs=1e-4)
    assert refit["operating_point"] == pytest.approx(finding.operating_point, abs=1e-4)
    assert refit["accuracy"] == platt["accuracy"] and refit["ece"] == pytest.approx(platt["ece"], abs=1e-3)
    temperature = evaluate_bundle(models_dir / "cxr-pneumonia", npz, split="test",
                                  recalibrate="temperature")["recalibrated"]
    assert temperature["calibration"]["method"] == "temperature" and temperature["calibration"]["b"] == 0.0
    for key in ("sensitivity", "specificity"):
        assert temperature[key] == platt[key]
    assert temperature["ece"] != platt["ece"]
    assert finding.operating_point_method == "sensitivity 0.95"  # the rule the refit applied, from the card
    with pytest.raises(ValueError, match="unknown calibration method 'beta'"):
        evaluate_bundle(models_dir / "cxr-pneumonia", npz, split="test", recalibrate="beta")
    with pytest.raises(ValueError, match="fits on the val split"):
        evaluate_bundle(models_dir / "cxr-pneumonia", npz, split="val", recalibrate="isotonic")


def test_card_is_valid_and_documents_its_limits(models_dir: Path) -> None:
    card = load_card(models_dir / "cxr-pneumonia")
    assert card.findings[0].code == "pneumonia"
    assert 0 < card.findings[0].operating_point < card.findings[0].urgent_point < 1
    text = (models_dir / "cxr-pneumonia" / "docs" / "README.md").read_text()
    assert "PAEDIATRIC" in text and "NOT validated on adults" in text


@pytest.mark.parametrize("window", [(2048, 4096), None], ids=["header-window", "percentile-window"])
def test_full_resolution_dicoms_of_test_images_score_like_the_originals(
    npz: Path, tmp_path: Path, pneumonia_predictor, window: tuple[int, int] | None  # type: ignore[no-untyped-def]
) -> None:
    """120 held-out test images, upsampled to 840x700 (a taller-than-wide detector), stored as 12-bit
    DICOM with or without a header window, go through the whole DICOM path (decode, VOI or percentile
    window, crop, resize) and must rank as well as the 28x28 originals."""
    test = load_medmnist(npz)["test"]
    rng = np.random.default_rng(7)
    chosen = rng.choice(len(test.labels), 120, replace=False)
    items, labels, originals = [], [], []
    card = pneumonia_predictor.card
    from secondreader.training.train import predict_logits
    spec = card.findings[0]
    original_p = spec.calibration.probability(
        predict_logits(pneumonia_predictor.network, test.images[chosen], card.input_spec))
    for k, index in enumerate(chosen):
        small = test.images[index, 0].numpy().astype(np.float64)
        square = resize(small, (700, 700), order=3, mode="edge", anti_aliasing=False)
        tall = np.pad(square, ((70, 70), (0, 0)), mode="edge")  # centre crop must remove this again
        path = write(make_cxr_dataset(840, 700, bits_stored=12, pixels=np.clip(tall, 0, 1),
                                      window=window), tmp_path / f"{k}.dcm")
        items.append(InputFile(path.name, path, size=path.stat().st_size))
        labels.append(int(test.labels[index]))
        originals.append(float(original_p[k]))
    results = list(screen_inputs(items, ScreeningOptions(predictors=[pneumonia_predictor], explain=False)))
    dicom_p = np.array([r.findings[0].probability for r in results])
    assert all(r.status.value == "screened" for r in results)
    assert np.median(np.abs(dicom_p - np.array(originals))) <= 0.02
    assert auroc(dicom_p, np.array(labels)) >= 0.95
