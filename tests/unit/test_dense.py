"""Dense (localisation) predictors: probability maps, study logits, peaks, regions, and a bundle
that reloads into ``DensePredictor`` through ``load_predictor``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from secondreader.errors import ModelError
from secondreader.model.card import load_card
from secondreader.model.dense import (
    DensePredictor,
    MapRecipe,
    dense_regions,
    load_predictor,
    map_peaks,
    probability_maps,
    smoothed_logits,
    study_logits,
)
from secondreader.model.network import build_network
from secondreader.model.predictor import TorchPredictor

NETWORK = {"spatial_dims": 2, "in_channels": 1, "out_channels": 1, "channels": [4, 8], "strides": [2],
           "num_res_units": 0}


def write_dense_bundle(folder: Path, *, region_threshold: float = 0.6, flip_average: bool = False) -> Path:
    torch.manual_seed(0)
    network = build_network("UNet", NETWORK, dense=True)
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    torch.save(network.state_dict(), folder / "models" / "model.pt")
    meta = {"name": "tiny-nodule", "version": "0.0.1", "secondreader": {
        "device_uid": "2.25.1", "network": {"class": "UNet", "args": NETWORK},
        "saliency": {"method": "dense", "smoothing_sigma": 1.0, "region_threshold": region_threshold,
                     "region_floor": region_threshold / 2, "flip_average": flip_average},
        "input": {"spatial_shape": [32, 32], "mean": 0.5, "std": 0.25},
        "findings": {"nodule": {"channel": 0, "operating_point": 0.5, "urgent_point": 0.9,
                                "calibration": {"method": "platt", "a": 1.0, "b": 0.0}}}}}
    (folder / "configs" / "metadata.json").write_text(json.dumps(meta))
    return folder


def test_heatmaps_are_sigmoids_of_smoothed_logits_and_scores_do_not_saturate() -> None:
    r, c = np.mgrid[0:41, 0:41]
    disc = torch.from_numpy(((r - 20) ** 2 + (c - 20) ** 2 <= 16).astype(np.float32))
    strong = torch.stack([-12.0 + 40.0 * disc, -12.0 + 60.0 * disc])[:, None]  # two confident nodules
    assert torch.equal(smoothed_logits(strong, 0.0), strong)
    smooth = smoothed_logits(strong, 1.0)
    assert float(smooth[0, 0, 20, 20]) == pytest.approx(28.0, abs=0.01)  # flat inside the disc
    assert float(smooth[0, 0, 20, 25]) < float(smooth[0, 0, 20, 24]) < 28.0  # the edge is smoothed
    heat = probability_maps(strong, 1.0)
    assert torch.allclose(heat, torch.sigmoid(smooth)) and 0 <= float(heat.min()) and float(heat.max()) <= 1
    # both heatmaps top out at a probability of 1.0 in float32, so their maxima tie; the study
    # scores are the smoothed logits and keep the more confident one ahead
    assert float(heat[0].max()) == float(heat[1].max()) == 1.0
    scores = study_logits(smooth)
    assert scores.shape == (2, 1) and scores[0, 0] == pytest.approx(28.0, abs=0.01)
    assert scores[1, 0] == pytest.approx(48.0, abs=0.01)
    # an isolated one-pixel spike is smoothed away rather than kept as a probability-mass blob
    spike = torch.full((1, 1, 21, 21), -20.0)
    spike[0, 0, 10, 10] = 20.0
    assert float(probability_maps(spike, 1.0).max()) < 1e-4


def test_peaks_and_regions_of_a_two_blob_map() -> None:
    r, c = np.mgrid[0:100, 0:120]
    heat = (0.9 * np.exp(-((r - 30) ** 2 + (c - 40) ** 2) / 50) + 0.4 * np.exp(-((r - 70) ** 2 + (c - 90) ** 2) / 50))
    heat = heat.astype(np.float32)
    peaks = map_peaks(heat, floor=0.1)
    assert [(round(p[0]), round(p[1])) for p in peaks] == [(30, 40), (70, 90)]
    assert peaks[0][2] == pytest.approx(0.9, abs=1e-3)
    regions = dense_regions(heat, finding="nodule", frame=1, spacing_mm=(0.5, 0.5), threshold=0.5, floor=0.25)
    assert len(regions) == 1  # the weaker blob peaks under the threshold
    (region,) = regions
    r0, c0, r1, c1 = region.bbox
    assert r0 < 30 < r1 and c0 < 40 < c1 and region.centroid == pytest.approx((30, 40), abs=0.5)
    assert region.area_mm2 == pytest.approx(region.area_px * 0.25, abs=0.05)
    both = dense_regions(heat, finding="nodule", frame=1, spacing_mm=None, threshold=0.3, floor=0.15)
    assert len(both) == 2 and both[0].peak == 1.0 and both[1].peak == pytest.approx(0.4 / 0.9, abs=0.01)
    assert dense_regions(heat, finding="nodule", frame=1, spacing_mm=None, threshold=0.95, floor=0.5) == []


def test_a_dense_bundle_reloads_into_a_dense_predictor(tmp_path: Path) -> None:
    bundle = write_dense_bundle(tmp_path / "tiny-nodule")
    predictor = load_predictor(bundle, device="cpu")
    assert isinstance(predictor, DensePredictor)
    batch = torch.randn(2, 1, 32, 32)
    predictions = predictor.predict(batch)
    assert len(predictions) == 2
    for prediction in predictions:
        assert prediction.logits.shape == (1,) and np.isfinite(prediction.logits).all()
        assert prediction.saliency is not None and prediction.saliency.shape == (1, 32, 32)
        assert 0 <= prediction.saliency.min() and prediction.saliency.max() <= 1
        # the study logit is the map's maximum smoothed logit: the heatmap's maximum is its sigmoid
        top = float(prediction.saliency.max())
        assert 1 / (1 + np.exp(-float(prediction.logits[0]))) == pytest.approx(top, abs=1e-5)
    assert predictor.predict(batch, explain=False)[0].saliency is None


def test_flip_averaged_maps_are_mirror_symmetric_and_served_as_the_card_says(tmp_path: Path) -> None:
    torch.manual_seed(1)
    network = build_network("UNet", {**NETWORK, "norm": "batch"}, dense=True)
    network.train()
    for _ in range(3):  # batch statistics that are not the identity
        network(torch.randn(4, 1, 32, 32) * 2 + 1)
    with pytest.raises(ValueError, match="eval mode"):
        MapRecipe(1.0, flip_average=True).logits(network, torch.randn(1, 1, 32, 32))
    network.eval()
    x = torch.randn(3, 1, 32, 32)
    mirrored = torch.flip(x, dims=(-1,))
    with torch.inference_mode():
        plain = MapRecipe(1.0).logits(network, x)
        averaged = MapRecipe(1.0, flip_average=True).logits(network, x)
        by_hand = smoothed_logits(0.5 * (network(x) + torch.flip(network(mirrored), dims=(-1,))), 1.0)
        # the averaged map of the mirror image is the mirror of the averaged map; the plain map's is not
        assert torch.allclose(MapRecipe(1.0, flip_average=True).logits(network, mirrored),
                              torch.flip(averaged, dims=(-1,)), atol=1e-5)
        assert not torch.allclose(MapRecipe(1.0).logits(network, mirrored), torch.flip(plain, dims=(-1,)), atol=1e-3)
        # the image and its mirror go through as one batch: each image's map is its own
        one_by_one = torch.cat([MapRecipe(1.0, flip_average=True).logits(network, x[i:i + 1]) for i in range(3)])
    assert torch.allclose(averaged, by_hand, atol=1e-5)
    assert torch.allclose(averaged, one_by_one, atol=1e-5)
    served = load_predictor(write_dense_bundle(tmp_path / "flip", flip_average=True), device="cpu")
    unflipped = load_predictor(write_dense_bundle(tmp_path / "plain"), device="cpu")
    assert isinstance(served, DensePredictor) and served.recipe.flip_average
    assert isinstance(unflipped, DensePredictor) and not unflipped.recipe.flip_average
    assert torch.allclose(served.maps(x), MapRecipe(1.0, flip_average=True).logits(served.network, x), atol=1e-5)
    assert not torch.allclose(served.maps(x), unflipped.maps(x), atol=1e-3)


def test_a_classifier_bundle_still_gets_the_torch_predictor(models_dir: Path) -> None:
    assert isinstance(load_predictor(models_dir / "cxr-pneumonia", device="cpu"), TorchPredictor)


def test_dense_cards_are_validated(tmp_path: Path) -> None:
    bundle = write_dense_bundle(tmp_path / "bad", region_threshold=0.6)
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    meta["secondreader"]["saliency"]["region_floor"] = 0.9  # above the threshold
    (bundle / "configs" / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="region_floor"):
        load_card(bundle)
    meta["secondreader"]["saliency"]["region_floor"] = 0.3
    meta["secondreader"]["network"]["class"] = "ResNet"
    (bundle / "configs" / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="network"):
        DensePredictor(load_card(bundle), device="cpu")
