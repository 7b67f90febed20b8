"""The lesion-insertion dataset's parts: insertion models A and B, lung masks, generated chests,
placement, geometry, and the batched serving transform used in training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from secondreader.preprocessing import InputSpec, model_input_transform
from secondreader.training.dense.inputs import _quantiles, standardise
from secondreader.training.lesions import (
    Nodule,
    augment_geometry,
    density_gain,
    footprints,
    generated_chest,
    insert_distractors,
    insert_model_a,
    insert_model_b,
    insert_vessel_mimics,
    lung_mask,
    place_nodules,
    square_picture,
)

from ..factories import chest_phantom


def test_model_a_adds_its_contrast_on_its_footprint_only() -> None:
    picture = np.full((128, 128), 0.3, np.float32)
    nodule, footprint = insert_model_a(picture, np.random.default_rng(1), 64.0, 60.0, 8.0, contrast=(0.1, 0.1))
    assert nodule.model == "A" and nodule.contrast == pytest.approx(0.1)
    added = picture - 0.3
    assert added.max() == pytest.approx(0.1, abs=0.01)  # the peak of the profile is the contrast
    assert np.unravel_index(np.argmax(added), added.shape) in {(64, 60), (63, 60), (64, 59), (64, 61), (65, 60)}
    assert footprint.sum() == pytest.approx(np.pi * 8**2, rel=0.15)  # ellipse of the same area
    assert np.abs(added[:, :40]).max() == 0 and np.abs(added[:40]).max() == 0


def test_model_b_is_an_attenuation_so_it_shows_less_over_dense_areas() -> None:
    dark = np.full((96, 96), 0.2, np.float32)
    bright = np.full((96, 96), 0.8, np.float32)
    a = insert_model_b(dark, np.random.default_rng(7), 48.0, 48.0, 10.0, attenuation=(0.2, 0.2))
    b = insert_model_b(bright, np.random.default_rng(7), 48.0, 48.0, 10.0, attenuation=(0.2, 0.2))
    assert a.model == "B" and a.contrast > 0 and b.contrast > 0
    assert a.contrast / b.contrast == pytest.approx(4.0, rel=0.05)  # (1 - 0.2) / (1 - 0.8)
    assert (dark >= 0.2 - 1e-6).all() and (dark <= 1).all()


def test_the_two_insertion_models_differ_in_profile() -> None:
    """A: peaked (projected sphere); B: flat-topped. Their mean-to-peak ratios inside the nodule differ."""
    ratios = {}
    for name in ("A", "B"):
        values = []
        for seed in range(8):
            picture = np.zeros((96, 96), np.float32)
            rng = np.random.default_rng(seed)
            if name == "A":
                insert_model_a(picture, rng, 48.0, 48.0, 12.0, contrast=(0.1, 0.1))
            else:
                insert_model_b(picture, rng, 48.0, 48.0, 12.0, attenuation=(0.1, 0.1))
            inside = footprints(picture.shape, [Nodule(48.0, 48.0, 6.0, 0.1, "A")])
            values.append(picture[inside].mean() / picture.max())
        ratios[name] = float(np.mean(values))
    assert ratios["B"] > ratios["A"] + 0.05


def test_lung_mask_finds_two_lungs_of_a_phantom() -> None:
    picture = chest_phantom(256, 256).astype(np.float32)
    mask = lung_mask(picture)
    assert 0.05 < mask.mean() < 0.4
    rows, cols = np.nonzero(mask)
    assert (cols < 128).any() and (cols > 128).any()  # both sides
    assert not mask[:, 124:132].any()  # not across the mediastinum
    assert picture[mask].mean() < picture[~mask].mean()  # lungs are the dark parts


def test_generated_chests_are_deterministic_and_have_dark_lungs() -> None:
    a, mask_a = generated_chest(np.random.default_rng(3), 256)
    b, mask_b = generated_chest(np.random.default_rng(3), 256)
    c, _ = generated_chest(np.random.default_rng(4), 256)
    assert a.dtype == np.float32 and a.shape == (256, 256) and 0 <= a.min() and a.max() <= 1
    assert np.array_equal(a, b) and np.array_equal(mask_a, mask_b) and not np.array_equal(a, c)
    assert 0.05 < mask_a.mean() < 0.45
    assert a[mask_a].mean() < a[100:200, 120:136].mean()  # lungs darker than the mediastinum


def test_nodules_are_placed_inside_the_mask_and_apart() -> None:
    mask = np.zeros((200, 200), bool)
    mask[50:150, 30:90] = True
    placed = place_nodules(np.random.default_rng(0), mask, 3, diameter_fraction=(0.04, 0.08))
    assert len(placed) == 3
    for row, col, radius in placed:
        assert mask[int(row), int(col)] and 4 <= radius <= 8
    for i, (r1, c1, s1) in enumerate(placed):
        for r2, c2, s2 in placed[i + 1:]:
            assert np.hypot(r1 - r2, c1 - c2) > s1 + s2


def test_identity_geometry_keeps_the_picture() -> None:
    picture = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    mask = picture > 0.5
    out, out_mask = augment_geometry(picture, mask, [np.random.default_rng(1)], 64, scale=(1.0, 1.0),
                                     rotate_deg=0.0, translate=0.0, flip=False)
    assert np.allclose(out[0], picture, atol=1e-5) and np.array_equal(out_mask[0], mask)
    half, _ = augment_geometry(picture, mask, [np.random.default_rng(1)], 32, scale=(1.0, 1.0),
                               rotate_deg=0.0, translate=0.0, flip=False)
    assert np.allclose(half[0], picture.reshape(32, 2, 32, 2).mean(axis=(1, 3)), atol=0.2)


def test_supersampled_geometry_is_the_serving_area_resize() -> None:
    # a radiograph with fine detail (1-pixel stripes and noise at 1024 px): training pictures made
    # with supersample 4 from its 256 x 4 work picture are what serving's area resize makes of it,
    # while sampling straight onto 256 blurs the detail (the train/serve gap this option closes)
    rng = np.random.default_rng(0)
    source = (0.5 + 0.2 * rng.standard_normal((1100, 1024)) + 0.2 * (np.arange(1024) % 3 == 0)).astype(np.float32)
    served = square_picture(source, 256)
    work = square_picture(source, 1024)
    lungs = np.zeros(work.shape, bool)
    lungs[100:700, 200:900] = True
    identity = {"scale": (1.0, 1.0), "rotate_deg": 0.0, "translate": 0.0, "flip": False}
    fine, fine_mask = augment_geometry(work, lungs, [np.random.default_rng(1)] * 3, 256, supersample=4, chunk=2,
                                       **identity)
    assert fine.shape == (3, 256, 256) and fine_mask.shape == (3, 256, 256)
    assert np.allclose(fine, served[None], atol=1e-5)
    assert np.array_equal(fine_mask[0], lungs.reshape(256, 4, 256, 4).mean(axis=(1, 3)) > 0.5)
    coarse, _ = augment_geometry(square_picture(source, 320), lungs[:320, :320], [np.random.default_rng(1)], 256,
                                 **identity)

    def detail(x: np.ndarray) -> float:
        return float(np.abs(np.diff(x, axis=-1)).mean())

    assert detail(coarse[0]) < 0.9 * detail(served)
    # chunking the pictures changes nothing, and a real transform keeps the same draws per picture
    moved = {"scale": (0.9, 1.1), "rotate_deg": 8.0, "translate": 0.05, "elastic": 0.03}
    one, _ = augment_geometry(work, lungs, [np.random.default_rng(k) for k in range(5)], 64, supersample=2, chunk=5,
                              **moved)
    parts, _ = augment_geometry(work, lungs, [np.random.default_rng(k) for k in range(5)], 64, supersample=2, chunk=2,
                                **moved)
    assert np.array_equal(one, parts)


def test_elastic_geometry_bends_the_picture_by_at_most_its_largest_shift() -> None:
    side = 64
    ramp = np.tile((np.arange(side, dtype=np.float32) + 0.5) / side, (side, 1))  # value = column position
    ramp_t = ramp.T.copy()  # value = row position
    kwargs = {"scale": (1.0, 1.0), "rotate_deg": 0.0, "translate": 0.0, "flip": False}
    mask = np.ones((side, side), bool)
    for picture in (ramp, ramp_t):
        bent, _ = augment_geometry(picture, mask, [np.random.default_rng(3)], side, elastic=0.05, **kwargs)
        inner = (slice(8, -8), slice(8, -8))  # away from the border, where values are clamped
        shift = np.abs(bent[0] - picture)[inner]
        assert shift.max() <= 0.05 + 1e-3  # a ramp's value moves by the shift, a fraction of the side
        assert shift.max() > 0.01
        again, _ = augment_geometry(picture, mask, [np.random.default_rng(3)], side, elastic=0.05, **kwargs)
        assert np.array_equal(bent, again)
    used = np.random.default_rng(3)
    plain, _ = augment_geometry(ramp, mask, [used], side, **kwargs)
    assert np.allclose(plain[0], ramp, atol=1e-5)  # elastic 0 (the default) bends nothing
    # and draws nothing beyond the similarity transform's zoom, angle and shift (no mirror here):
    # the generator goes on to the same nodules and distractors as before the option existed
    reference = np.random.default_rng(3)
    reference.uniform(), reference.uniform(), reference.uniform(size=2)
    assert used.random() == reference.random()


def test_density_gain_is_smooth_and_bounded() -> None:
    picture = np.full((64, 64), 0.5, np.float32)
    out = density_gain(picture, np.random.default_rng(5), 0.2)
    gain = out / picture
    assert gain.min() >= 0.8 - 1e-6 and gain.max() <= 1.2 + 1e-6 and gain.max() - gain.min() > 0.05
    assert np.abs(np.diff(gain, axis=1)).max() < 0.05  # smooth: no edges that could look like a nodule
    assert np.array_equal(out, density_gain(picture, np.random.default_rng(5), 0.2))


def test_batched_standardise_equals_the_serving_transform() -> None:
    spec = InputSpec(size=(64, 64), mean=0.4, std=0.25)
    pictures = torch.rand(3, 1, 64, 64) ** torch.tensor([0.5, 1.0, 2.0]).view(3, 1, 1, 1)
    batched = standardise(pictures, spec)
    transform = model_input_transform(spec)
    for i in range(3):
        one = torch.as_tensor(transform(pictures[i])).as_subclass(torch.Tensor)
        assert torch.allclose(batched[i], one, atol=1e-5)


def test_quantiles_from_one_partition_are_kthvalues_interpolation_bit_for_bit() -> None:
    # the shipped weights were trained with the percentile stretch's quantiles taken from two
    # kthvalue calls each; one numpy partition must give the same float32 values, not nearly them
    g = torch.Generator().manual_seed(3)
    for n in (1, 2, 7, 65536):
        flat = torch.rand(4, n, generator=g) ** 2
        flat[0] = 0.25  # ties
        qs = (0.0, 0.005, 0.5, 0.995, 1.0)
        for q, got in zip(qs, _quantiles(flat, qs), strict=True):
            position = q * (n - 1)
            k = int(np.floor(position))
            below = flat.kthvalue(k + 1, dim=1).values
            want = below if k + 1 >= n else below + (flat.kthvalue(k + 2, dim=1).values - below) * (position - k)
            assert torch.equal(got, want), (n, q)
            assert torch.allclose(got, torch.quantile(flat, q, dim=1), atol=1e-6)


def test_stretch_jitter_is_what_a_tighter_field_of_view_does_to_the_served_stretch() -> None:
    # a film with a dark border; served cropped inside it, the percentile stretch starts at the
    # anatomy's darkest values instead of the border's: standardise's black and white points
    # reproduce that from the whole film, pixel for pixel
    spec = InputSpec(size=(64, 64), mean=0.4, std=0.25)
    whole = torch.zeros(1, 1, 64, 64)
    whole[..., 6:58, 6:58] = 0.3 + 0.6 * torch.rand(1, 1, 52, 52, generator=torch.Generator().manual_seed(0))
    inside = whole[..., 6:58, 6:58]
    served = standardise(inside, spec)
    low, high = (float(torch.quantile(whole.flatten(), q)) for q in (0.005, 0.995))
    in_low, in_high = (float(torch.quantile(inside.flatten(), q)) for q in (0.005, 0.995))
    points = (torch.tensor([(in_low - low) / (high - low)]), torch.tensor([(in_high - low) / (high - low)]))
    jittered = standardise(whole, spec, points=points)[..., 6:58, 6:58]
    # equal but where the first stretch already clipped the brightest pixels (between the whole
    # film's white point and the crop's: the top fraction of a percent)
    unclipped = inside < high
    assert float(unclipped.float().mean()) > 0.99
    assert torch.allclose(jittered[unclipped], served[unclipped], atol=1e-4)
    assert not torch.allclose(standardise(whole, spec)[..., 6:58, 6:58], served, atol=0.1)
    assert torch.equal(standardise(whole, spec, points=(torch.zeros(1), torch.ones(1))), standardise(whole, spec))


def test_stretch_points_are_drawn_only_when_configured() -> None:
    from secondreader.training.config import LesionConfig
    from secondreader.training.dense.augment import _stretch_points

    base = LesionConfig(backgrounds=[])
    g = torch.Generator().manual_seed(1)
    assert _stretch_points(8, base, g) is None
    assert torch.equal(torch.rand(1, generator=g), torch.rand(1, generator=torch.Generator().manual_seed(1)))
    points = _stretch_points(4000, base.model_copy(update={"stretch_jitter": (0.3, 0.05)}), g)
    assert points is not None
    black, white = points
    assert 0 <= float(black.min()) and float(black.max()) <= 0.3 and 0.95 <= float(white.min())
    assert 0.4 < float((black > 0).float().mean()) < 0.6  # half the pictures (the configured probability)


def test_nodule_validation_and_scaling() -> None:
    with pytest.raises(ValueError, match="radius"):
        Nodule(1, 1, 0, 0.1, "A")
    with pytest.raises(ValueError, match="model"):
        Nodule(1, 1, 2, 0.1, "C")
    scaled = Nodule(10.0, 20.0, 4.0, 0.1, "B").scaled(0, 0, 0.5)
    assert (scaled.row, scaled.col, scaled.radius) == (4.75, 9.75, 2.0)


def test_distractors_are_sharp_bright_non_nodules() -> None:
    picture = np.full((128, 128), 0.3, np.float32)
    assert insert_distractors(picture, np.random.default_rng(2), 4) == 4
    changed = picture > 0.3 + 1e-3
    assert 0 < changed.mean() < 0.2 and picture.max() <= 1.0
    # thin structures: most changed pixels have an unchanged pixel within 3 px
    near_background = ~ndimage.binary_erosion(changed, iterations=3)
    assert (near_background & changed).sum() > 0.8 * changed.sum()


def test_vessel_mimics_are_branching_tubes_and_round_dots_inside_the_lungs() -> None:
    picture, lungs = generated_chest(np.random.default_rng(4), 256)
    before = picture.copy()
    assert insert_vessel_mimics(picture, np.random.default_rng(8), lungs, 3) == 3
    added = picture - before
    drawn = added > 1e-3
    assert 0.002 < drawn.mean() < 0.1 and added.min() >= -1e-6  # denser, never lighter
    # they stay in the lungs (fading over a couple of pixels at the edge)
    far_outside = ~ndimage.binary_dilation(lungs, iterations=6)
    assert not drawn[far_outside].any()
    # thin: no vessel wider than the largest calibre (radius 1% of the side, 2.6 px) ...
    assert not ndimage.binary_erosion(drawn, iterations=5).any()
    # ... and the densest spots are the end-on dots: small compact blobs, denser than the tubes
    dense = added > 0.75 * added.max()
    blobs, n = ndimage.label(dense)
    assert n >= 1 and max(int((blobs == k).sum()) for k in range(1, n + 1)) < 60
    assert np.percentile(added[drawn], 50) < 0.6 * added.max()
    again = before.copy()
    insert_vessel_mimics(again, np.random.default_rng(8), lungs, 3)
    assert np.array_equal(again, picture)
    untouched = before.copy()
    assert insert_vessel_mimics(untouched, np.random.default_rng(8), lungs, 0) == 0
    assert np.array_equal(untouched, before)
