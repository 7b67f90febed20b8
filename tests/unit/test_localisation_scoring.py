"""How the localisation recipe scores maps where a label is unknown, and mines false peaks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from secondreader.model.dense import DensePredictor, MapRecipe, load_predictor
from secondreader.preprocessing import InputSpec
from secondreader.training.config import LesionConfig
from secondreader.training.dense.data import EvalSet, Pool
from secondreader.training.dense.evaluate import Scored, predict_maps, score_set, sensitivity_by_band
from secondreader.training.dense.fit import mine_hard_negatives
from secondreader.training.lesions import Nodule, augment_geometry, discs
from secondreader.training.modelcard_dense import _band_table

from .test_dense import write_dense_bundle

SIDE = 64
SPEC = InputSpec(size=(SIDE, SIDE), mean=0.0, std=1.0)


def _blob(row: float, col: float, height: float, radius: float = 3.0) -> np.ndarray:
    r, c = np.mgrid[0:SIDE, 0:SIDE]
    return np.asarray(height * np.exp(-((r - row) ** 2 + (c - col) ** 2) / (2 * radius**2)), dtype=np.float32)


class _FixedMaps(torch.nn.Module):
    """A stand-in network that answers the i-th input with the i-th of some known logit maps
    (the input's first pixel holds i), so the scoring code is tested on maps chosen here."""

    def __init__(self, maps: list[np.ndarray]) -> None:
        super().__init__()
        self.maps = torch.from_numpy(np.stack(maps))[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maps[x[:, 0, 0, 0].round().long()]


def _indexed_inputs(n: int) -> torch.Tensor:
    x = torch.zeros(n, 1, SIDE, SIDE)
    x[:, 0, 0, 0] = torch.arange(n, dtype=torch.float32)
    return x


def test_discs_are_given_as_fractions_of_the_picture() -> None:
    mask = discs((100, 200), [(0.5, 0.25, 0.05)])
    assert mask[50, 50] and mask[50, 59] and not mask[50, 61] and not mask[40, 150]
    assert abs(int(mask.sum()) - np.pi * 10**2) < 12


def test_stacked_masks_follow_the_picture_through_the_same_geometry() -> None:
    picture = np.random.default_rng(0).random((48, 48)).astype(np.float32)
    lungs, unknown = picture > 0.5, discs((48, 48), [(0.3, 0.6, 0.1)])
    _, one = augment_geometry(picture, lungs, [np.random.default_rng(5)], 40, scale=(0.8, 1.2), rotate_deg=10,
                              translate=0.1)
    _, both = augment_geometry(picture, np.stack([lungs, unknown]), [np.random.default_rng(5)], 40,
                               scale=(0.8, 1.2), rotate_deg=10, translate=0.1)
    _, alone = augment_geometry(picture, unknown, [np.random.default_rng(5)], 40, scale=(0.8, 1.2), rotate_deg=10,
                                translate=0.1)
    assert both.shape == (1, 2, 40, 40)
    assert np.array_equal(both[0, 0], one[0]) and np.array_equal(both[0, 1], alone[0]) and both[0, 1].any()


def test_what_the_model_finds_where_the_label_is_unknown_is_neither_hit_nor_false() -> None:
    nodule = Nodule(40.0, 40.0, 4.0, 0.2, "B")
    opacity = (15.0, 15.0)  # a real opacity the model fires on, stronger than on the nodule
    maps = [_blob(*opacity, 9.0) + _blob(40, 40, 5.0) - 6.0, _blob(*opacity, 9.0) - 6.0]
    unknown = discs((SIDE, SIDE), [(15 / SIDE, 15 / SIDE, 12 / SIDE)])
    data = EvalSet(_indexed_inputs(2), [[nodule], []], normalised=True)
    lc = LesionConfig(backgrounds=[])
    strict = score_set(_FixedMaps(maps), data, SPEC, lc, MapRecipe(0.0))
    assert strict.logits.tolist() == [3.0, 3.0]  # the opacity scores both studies
    assert strict.images[0].false_scores.size == 1 and strict.images[1].false_scores.size == 1
    data.unknown = [unknown, unknown]
    kind = score_set(_FixedMaps(maps), data, SPEC, lc, MapRecipe(0.0))
    assert abs(kind.logits[0] - (-1.0)) < 1e-3 and kind.logits[1] < -5.9  # the rest of each map scores it
    assert kind.images[0].false_scores.size == 0 and kind.images[1].false_scores.size == 0
    assert kind.images[0].lesion_scores.tolist() == strict.images[0].lesion_scores.tolist()


def test_hard_negatives_are_the_real_backgrounds_false_peaks_only() -> None:
    maps = [_blob(40, 40, 8.0) + _blob(12, 50, 8.0) + _blob(50, 10, 8.0) - 4.0,  # nodule, false, unknown label
            _blob(20, 20, 8.0) - 4.0]  # a generated chest's false peak: not mined
    weights = np.ones((2, SIDE, SIDE), np.uint8)
    weights[0, 44:56, 4:16] = 0
    pool = Pool(np.zeros((2, SIDE, SIDE), np.float16), np.zeros((2, SIDE, SIDE), np.uint8), weights,
                np.asarray([0, -1], np.int16), [[Nodule(40.0, 40.0, 4.0, 0.2, "A")], []])
    pool.images[:, 0, 0] = [0, 1]  # the stand-in network reads the index from the first pixel
    mined = mine_hard_negatives(_FixedMaps(maps), pool, np.arange(2), SPEC, recipe=MapRecipe(0.0))
    assert mined == {0: [(12, 50)]}


def test_sensitivity_by_band_counts_each_nodule_in_its_contrast_and_diameter_band() -> None:
    # (radius on a 100-px grid, contrast), score: found at a threshold of 1.0 when the score is >= 1
    nodules = [(1.5, 0.05), (1.5, 0.12), (2.5, 0.12), (4.0, 0.30), (4.0, 0.18)]
    scores = np.array([-np.inf, 2.0, 0.5, 3.0, 1.0])
    bands = sensitivity_by_band(scores, nodules, 1.0, side=100)
    contrast = {(b["from"], b["to"]): (b["n"], b["sensitivity"]) for b in bands["contrast"]}
    assert contrast == {(0.0, 0.10): (1, 0.0), (0.10, 0.15): (2, 0.5), (0.15, 0.20): (1, 1.0), (0.20, None): (1, 1.0)}
    # diameters 3%, 3%, 5%, 8%, 8% of the side
    diameter = {(b["from"], b["to"]): (b["n"], b["sensitivity"]) for b in bands["diameter_fraction"]}
    assert diameter == {(0.0, 0.04): (2, 0.5), (0.04, 0.06): (1, 0.0), (0.06, None): (2, 1.0)}
    empty = sensitivity_by_band(np.zeros(0), [], 1.0, side=100)
    assert all(b["n"] == 0 and b["sensitivity"] is None for b in empty["contrast"])
    card = _band_table({"by_band_at_1": bands})
    assert "| contrast 0.1-0.15 | 2 | 0.500 |" in card
    assert "| diameter < 4% of the width (about < 14 mm) | 2 | 0.500 |" in card
    assert _band_table({}) == ""


def test_training_evaluates_the_map_the_bundle_serves(tmp_path: Path) -> None:
    """Training's evaluation (``predict_maps``) and the served ``DensePredictor`` make the same map,
    with and without the mirror average."""
    for flip in (False, True):
        predictor = load_predictor(write_dense_bundle(tmp_path / f"flip-{flip}", flip_average=flip), device="cpu")
        assert isinstance(predictor, DensePredictor) and predictor.recipe.flip_average is flip
        x = torch.randn(3, 1, 32, 32)
        evaluated = predict_maps(predictor.network, x, recipe=predictor.recipe)
        assert np.allclose(evaluated, predictor.maps(x)[:, 0].numpy(), atol=1e-5)


def test_scored_sets_keep_each_nodules_size_and_contrast_through_json() -> None:
    maps = [_blob(20, 20, 6.0), _blob(40, 40, 6.0)]
    nodules = [[Nodule(20.0, 20.0, 3.0, 0.12, "B")], []]
    scored = score_set(_FixedMaps(maps), EvalSet(_indexed_inputs(2), nodules, normalised=True), SPEC,
                       LesionConfig(backgrounds=[], input_size=SIDE), MapRecipe(1.0))
    assert scored.nodules == [[(3.0, 0.12)], []]
    again = Scored.from_json(scored.to_json())
    assert again.nodules == scored.nodules
    assert again.images[0].lesion_scores == pytest.approx(scored.images[0].lesion_scores, abs=1e-6)
    legacy = scored.to_json()
    del legacy["nodules"]  # a fold kept by an older version
    assert Scored.from_json(legacy).nodules is None
