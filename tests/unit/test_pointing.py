"""The pointing game of ``secondreader evaluate --data MANIFEST``, against hand-made heatmaps."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from secondreader.model.predictor import Prediction
from secondreader.preprocessing import InputSpec
from secondreader.training.data import Split
from secondreader.training.evaluate import heatmap_peak, saliency_pointing


def test_the_peak_of_a_flat_top_is_its_centre_and_an_empty_map_has_none() -> None:
    heat = np.zeros((8, 8), np.float32)
    assert heatmap_peak(heat) is None
    heat[2:5, 4:7] = 1.0  # a 3 x 3 plateau: argmax would say (2, 4)
    assert heatmap_peak(heat) == (3, 5)
    heat[7, 0] = 2.0
    assert heatmap_peak(heat) == (7, 0)


@dataclass
class _Card:
    input_spec: InputSpec


class _FixedMaps:
    """A stand-in predictor whose heatmaps are given: the game's arithmetic, not a model, is tested."""

    def __init__(self, maps: list[np.ndarray]) -> None:
        self.card = _Card(InputSpec(size=(8, 8), mean=0.0, std=1.0))
        self.maps = maps
        self.calls = 0

    def predict(self, batch: torch.Tensor, *, explain: bool = True) -> list[Prediction]:
        out = [Prediction(logits=np.zeros(1, np.float32), saliency=self.maps[self.calls + i][None])
               for i in range(len(batch))]
        self.calls += len(batch)
        return out


def test_pointing_counts_peaks_on_or_beside_the_mark_and_reports_chance() -> None:
    masks = np.zeros((5, 8, 8), bool)
    masks[0, 1, 1] = masks[1, 1, 1] = masks[2, 1, 1] = masks[4, 6, 6] = True
    maps = [np.zeros((8, 8), np.float32) for _ in range(4)]
    maps[0][1, 1] = 1.0  # on the mark: hit
    maps[1][2, 2] = 1.0  # one cell off diagonally: hit
    maps[2][4, 4] = 1.0  # three cells off: miss
    # maps[3]: empty, for image 4 (image 3 is a negative and is not scored): miss
    split = Split(images=torch.rand(5, 1, 8, 8), labels=np.array([1, 1, 1, 0, 1]), masks=masks,
                  annotated=np.array([True, True, True, False, True]))
    report = saliency_pointing(_FixedMaps(maps), split)  # type: ignore[arg-type]
    assert (report["n"], report["hits"], report["hit_rate"]) == (4, 2, 0.5)
    assert report["hit_rate_ci95"] == [0.15, 0.85]  # Wilson, 2 of 4: 0.5 +- 1.96 * 0.35 / 1.96
    # each mark, grown by a cell, covers 9 of the 64 cells
    assert report["chance_rate"] == round(9 / 64, 4)
