"""A learning curve over the number of real backgrounds (``lesions.fold_backgrounds``): which pool
pictures each fold's model trains on, and the larger pool it draws them from."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from secondreader.training.config import BackgroundConfig, LesionConfig
from secondreader.training.dense.data import build_pool, fit_members, pictures_per_background
from secondreader.training.lesions import RealBackground, generated_chest


def _lesions(n_real: int = 6, **kw: object) -> LesionConfig:
    backgrounds = [BackgroundConfig(id=f"bg{i}", path=f"bg{i}.png") for i in range(n_real)]
    return LesionConfig.model_validate({"backgrounds": backgrounds, **kw})


def _groups(n_real: int, per_background: int, generated: int) -> np.ndarray:
    """A pool's groups as build_pool lays them out: each real background's pictures together, then
    the generated chests (-1)."""
    return np.array([g for g in range(n_real) for _ in range(per_background)] + [-1] * generated, np.int16)


def test_without_a_learning_curve_a_fold_trains_on_every_other_picture() -> None:
    lc = _lesions()
    groups = _groups(6, 10, 7)
    assert pictures_per_background(lc, 6, 10) == 10
    for held in range(5):
        members, seen = fit_members(groups, lc, per_background=10, seed=3, held=held)
        assert members.tolist() == np.nonzero(groups != held)[0].tolist()
        assert seen == [g for g in range(6) if g != held]
    members, seen = fit_members(groups, lc, per_background=10, seed=3)
    assert members.tolist() == list(range(len(groups))) and seen == list(range(6))


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_a_learning_curve_fold_sees_k_other_films_and_as_many_real_pictures(k: int) -> None:
    lc = _lesions(fold_backgrounds=k)
    per_background = 300
    count = pictures_per_background(lc, 6, per_background)
    assert count == -(-per_background * 5 // k)  # 5 others' worth, shared among k
    groups = _groups(6, count, 900)
    draws = set()
    for held in range(5):
        members, seen = fit_members(groups, lc, per_background=per_background, seed=20261128, held=held)
        real = groups[members]
        assert len(seen) == k and held not in seen and len(set(seen)) == k
        assert sorted(set(real[real >= 0].tolist())) == seen
        assert per_background * 5 <= int((real >= 0).sum()) < per_background * 5 + k  # as many real pictures
        assert int((real < 0).sum()) == 900  # every generated chest, as in the ordinary fold
        # each background's first pictures: the ones an ordinary pool holds, then more of the same stream
        for g in seen:
            assert members[real == g].tolist() == np.nonzero(groups == g)[0][:count].tolist()
        # the same draw for its validation pictures (another pool size, the same films), and every time
        val_groups = _groups(6, pictures_per_background(lc, 6, 40), 200)
        assert fit_members(val_groups, lc, per_background=40, seed=20261128, held=held)[1] == seen
        assert fit_members(groups, lc, per_background=per_background, seed=20261128, held=held)[1] == seen
        draws.add(tuple(seen))
    if k < 4:
        assert len(draws) > 1, "each fold draws its own films"
    # the final model trains on the ordinary pool: the first per_background pictures of every film
    final, seen = fit_members(groups, lc, per_background=per_background, seed=20261128)
    assert seen == list(range(6)) and np.bincount(groups[final] + 1).tolist() == [900] + [per_background] * 6


def test_a_learning_curve_of_every_other_film_is_the_ordinary_run() -> None:
    lc = _lesions(fold_backgrounds=5)
    assert pictures_per_background(lc, 6, 300) == 300
    groups = _groups(6, 300, 9)
    for held in range(5):
        members, _ = fit_members(groups, lc, per_background=300, seed=1, held=held)
        assert members.tolist() == np.nonzero(groups != held)[0].tolist()


def test_fold_backgrounds_must_be_a_count() -> None:
    with pytest.raises(ValidationError, match="fold_backgrounds"):
        _lesions(fold_backgrounds=0)


def test_a_larger_pool_begins_with_the_ordinary_pools_pictures() -> None:
    """A learning-curve pool holds more pictures of each film; its first ones are the ordinary
    pool's, nodules included, so the final model and an ordinary fold train on the same pictures."""
    side = 64
    lc = _lesions(2, input_size=side, work_size=80, generated_bases=2, max_nodules=2, distractor_fraction=0.5,
                  elastic=0.03, density_field=0.15, diameter_fraction=(0.05, 0.1), contrast=(0.1, 0.2))
    backgrounds = [RealBackground(f"bg{i}", generated_chest(np.random.default_rng(i), 96)[0]) for i in range(2)]
    small = build_pool(backgrounds, lc, per_background=3, generated=2, seed=5, stream=1)
    large = build_pool(backgrounds, lc, per_background=5, generated=2, seed=5, stream=1)
    for g in range(2):
        a, b = np.nonzero(small.groups == g)[0], np.nonzero(large.groups == g)[0][:3]
        np.testing.assert_array_equal(small.images[a], large.images[b])
        np.testing.assert_array_equal(small.targets[a], large.targets[b])
        assert [small.nodules[i] for i in a] == [large.nodules[i] for i in b]
    assert any(small.nodules), "the pictures carry nodules: the comparison covers them"
    np.testing.assert_array_equal(small.images[small.groups < 0], large.images[large.groups < 0])
