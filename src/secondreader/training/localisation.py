"""Training and honest evaluation of a dense localisation model (``cxr-nodule``).

``secondreader train training/configs/cxr-nodule.yaml`` runs :func:`train_localisation`:

1. read the real backgrounds through the serving chain and build the lesion-insertion pools
   (:mod:`secondreader.training.lesions`, insertion model A) on real and generated chests;
2. **leave one real background out** at a time: train on the other backgrounds (and the generated
   chests), calibrate on a validation pool without the held-out background, then test on the
   held-out background with nodules inserted by the *other* insertion model (B) at the source
   resolution, through the serving chain (``prepare_frame``);
3. train the shipped model on every background, calibrate it and fix its operating point on
   validation, test it on new generated chests with model-B nodules;
4. write the MONAI bundle (metadata, state dict, model card) with the pooled leave-one-out metrics
   (study-level AUROC with a bootstrap interval, FROC sensitivities at 0.25-2 false regions per
   image with intervals) as the headline.

Steps 2 and 3 run side by side in ``schedule.workers`` spawned processes (the same weights as in one).

Training augments for robustness, not for the generator: gamma and linear contrast, Gaussian blur,
noise, scale (random-size crops) and geometry (scale, rotation, translation, left-right flip).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.utils import set_determinism
from scipy import ndimage

from ..model.dense import MapRecipe, build_dense_network, map_peaks, study_logits
from ..preprocessing import InputSpec, prepare_frame
from ..scoring.calibration import Calibrator
from .config import BackgroundConfig, LesionConfig, TrainConfig, run_digest
from .froc import (
    FROC_RATES,
    ImageDetections,
    froc_bootstrap,
    froc_sensitivities,
    froc_threshold,
    match_image,
    sensitivity_at_threshold,
)
from .lesions import (
    Nodule,
    RealBackground,
    augment_geometry,
    density_gain,
    discs,
    generated_chest,
    insert_distractors,
    insert_model_a,
    insert_model_b,
    insert_vessel_mimics,
    load_background,
    lung_mask,
    place_nodules,
    shrink,
    square_picture,
)
from .losses import Loss, build_loss, describe_loss
from .metrics import auroc, binary_metrics, decision_rates
from .plots import reliability_png
from .train import (
    _state_dict_bytes,
    bundle_header,
    calibrate_on_validation,
    init_source,
    to_layout,
    training_device,
    training_hardware,
    training_memory_format,
    training_progress,
)

__all__ = ["EvalSet", "Pool", "build_pool", "build_test_set", "fit_dense_network", "fit_members",
           "pictures_per_background", "pool_eval_set", "standardise", "train_localisation"]

logger = logging.getLogger(__name__)

#: Seeds of the separate random streams (pool, validation, tests, generated tests).
_TRAIN, _VAL, _TEST, _TEST_GENERATED, _FOLD_DRAW = 1, 2, 3, 4, 5


# -- data ------------------------------------------------------------------------------------------

@dataclass(slots=True)
class Pool:
    """Pictures on the model grid with inserted model-A nodules.

    ``images`` float16 (N, S, S) in [0, 1]; ``targets`` uint8 (N, S, S) nodule footprints;
    ``weights`` uint8 (N, S, S) loss weights (0 where the label is unknown); ``groups`` int16 (N,)
    the real background's index, -1 for generated chests; ``nodules`` one list per picture.
    """

    images: np.ndarray
    targets: np.ndarray
    weights: np.ndarray
    groups: np.ndarray
    nodules: list[list[Nodule]]

    def __len__(self) -> int:
        return len(self.groups)


@dataclass(slots=True)
class EvalSet:
    """Model inputs and their truth: ``inputs`` float32 (N, 1, S, S) (normalised, or pictures in
    [0, 1] when ``normalised`` is false), ``nodules`` per image on the model grid, and per image
    where its label is unknown (bool (S, S): a real opacity, or real lesions), or None."""

    inputs: torch.Tensor
    nodules: list[list[Nodule]]
    normalised: bool
    unknown: list[np.ndarray | None] | None = None

    @property
    def labels(self) -> np.ndarray:
        return np.asarray([1 if n else 0 for n in self.nodules], dtype=np.int64)


def _resolve_background(bg: BackgroundConfig, root: Path) -> Path:
    if bg.pydicom_data:
        from pydicom.data import get_testdata_file

        found = get_testdata_file(bg.pydicom_data)
        if found is None:
            raise FileNotFoundError(f"background {bg.id}: pydicom-data file {bg.pydicom_data} is not installed "
                                    "(pip install pydicom-data)")
        return Path(str(found))
    if bg.path is None:
        raise ValueError(f"background {bg.id} names neither path nor pydicom_data")
    return root / bg.path


def load_backgrounds(lesions: LesionConfig, root: Path) -> list[RealBackground]:
    """Every configured real background, area-reduced to ``test_max_side`` at most."""
    out = []
    for bg in lesions.backgrounds:
        picture = load_background(_resolve_background(bg, root), window=bg.window, flip_rows=bg.flip_rows,
                                  invert=bg.invert)
        picture = shrink(picture, lesions.test_max_side)
        unknown = discs(picture.shape, [(u.row, u.col, u.radius) for u in bg.unknown]) if bg.unknown else None
        out.append(RealBackground(bg.id, picture, real_lesions=bg.real_lesions, unknown=unknown))
    return out


def _nodule_count(rng: np.random.Generator, lc: LesionConfig) -> int:
    return int(rng.integers(1, lc.max_nodules + 1)) if rng.random() < lc.positive_fraction else 0


def _insert_a(picture: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
              lc: LesionConfig) -> tuple[list[Nodule], np.ndarray]:
    nodules, target = [], np.zeros(picture.shape, dtype=bool)
    for row, col, radius in place_nodules(rng, mask, _nodule_count(rng, lc), diameter_fraction=lc.diameter_fraction):
        nodule, footprint = insert_model_a(picture, rng, row, col, radius, contrast=lc.contrast)
        nodules.append(nodule)
        target |= footprint
    return nodules, target


def build_pool(backgrounds: Sequence[RealBackground], lc: LesionConfig, *, per_background: int, generated: int,
               seed: int, stream: int) -> Pool:
    """Training (or validation) pictures: each real background ``per_background`` times under new
    geometry, and ``generated`` pictures of generated chests, each with 0-``max_nodules`` model-A
    nodules. A background with real lesions gets loss weight 0 in its (dilated) lungs, except on
    the inserted nodules; one with unknown regions gets weight 0 there and no nodule inside them."""
    side = lc.input_size
    works = [square_picture(bg.picture, lc.work_size) for bg in backgrounds]
    masks = [lung_mask(square_picture(bg.picture, side)) for bg in backgrounds]
    work_masks = [ndimage.zoom(m.astype(np.float32), lc.work_size / side, order=0) > 0.5 for m in masks]
    for g, bg in enumerate(backgrounds):  # lungs and unknown regions, transformed together
        if bg.unknown is not None:
            work_masks[g] = np.stack([work_masks[g], square_picture(bg.unknown.astype(np.float32), lc.work_size) > 0])
    bases = [generated_chest(np.random.default_rng([seed, stream, 99, k]), lc.work_size)
             for k in range(min(generated, max(1, lc.generated_bases)))] if generated else []
    n = len(backgrounds) * per_background + generated
    pool = Pool(np.zeros((n, side, side), np.float16), np.zeros((n, side, side), np.uint8),
                np.ones((n, side, side), np.uint8), np.zeros(n, np.int16), [])
    k = 0
    jobs = [(g, list(range(per_background))) for g in range(len(backgrounds))]
    jobs += [(-1 - b, list(range(b, generated, len(bases)))) for b in range(len(bases))]
    for group, members in jobs:
        rngs = [np.random.default_rng([seed, stream, group + 1000, j]) for j in members]
        work, work_mask = (works[group], work_masks[group]) if group >= 0 else bases[-1 - group]
        pictures, masks_ = augment_geometry(work, work_mask, rngs, side, scale=lc.scale, rotate_deg=lc.rotate_deg,
                                            translate=lc.translate, elastic=lc.elastic,
                                            supersample=lc.supersample)
        for j, rng, picture, masks in zip(members, rngs, pictures, masks_, strict=True):
            mask, unknown = (masks[0], masks[1]) if masks.ndim == 3 else (masks, None)
            if lc.density_field > 0:
                picture[:] = density_gain(picture, rng, lc.density_field)
            if rng.random() < lc.distractor_fraction:
                insert_distractors(picture, rng, int(rng.integers(1, 5)))
            if lc.vessel_mimic_fraction > 0:  # its own stream: the nodules and geometry stay the recipe's
                mimics = np.random.default_rng([seed, stream, group + 1000, j, 1])
                if mimics.random() < lc.vessel_mimic_fraction:
                    insert_vessel_mimics(picture, mimics, mask, int(mimics.integers(1, 4)))
            nodules, target = _insert_a(picture, mask if unknown is None else mask & ~unknown, rng, lc)
            pool.images[k] = picture
            pool.targets[k] = target
            if group >= 0 and backgrounds[group].real_lesions:
                unknown = ndimage.binary_dilation(mask, iterations=max(1, side // 64))
            if unknown is not None:
                pool.weights[k][unknown & ~target] = 0
            pool.groups[k] = max(group, -1)
            pool.nodules.append(nodules)
            k += 1
    return pool


def pictures_per_background(lc: LesionConfig, n_real: int, per_background: int) -> int:
    """How many pictures of each real background a pool holds: ``per_background``, or, with
    ``lesions.fold_backgrounds``, enough for a fold that trains on that many of the other real
    backgrounds to see as many real pictures as one trained on all of them. A picture's random
    stream depends on its background and its place among that background's pictures only, so the
    first ``per_background`` are the pictures of the ordinary pool."""
    others = n_real - 1
    if lc.fold_backgrounds is None or lc.fold_backgrounds >= others:
        return per_background
    return math.ceil(per_background * others / lc.fold_backgrounds)


def fit_members(groups: np.ndarray, lc: LesionConfig, *, per_background: int, seed: int,
                held: int | None = None) -> tuple[np.ndarray, list[int]]:
    """The indices of the pool pictures (``groups``: a pool's) one model trains or is calibrated
    on, and the real backgrounds among them. The final model (``held`` None): every generated
    picture and the first ``per_background`` of each real background. Background ``held``'s fold:
    the same without it; with ``lesions.fold_backgrounds`` k, only k of the other real backgrounds,
    drawn from ``seed`` and ``held`` (so its training and validation pictures come from the same
    ones), each with :func:`pictures_per_background` pictures."""
    ranks = np.zeros(len(groups), np.int64)  # each picture's place among its background's
    for g in np.unique(groups):
        where = np.nonzero(groups == g)[0]
        ranks[where] = np.arange(len(where))
    others = [int(g) for g in np.unique(groups) if g >= 0 and g != held]
    count = per_background
    if held is not None and lc.fold_backgrounds is not None and lc.fold_backgrounds < len(others):
        count = pictures_per_background(lc, len(others) + 1, per_background)
        drawn = np.random.default_rng([seed, _FOLD_DRAW, held]).choice(others, lc.fold_backgrounds, replace=False)
        others = sorted(int(g) for g in drawn)
    keep = (groups < 0) | (np.isin(groups, others) & (ranks < count))
    return np.nonzero(keep)[0], others


def _members_of(cfg: TrainConfig, pool: Pool, *, validation: bool = False,
                held: int | None = None) -> tuple[np.ndarray, list[int]]:
    """:func:`fit_members` of a run's training pool (or, with ``validation``, its validation pool)."""
    lc = cfg.lesions
    assert lc is not None
    per_background = lc.validation_per_background if validation else lc.per_background
    return fit_members(pool.groups, lc, per_background=per_background, seed=cfg.seed, held=held)


def _test_image(source: np.ndarray, rng: np.random.Generator, lc: LesionConfig, spec: InputSpec,
                positive: bool, unknown: np.ndarray | None = None
                ) -> tuple[torch.Tensor, list[Nodule], np.ndarray | None]:
    """One test image: a random sub-window (85-100% of each side) of ``source`` with fresh noise,
    model-B nodules inserted at the source resolution (outside ``unknown``), then the serving
    chain's steps 3-6. Returns the model input, its nodules and ``unknown`` on the model grid."""
    rows, cols = source.shape
    h, w = int(rows * rng.uniform(0.85, 1.0)), int(cols * rng.uniform(0.85, 1.0))
    r0, c0 = int(rng.integers(0, rows - h + 1)), int(rng.integers(0, cols - w + 1))
    sub = source[r0:r0 + h, c0:c0 + w].astype(np.float32)
    sub = np.clip(sub + rng.uniform(0.002, 0.01) * rng.standard_normal(sub.shape).astype(np.float32), 0, 1)
    model_unknown = None
    if unknown is not None:
        model_unknown = square_picture(unknown[r0:r0 + h, c0:c0 + w].astype(np.float32), spec.size[0]) > 0
    nodules: list[Nodule] = []
    if positive:
        _, geometry = prepare_frame(sub, spec)
        mask = lung_mask(square_picture(sub, spec.size[0]))
        if model_unknown is not None:
            mask &= ~ndimage.binary_dilation(model_unknown, iterations=max(1, spec.size[0] // 32))
        scale = geometry.crop_side / spec.size[0]
        count = int(rng.integers(1, lc.max_nodules + 1))
        for row, col, radius in place_nodules(rng, mask, count, diameter_fraction=lc.test_diameter_fraction,
                                              log_uniform=True):
            src_row, src_col = geometry.to_source_point(row, col)
            inserted = insert_model_b(sub, rng, src_row, src_col, radius * scale, attenuation=lc.test_attenuation)
            nodules.append(Nodule(row, col, radius, inserted.contrast, "B"))
    tensor, _ = prepare_frame(sub, spec)
    return tensor, nodules, model_unknown


def build_test_set(sources: Sequence[np.ndarray], count: int, lc: LesionConfig, spec: InputSpec, *, seed: int,
                   stream: int, unknowns: Sequence[np.ndarray | None] = ()) -> EvalSet:
    """``count`` test images per source, half of them with 1-``max_nodules`` model-B nodules
    (none inside the source's ``unknowns`` region, where detections are not counted)."""
    tensors, nodules, unknown = [], [], []
    for s, source in enumerate(sources):
        for j in range(count):
            rng = np.random.default_rng([seed, stream, s, j])
            tensor, found, where = _test_image(source, rng, lc, spec, positive=j % 2 == 1,
                                               unknown=unknowns[s] if unknowns else None)
            tensors.append(tensor)
            nodules.append(found)
            unknown.append(where)
    return EvalSet(torch.stack(tensors), nodules, normalised=True, unknown=unknown)


def generated_test_set(lc: LesionConfig, spec: InputSpec, *, seed: int) -> EvalSet:
    """The shipped model's generated-chest test: ``test_generated`` images on new generated chests
    (one per ten images, at twice the model grid), half of them with model-B nodules."""
    side = lc.input_size
    sources = [generated_chest(np.random.default_rng([seed, _TEST_GENERATED, k]), 2 * side)[0]
               for k in range(max(1, lc.test_generated // 10))]
    return build_test_set(sources, max(2, lc.test_generated // len(sources)), lc, spec, seed=seed,
                          stream=_TEST_GENERATED)


def background_test_set(lc: LesionConfig, backgrounds: Sequence[RealBackground], f: int, spec: InputSpec, *,
                        seed: int) -> EvalSet:
    """Background ``f``'s test images (model-B nodules): its fold's held-out test."""
    held = backgrounds[f]
    return build_test_set([held.picture], lc.test_per_background, lc, spec, seed=seed, stream=_TEST + f,
                          unknowns=[held.unknown])


# -- the serving transform, batched -----------------------------------------------------------------

def _quantiles(flat: torch.Tensor, qs: Sequence[float]) -> list[torch.Tensor]:
    """Per-row quantiles ``qs`` of float (N, M) ``flat`` with linear interpolation (``torch.quantile``'s
    default). Every order statistic they need comes from one ``numpy.partition`` of each row: the
    same elements ``kthvalue`` picks, so the same values bit for bit (float32), 3.4x as fast as two
    ``kthvalue`` calls per quantile (which made the percentile stretch two thirds of a cxr-nodule
    batch's preparation) and 15x as fast as ``torch.quantile``, which sorts every row
    (``benchmarks/percentile_stretch.py``)."""
    n = flat.shape[1]
    positions = [q * (n - 1) for q in qs]
    below = [int(math.floor(p)) for p in positions]
    kth = sorted(set(below) | {k + 1 for k in below if k + 1 < n})
    part = torch.from_numpy(np.partition(flat.detach().cpu().float().numpy(), kth, axis=1)).to(flat.device)
    out: list[torch.Tensor] = []
    for p, k in zip(positions, below, strict=True):
        low = part[:, k]
        out.append(low if k + 1 >= n else low + (part[:, k + 1] - low) * (p - k))
    return out


def standardise(pictures: torch.Tensor, spec: InputSpec, *,
                points: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Steps 5-6 of the serving chain on a batch of model-grid pictures (float (N, 1, S, S) in
    [0, 1]): a 0.5-99.5 percentile stretch per image, then the card's normalisation. Equal to
    :func:`secondreader.preprocessing.model_input_transform` image by image.

    ``points`` (training only): each picture's black and white points (N,) on the stretched 0-1
    range, stretched again to 0-1 (with 0 and 1 nothing changes)."""
    flat = pictures.reshape(pictures.shape[0], -1).float()
    low, high = (q.view(-1, 1, 1, 1) for q in _quantiles(flat, (0.005, 0.995)))
    stretched = ((pictures.float() - low) / (high - low).clamp_min(1e-8)).clamp(0.0, 1.0)
    if points is not None:
        black, white = (p.view(-1, 1, 1, 1) for p in points)
        stretched = ((stretched - black) / (white - black).clamp_min(1e-3)).clamp(0.0, 1.0)
    return (stretched - spec.mean) / spec.std


def dense_input_spec(cfg: TrainConfig, images: np.ndarray, members: np.ndarray) -> InputSpec:
    """A dense fit's input normalisation: the ``init_from`` model's when fine-tuning (its weights
    expect it), else the mean and spread of up to 256 of the training pictures ``images[members]``
    after the serving chain's percentile stretch."""
    lc = cfg.lesions
    assert lc is not None
    side = lc.input_size
    source = init_source(cfg, dense=True)
    if source is not None:
        if source.input_spec.size != (side, side):
            raise ValueError(f"init_from model {source.ref} takes {source.input_spec.size[0]} px inputs, the config's "
                             f"lesions.input_size is {side}")
        logger.info("fine-tuning from %s", source.ref)
        return source.input_spec
    sample = torch.from_numpy(images[members[:: max(1, len(members) // 256)]].astype(np.float32))[:, None]
    stretched = standardise(sample, InputSpec(size=(side, side), mean=0.0, std=1.0))
    return InputSpec(size=(side, side), mean=float(stretched.mean()), std=float(stretched.std()))


def _stretch_points(n: int, lc: LesionConfig, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Random black and white points for :func:`standardise` (``lc.stretch_jitter``): a served
    image's percentile stretch depends on its field of view. A chest radiograph cropped inside its
    dark border or bright labels is stretched harder, and its anatomy gains contrast (a hilar vessel
    of the SIIM film, served in crops of 85-100% of its sides, rose from a logit of -1.6 on the
    whole film to up to 10, a false nodule)."""
    lo, hi = lc.stretch_jitter
    if lo <= 0 and hi <= 0:
        return None
    on = (torch.rand(n, generator=g) < lc.stretch_jitter_probability).float()
    black = on * lo * torch.rand(n, generator=g)
    white = 1.0 - on * hi * torch.rand(n, generator=g)
    return black, white


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    r = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))


def _augment_intensity(x: torch.Tensor, lc: LesionConfig, g: torch.Generator) -> torch.Tensor:
    """Robustness: gamma, linear contrast, blur and noise, per image (float (N, 1, S, S) in [0, 1])."""
    n = x.shape[0]

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, 1, 1, 1, generator=g)

    x = x.clamp_min(1e-6) ** uniform(*lc.gamma)
    x = x * uniform(0.85, 1.15) + uniform(-0.05, 0.05)
    blur = torch.rand(n, generator=g) < lc.blur_probability
    sigmas = uniform(*lc.blur_sigma).view(-1)
    out = []
    for i in range(n):
        xi = x[i:i + 1]
        if bool(blur[i]) and float(sigmas[i]) > 0.2:
            xi = _gaussian_blur(xi, float(sigmas[i]))
        out.append(xi)
    x = torch.cat(out)
    x = x + uniform(*lc.noise_std) * torch.randn(x.shape, generator=g)
    return x.clamp(0.0, 1.0)


def _crops(x: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, nodules: list[list[Nodule]],
           lc: LesionConfig, g: torch.Generator,
           hard: Sequence[Sequence[tuple[int, int]]] = ()) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random-size square crops (``crop`` x ``crop_scale``), resized to ``crop``; some centred on
    one of the picture's ``hard`` negatives (``(row, col)`` false peaks), some near a lesion."""
    side = x.shape[-1]
    xs, ts, ws = [], [], []
    lo, hi = math.log(lc.crop_scale[0]), math.log(lc.crop_scale[1])
    for i in range(x.shape[0]):
        size = min(side, int(round(lc.crop * math.exp(lo + (hi - lo) * float(torch.rand(1, generator=g))))))
        peaks = hard[i] if hard else ()
        if peaks and float(torch.rand(1, generator=g)) < lc.hard_negative_fraction:
            row, col = peaks[int(torch.randint(len(peaks), (1,), generator=g))]
            jitter = (torch.rand(2, generator=g) - 0.5) * size * 0.6
            cy, cx = row + float(jitter[0]), col + float(jitter[1])
        elif nodules[i] and float(torch.rand(1, generator=g)) < lc.lesion_crop_fraction:
            n = nodules[i][int(torch.randint(len(nodules[i]), (1,), generator=g))]
            jitter = (torch.rand(2, generator=g) - 0.5) * size * 0.6
            cy, cx = n.row + float(jitter[0]), n.col + float(jitter[1])
        else:
            cy, cx = (float(v) * side for v in torch.rand(2, generator=g))
        r0 = int(min(max(cy - size / 2, 0), side - size))
        c0 = int(min(max(cx - size / 2, 0), side - size))
        sl = (slice(None), slice(r0, r0 + size), slice(c0, c0 + size))
        xs.append(F.interpolate(x[i][sl][None], size=(lc.crop, lc.crop), mode="bilinear", align_corners=False))
        ts.append(F.interpolate(target[i][sl][None], size=(lc.crop, lc.crop), mode="nearest"))
        ws.append(F.interpolate(weight[i][sl][None], size=(lc.crop, lc.crop), mode="nearest"))
    return torch.cat(xs), torch.cat(ts), torch.cat(ws)


def _batch(pool: Pool, idx: np.ndarray, lc: LesionConfig, spec: InputSpec, g: torch.Generator,
           hard: Sequence[Sequence[tuple[int, int]]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One training batch of the pool's pictures ``idx``: intensity augmentation, the jittered
    percentile stretch and the crops (inputs, targets, weights), every random draw from ``g``."""
    x = torch.from_numpy(pool.images[idx].astype(np.float32))[:, None]
    x = standardise(_augment_intensity(x, lc, g), spec, points=_stretch_points(len(idx), lc, g))
    t = torch.from_numpy(pool.targets[idx].astype(np.float32))[:, None]
    w = torch.from_numpy(pool.weights[idx].astype(np.float32))[:, None]
    return _crops(x, t, w, [pool.nodules[i] for i in idx], lc, g, hard)


def _seed_of(*parts: int) -> int:
    """A generator seed for one batch (or one epoch's order) of a fit: the fit's seed, the epoch, the step."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def _seeded_batch(pool: Pool, idx: np.ndarray, lc: LesionConfig, spec: InputSpec, seed: int,
                  hard: Sequence[Sequence[tuple[int, int]]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _batch(pool, idx, lc, spec, torch.Generator().manual_seed(seed), hard)


_Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _marks(hard: dict[int, list[tuple[int, int]]], idx: np.ndarray) -> Sequence[Sequence[tuple[int, int]]]:
    return [hard.get(int(i), []) for i in idx] if hard else ()


def _drawn_batches(pool: Pool, steps: list[np.ndarray], lc: LesionConfig, spec: InputSpec, g: torch.Generator,
                   hard: dict[int, list[tuple[int, int]]], threads: int) -> Iterator[_Batch]:
    """The batches of one epoch drawn in turn from the fit's one generator, in the step's thread
    (``loader_workers: 0``): the per-image augmentation on one thread (its small convolutions were 50x
    slower on two threads of a 2-core CPU than on one), the step on ``threads``."""
    for idx in steps:
        torch.set_num_threads(1)
        batch = _batch(pool, idx, lc, spec, g, _marks(hard, idx))
        torch.set_num_threads(threads)
        yield batch


def _loaded_batches(loader: ThreadPoolExecutor, window: int, pool: Pool, steps: list[np.ndarray], lc: LesionConfig,
                    spec: InputSpec, hard: dict[int, list[tuple[int, int]]], seeds: list[int]) -> Iterator[_Batch]:
    """The batches of one epoch prepared ahead by ``loader``'s threads, each from its own seed, so
    that they do not depend on how many threads prepare them; at most ``window`` wait at a time."""
    ahead: deque[Future[_Batch]] = deque()
    todo = iter(zip(steps, seeds, strict=True))

    def submit() -> None:
        nxt = next(todo, None)
        if nxt is not None:
            ahead.append(loader.submit(_seeded_batch, pool, nxt[0], lc, spec, nxt[1], _marks(hard, nxt[0])))

    for _ in range(window):
        submit()
    while ahead:
        batch = ahead.popleft().result()
        submit()
        yield batch


def _loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, dice_weight: float,
          pos_weight: float = 1.0) -> torch.Tensor:
    """Weighted binary cross-entropy (nodule pixels ``pos_weight`` times) plus a soft Dice over the
    batch (pixels of weight 0 ignored)."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none",
                                             pos_weight=torch.tensor(pos_weight, device=logits.device))
    bce = (bce * weight).sum() / weight.sum().clamp_min(1.0)
    p = torch.sigmoid(logits) * weight
    dice = 1 - (2 * (p * target).sum() + 1) / (p.sum() + (target * weight).sum() + 1)
    return bce + dice_weight * dice


#: the built-in dense loss, as bundles and cards name it
BUILT_IN_DENSE_LOSS = "binary cross-entropy (nodule pixels pos_weight times) + dice_weight x soft Dice over the batch"


def dense_loss(cfg: TrainConfig) -> Loss:
    """The fit's loss: the config's MONAI terms, or the built-in one the shipped bundles trained with."""
    if cfg.loss is not None:
        return build_loss(cfg.loss)
    lc = cfg.lesions
    assert lc is not None

    def built_in(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
        assert weight is not None
        return _loss(logits, target, weight, lc.dice_weight, lc.pos_weight)

    return built_in


def map_recipe(cfg: TrainConfig) -> MapRecipe:
    """The config's map recipe (smoothing, flip averaging), as the bundle's card will serve it."""
    return MapRecipe(cfg.saliency.smoothing_sigma, cfg.saliency.flip_average)


# -- training one model ------------------------------------------------------------------------------

#: A mined false peak must lie this many model pixels beyond a nodule's radius.
_HARD_MARGIN = 3.0


def mine_hard_negatives(network: torch.nn.Module, pool: Pool, members: np.ndarray, spec: InputSpec, *,
                        recipe: MapRecipe, floor: float = 0.0, per_image: int = 4) -> dict[int, list[tuple[int, int]]]:
    """The model's false peaks on the real backgrounds' pictures among ``members``: up to
    ``per_image`` strongest local maxima of the smoothed logit map at or over ``floor`` that are
    farther than a nodule's radius (+3 px) from every inserted nodule and lie where the label is
    known (weight 1). ``{pool index: [(row, col), ...]}``; pictures without any are left out."""
    real = members[pool.groups[members] >= 0]
    out: dict[int, list[tuple[int, int]]] = {}
    for start in range(0, len(real), 32):
        idx = np.sort(real[start:start + 32])
        x = standardise(torch.from_numpy(pool.images[idx].astype(np.float32))[:, None], spec)
        for i, logit_map in zip(idx, predict_maps(network, x, recipe=recipe), strict=True):
            found = []
            for row, col, _value in map_peaks(logit_map, floor=floor):
                r, c = int(row), int(col)
                near = any(math.hypot(row - n.row, col - n.col) <= n.radius + _HARD_MARGIN for n in pool.nodules[i])
                if not near and pool.weights[i][r, c]:
                    found.append((r, c))
                if len(found) == per_image:
                    break
            if found:
                out[int(i)] = found
    return out


class FitInterrupted(Exception):
    """A fit stopped after ``stop_after_epochs`` (tests: what an interruption leaves behind)."""


@dataclass(frozen=True, slots=True)
class FitCheckpoints:
    """Where a run's fits keep their state after every epoch (``run_dir/fits``): the weights, the
    optimiser and schedule, the batch generator and the mined hard negatives. With ``resume`` a fit
    continues from its file when the run's digest and the fit's seed match, and ends with the weights
    an uninterrupted fit gives. ``stop_after_epochs`` (tests) raises :class:`FitInterrupted` once
    that epoch's state is saved."""

    folder: Path
    digest: str
    resume: bool = False
    stop_after_epochs: int | None = None


def _save_fit(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)


def fit_dense_network(cfg: TrainConfig, pool: Pool, members: np.ndarray, spec: InputSpec, seed: int,
                      advance: Callable[[], None], checkpoints: FitCheckpoints | None = None,
                      name: str = "") -> torch.nn.Module:
    """A network fitted on the pool's ``members``, left on the training device in eval mode. The
    batches and their augmentation are drawn on the CPU from one seeded generator, so a GPU run sees
    the same crops as a CPU run; only the arithmetic differs. With ``checkpoints`` its state is kept
    after every epoch in ``<folder>/<name>.pt`` (see :class:`FitCheckpoints`)."""
    lc = cfg.lesions
    assert lc is not None
    device, amp = training_device(cfg.schedule.device, cfg.schedule.mixed_precision)
    torch.manual_seed(seed)
    network = build_dense_network(cfg.network.class_, cfg.network.args)
    if cfg.init_from is not None:  # fine-tuning: every fit (folds included) starts from the shipped weights
        source = init_source(cfg, dense=True)
        assert source is not None
        network.load_state_dict(torch.load(source.weights_path, map_location="cpu", weights_only=True))
    sched = cfg.schedule
    layout = training_memory_format(sched.channels_last)
    to_layout(network, layout, device)
    optimiser = torch.optim.AdamW(network.parameters(), lr=sched.max_lr, weight_decay=sched.weight_decay)
    steps_per_epoch = max(1, len(members) // sched.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=sched.max_lr,
                                                    total_steps=sched.epochs * steps_per_epoch)
    loss_fn = dense_loss(cfg)
    g = torch.Generator().manual_seed(seed)
    # the network's steps use ``schedule.threads``; the per-image augmentation runs on one thread
    # (its small convolutions were 50x slower on two threads of this CPU than on one)
    threads = torch.get_num_threads()
    hard: dict[int, list[tuple[int, int]]] = {}
    first_epoch = 0
    saved = checkpoints.folder / f"{name}.pt" if checkpoints is not None else None
    if checkpoints is not None and saved is not None and checkpoints.resume and saved.is_file():
        state = torch.load(saved, map_location="cpu", weights_only=True)
        if state["config"] == checkpoints.digest and state["seed"] == seed:
            network.load_state_dict(state["model"])
            optimiser.load_state_dict(state["optimiser"])
            scheduler.load_state_dict(state["scheduler"])
            g.set_state(state["generator"])
            hard = {int(k): [(int(r), int(c)) for r, c in v] for k, v in state["hard"].items()}
            first_epoch = int(state["epoch"])
            for _ in range(first_epoch * steps_per_epoch):
                advance()
            logger.info("fit %s: resumed after epoch %d", name, first_epoch)
        else:
            logger.info("fit %s: its checkpoint was made by another configuration; starting again", name)
    network.train()
    loader = ThreadPoolExecutor(sched.loader_workers, thread_name_prefix="batches") if sched.loader_workers else None
    try:
        for epoch in range(first_epoch, sched.epochs):
            if lc.hard_negative_fraction > 0 and epoch in lc.hard_negative_epochs:
                torch.set_num_threads(threads)
                hard = mine_hard_negatives(network, pool, members, spec, recipe=map_recipe(cfg))
                network.train()  # predict_maps left it in eval mode
                logger.debug("epoch %d: false peaks on %d pictures", epoch, len(hard))
            if loader is None:
                order = members[torch.randperm(len(members), generator=g).numpy()]
            else:
                order = members[torch.randperm(len(members),
                                               generator=torch.Generator().manual_seed(_seed_of(seed, epoch))).numpy()]
            steps = [np.sort(order[step * sched.batch_size:(step + 1) * sched.batch_size])
                     for step in range(steps_per_epoch)]
            if loader is None:
                batches = _drawn_batches(pool, steps, lc, spec, g, hard, threads)
            else:
                batches = _loaded_batches(loader, 2 * sched.loader_workers, pool, steps, lc, spec, hard,
                                          [_seed_of(seed, epoch, step) for step in range(len(steps))])
            for xc, tc, wc in batches:
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    out = network(xc.to(device, memory_format=layout))
                loss = loss_fn(out.float(), tc.to(device), wc.to(device))
                optimiser.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
                optimiser.step()
                scheduler.step()
                advance()
            if checkpoints is not None and saved is not None:
                _save_fit(saved, {"config": checkpoints.digest, "seed": seed, "epoch": epoch + 1,
                                  "model": network.state_dict(), "optimiser": optimiser.state_dict(),
                                  "scheduler": scheduler.state_dict(), "generator": g.get_state(),
                                  "hard": {str(k): [list(p) for p in v] for k, v in hard.items()}})
                if checkpoints.stop_after_epochs is not None and epoch + 1 >= checkpoints.stop_after_epochs \
                        and epoch + 1 < sched.epochs:
                    raise FitInterrupted(f"fit {name} stopped after epoch {epoch + 1} as asked")
    finally:
        if loader is not None:
            loader.shutdown(cancel_futures=True)
    # scored in the layout it is served in, so that calibration and figures come from serving's logits
    to_layout(network, torch.contiguous_format)
    return network.eval()


#: Peaks of a smoothed logit map below this (a probability of 0.02) are not detections.
_PEAK_FLOOR = math.log(0.02 / 0.98)


def predict_maps(network: torch.nn.Module, inputs: torch.Tensor, *, recipe: MapRecipe, batch: int = 32) -> np.ndarray:
    """Smoothed logit maps float32 (N, S, S) of channel 0 for normalised inputs (N, 1, S, S), as
    the served predictor makes them (its heatmap is their sigmoid), on the network's device (float32)."""
    out = []
    network.eval()
    device = next(network.parameters(), torch.empty(0)).device  # a module without weights: the CPU
    with torch.inference_mode():
        for i in range(0, len(inputs), batch):
            out.append(recipe.logits(network, inputs[i:i + batch].to(device), [0])[:, 0].float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0,) + tuple(inputs.shape[-2:]), np.float32)


@dataclass(slots=True)
class Scored:
    """A set's study logits, labels and matched detections (peaks of the probability map)."""

    logits: np.ndarray
    labels: np.ndarray
    images: list[ImageDetections]
    #: per image, ``(radius, contrast)`` of each nodule, in the order of its ``lesion_scores``
    nodules: list[list[tuple[float, float]]] | None = None

    def to_json(self) -> dict[str, Any]:
        def enc(a: np.ndarray) -> list[float | None]:
            return [None if not np.isfinite(v) else round(float(v), 6) for v in a]

        out: dict[str, Any] = {"logits": enc(self.logits), "labels": self.labels.tolist(),
                               "images": [[enc(im.lesion_scores), enc(im.false_scores)] for im in self.images]}
        if self.nodules is not None:
            out["nodules"] = [[[round(r, 3), round(c, 4)] for r, c in ns] for ns in self.nodules]
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Scored:
        def dec(values: list[float | None]) -> np.ndarray:
            return np.asarray([-np.inf if v is None else v for v in values], dtype=np.float64)

        nodules = [[(float(r), float(c)) for r, c in ns] for ns in data["nodules"]] if "nodules" in data else None
        return cls(dec(data["logits"]), np.asarray(data["labels"], dtype=np.int64),
                   [ImageDetections(dec(a), dec(b)) for a, b in data["images"]], nodules)


def score_set(network: torch.nn.Module, data: EvalSet, spec: InputSpec, lc: LesionConfig,
              recipe: MapRecipe) -> Scored:
    """Study logits and matched peaks of ``data``; where an image's label is unknown, the map
    neither scores the study nor yields detections."""
    inputs = data.inputs if data.normalised else standardise(data.inputs, spec)
    maps = predict_maps(network, inputs, recipe=recipe)
    unknown = data.unknown or [None] * len(maps)
    logits = np.empty(len(maps), dtype=np.float64)
    images = []
    for k, (m, nods, where) in enumerate(zip(maps, data.nodules, unknown, strict=True)):
        peaks = map_peaks(m, floor=_PEAK_FLOOR)
        if where is not None:
            m = np.where(where, -np.inf, m)
            peaks = [p for p in peaks if not where[int(p[0]), int(p[1])]]
        logits[k] = float(m.max()) if np.isfinite(m).any() else float(maps[k].max())
        images.append(match_image(peaks, [(n.row, n.col, n.radius) for n in nods], min_radius=lc.hit_radius_min))
    return Scored(logits, data.labels, images, [[(n.radius, n.contrast) for n in nods] for nods in data.nodules])


def _as_mask(members: np.ndarray, n: int) -> np.ndarray:
    keep = np.zeros(n, bool)
    keep[members] = True
    return keep


def _eval_members(pool: Pool, members: np.ndarray) -> EvalSet:
    return pool_eval_set(pool, _as_mask(members, len(pool)))


def pool_eval_set(pool: Pool, keep: np.ndarray) -> EvalSet:
    """The pool's pictures where ``keep``; where a picture's label is unknown (loss weight 0: real
    lesions, unknown regions), detections are not counted."""
    idx = np.nonzero(keep)[0]
    unknown = [None if pool.weights[i].all() else np.asarray(pool.weights[i]) == 0 for i in idx]
    return EvalSet(torch.from_numpy(pool.images[idx].astype(np.float32))[:, None],
                   [pool.nodules[i] for i in idx], normalised=False, unknown=unknown)


@dataclass(frozen=True, slots=True)
class Calibration:
    """A model's calibration and its operating points, fitted on its validation pictures."""

    calibrator: Calibrator
    operating_point: float
    urgent_point: float

    def probability(self, logits: np.ndarray) -> np.ndarray:
        return self.calibrator.probability(logits)

    def map_threshold(self, probability: float) -> float:
        """The raw map value whose calibrated study probability is ``probability``."""
        return float(1 / (1 + math.exp(-self.calibrator.logit_for(probability))))

    def to_json(self) -> dict[str, Any]:
        """Unrounded, for a fold's saved state (``--resume`` must score as the run did)."""
        return {"calibrator": self.calibrator.to_json(digits=None), "operating_point": self.operating_point,
                "urgent_point": self.urgent_point}

    @classmethod
    def from_json(cls, state: dict[str, Any]) -> Calibration:
        return cls(Calibrator.from_json(state["calibrator"]), state["operating_point"], state["urgent_point"])


def _check_validation(val_pool: Pool, uses: list[tuple[str, np.ndarray]]) -> None:
    """Before any fitting: each model's validation pictures (``uses``: whose, which) must hold
    pictures with and without nodules, or its calibration and operating points cannot be placed."""
    has = np.asarray([bool(n) for n in val_pool.nodules])
    for whose, keep in uses:
        positives, n = int(has[keep].sum()), int(keep.sum())
        if positives in (0, n):
            raise ValueError(f"the validation pictures for {whose} are {n}, {positives} of them with nodules: "
                             "calibration and the operating points need pictures with and without; raise "
                             "lesions.validation_per_background or lesions.validation_generated")


def calibrate(val: Scored, cfg: TrainConfig) -> Calibration:
    calibrator, _p, op, urgent = calibrate_on_validation(val.logits, val.labels, cfg.operating_point,
                                                        cfg.calibration.method)
    return Calibration(calibrator, op, urgent)


def _cal_scores(map_values: np.ndarray, cal: Calibration) -> np.ndarray:
    """Map values (peaks' smoothed logits) → calibrated study-scale probabilities (-inf stays -inf)."""
    out = np.full(map_values.shape, -np.inf)
    finite = np.isfinite(map_values)
    out[finite] = cal.probability(map_values[finite])
    return out


def localisation_metrics(scored: Scored, cal: Calibration, *, seed: int, side: int = 0) -> dict[str, Any]:
    """Study-level metrics at the operating point and the FROC, with bootstrap intervals; with the
    model grid's ``side``, the FROC's sensitivity at 1 false region per image by nodule band too."""
    p = cal.probability(scored.logits)
    images = [ImageDetections(_cal_scores(im.lesion_scores, cal), _cal_scores(im.false_scores, cal))
              for im in scored.images]
    out: dict[str, Any] = {"study": binary_metrics(p, scored.labels, cal.operating_point, seed=seed).to_json()}
    if any(im.lesion_scores.size for im in images):
        nodules = [n for ns in scored.nodules for n in ns] if scored.nodules is not None and side else None
        sens_op, fp_op = sensitivity_at_threshold(images, cal.operating_point)
        out["froc"] = {**_froc_summary(images, nodules, side, seed=seed),
                       "at_operating_point": {"sensitivity": round(sens_op, 4),
                                              "false_regions_per_image": round(fp_op, 4)}}
    return out


def _froc_summary(images: Sequence[ImageDetections], nodules: Sequence[tuple[float, float]] | None, side: int, *,
                  seed: int) -> dict[str, Any]:
    """The FROC of ``images`` (calibrated scores) with bootstrap intervals and, given each lesion's
    ``(radius, contrast)`` in order, its sensitivity at 1 false region per image by band."""
    froc = froc_sensitivities(images)
    ci = froc_bootstrap(images, seed=seed)
    out: dict[str, Any] = {
        "n_images": len(images), "n_lesions": int(sum(im.lesion_scores.size for im in images)),
        "sensitivity": {str(r): round(froc[r], 4) for r in FROC_RATES},
        "sensitivity_ci95": {str(r): [round(ci[r][0], 4), round(ci[r][1], 4)] for r in FROC_RATES}}
    if nodules is not None:
        scores = np.concatenate([im.lesion_scores for im in images])
        out["by_band_at_1"] = sensitivity_by_band(scores, nodules, froc_threshold(images, 1.0), side)
    return out


# -- fitting the folds and the final model, in this process or in worker processes -----------------

@dataclass(frozen=True, slots=True)
class _FitData:
    """What every fit of one run needs (a worker process gets it once, the pools memory-mapped)."""

    cfg: TrainConfig
    pool: Pool
    val_pool: Pool
    backgrounds: list[RealBackground]
    spec: InputSpec
    digest: str
    checkpoints: FitCheckpoints | None = None


def _fold(data: _FitData, f: int, advance: Callable[[], None]) -> dict[str, Any]:
    """Leave background ``f`` out: train without it, calibrate on validation without it, test on
    it with model-B nodules. Returns the fold's state (kept as JSON, reused by ``--resume``)."""
    cfg, pool, val_pool, spec = data.cfg, data.pool, data.val_pool, data.spec
    lc = cfg.lesions
    assert lc is not None
    recipe = map_recipe(cfg)
    held = data.backgrounds[f]
    t0 = time.time()
    members, trained_on = _members_of(cfg, pool, held=f)
    network = fit_dense_network(cfg, pool, members, spec, cfg.seed + 1000 * (f + 1), advance, data.checkpoints,
                                f"fold-{held.id}")
    val = score_set(network, _eval_members(val_pool, _members_of(cfg, val_pool, validation=True, held=f)[0]), spec,
                    lc, recipe)
    cal = calibrate(val, cfg)
    test = background_test_set(lc, data.backgrounds, f, spec, seed=cfg.seed)
    scored = score_set(network, test, spec, lc, recipe)
    state = {"config": data.digest, "background": held.id, "seconds": round(time.time() - t0, 1),
             "calibration": cal.to_json(), "test": scored.to_json()}
    if lc.fold_backgrounds is not None:
        state["trained_on"] = [data.backgrounds[g].id for g in trained_on]
    if held.unknown is not None:  # also scored as if the real opacity were known to be no nodule
        strict = EvalSet(test.inputs, test.nodules, normalised=True)
        state["test_strict"] = score_set(network, strict, spec, lc, recipe).to_json()
    return state


_WORKER: dict[str, Any] = {}


def _save_pool(pool: Pool, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("images", "targets", "weights", "groups"):
        np.save(folder / f"{name}.npy", getattr(pool, name))
    (folder / "nodules.json").write_text(json.dumps([[astuple(n) for n in ns] for ns in pool.nodules]))


def _load_pool(folder: Path) -> Pool:
    arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in ("images", "targets", "weights")}
    nodules = [[Nodule(*n) for n in ns] for ns in json.loads((folder / "nodules.json").read_text())]
    return Pool(arrays["images"], arrays["targets"], arrays["weights"], np.load(folder / "groups.npy"), nodules)


def _worker_init(cfg: TrainConfig, backgrounds: list[RealBackground], spec: InputSpec, digest: str, folder: str,
                 checkpoints: FitCheckpoints | None, counter: Any) -> None:
    torch.set_num_threads(cfg.schedule.threads)
    set_determinism(seed=cfg.seed)
    torch.use_deterministic_algorithms(False)
    logging.getLogger("secondreader").setLevel(logging.WARNING)  # the parent reports progress
    _WORKER["data"] = _FitData(cfg, _load_pool(Path(folder) / "train"), _load_pool(Path(folder) / "validation"),
                               backgrounds, spec, digest, checkpoints)
    _WORKER["counter"] = counter


def _worker_advance() -> None:
    counter = _WORKER["counter"]
    with counter.get_lock():
        counter.value += 1


def _worker_fold(f: int) -> dict[str, Any]:
    return _fold(_WORKER["data"], f, _worker_advance)


def _worker_final() -> bytes:
    data: _FitData = _WORKER["data"]
    return _state_dict_bytes(_fit_final(data, _worker_advance))


def _fit_final(data: _FitData, advance: Callable[[], None]) -> torch.nn.Module:
    """The shipped model: every training picture (of a larger learning-curve pool, the ordinary pool's)."""
    members, _ = _members_of(data.cfg, data.pool)
    return fit_dense_network(data.cfg, data.pool, members, data.spec, data.cfg.seed, advance, data.checkpoints,
                             "final")


def _fit_in_processes(data: _FitData, folds: list[int], workers: int, run_dir: Path,
                      fold_done: Callable[[int, dict[str, Any]], None], progress: Callable[[int], None], *,
                      final: bool = True) -> bytes | None:
    """The final model's weights (None without ``final``), fitted beside the folds (each fold's
    state goes to ``fold_done`` as it finishes) in ``workers`` spawned processes with
    ``schedule.threads`` threads each; the pools reach them as memory-mapped files under
    ``run_dir``. Every fit is seeded as in one process, so the result does not depend on ``workers``."""
    import multiprocessing
    import shutil
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    folder = run_dir / "pools"
    _save_pool(data.pool, folder / "train")
    _save_pool(data.val_pool, folder / "validation")
    context = multiprocessing.get_context("spawn")
    counter = context.Value("q", 0)
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_worker_init,
                                 initargs=(data.cfg, data.backgrounds, data.spec, data.digest, str(folder),
                                           data.checkpoints, counter)) as executor:
            final_fit = executor.submit(_worker_final) if final else None
            by_fold = {executor.submit(_worker_fold, f): f for f in folds}
            pending: set[Future[Any]] = {*by_fold} | ({final_fit} if final_fit is not None else set())
            while pending:
                done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                progress(int(counter.value))
                for future in done:
                    if future in by_fold:
                        fold_done(by_fold[future], future.result())
            return final_fit.result() if final_fit is not None else None
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# -- the whole run ---------------------------------------------------------------------------------

def train_localisation(cfg: TrainConfig, *, config_path: Path | None = None, resume: bool = False,
                       stop_after_epochs: int | None = None, folds_only: bool = False) -> dict[str, Any]:
    """Train ``cfg`` (``data.kind: lesion_insertion``), evaluate it leaving one real background out
    at a time, and write its bundle. ``resume`` reuses the folds a previous run of the same
    configuration finished and continues each unfinished fit from its last epoch (both kept in
    ``checkpoint_dir``). ``stop_after_epochs`` stops the fits after that epoch without writing a
    bundle (as an interruption would). ``folds_only`` evaluates the recipe and stops there: no
    final model and no bundle, the figures in ``<checkpoint_dir>/leave-one-out.json``. Returns the
    bundle's metadata, ``{"leave_one_out": figures}`` with ``folds_only``, or ``{}`` when stopped."""
    from .train import device_uid_for, write_bundle_weights

    lc = cfg.lesions
    if lc is None:
        raise ValueError("data.kind lesion_insertion needs a lesions: section")
    if lc.fold_backgrounds is not None and not folds_only:  # a bundle's held-out figures come from folds like it
        raise ValueError("lesions.fold_backgrounds is a learning curve: its folds train on fewer films than the "
                         "final model would, so run it with --folds-only (no bundle)")
    started = time.time()
    device, amp = training_device(cfg.schedule.device, cfg.schedule.mixed_precision)
    torch.set_num_threads(cfg.schedule.threads)
    hardware = training_hardware(device, amp, cfg.schedule.channels_last)  # records the threads: after setting them
    logger.info("training %s on %s", cfg.name, hardware["device"])
    set_determinism(seed=cfg.seed)
    # Seeded, but not torch's deterministic mode: on the CPU it made each U-Net step ten times slower.
    # One thread per fit is bit-for-bit repeatable on the same software anyway (two full runs of the
    # shipped config gave the same weights' sha256).
    torch.use_deterministic_algorithms(False)
    side = lc.input_size
    backgrounds = load_backgrounds(lc, cfg.data.path)
    logger.info("backgrounds: %s", ", ".join(bg.id for bg in backgrounds))
    n_real = len(backgrounds)
    pool = build_pool(backgrounds, lc, per_background=pictures_per_background(lc, n_real, lc.per_background),
                      generated=lc.generated, seed=cfg.seed, stream=_TRAIN)
    val_pool = build_pool(backgrounds, lc,
                          per_background=pictures_per_background(lc, n_real, lc.validation_per_background),
                          generated=lc.validation_generated, seed=cfg.seed, stream=_VAL)
    final_members, _ = _members_of(cfg, pool)
    final_val, _ = _members_of(cfg, val_pool, validation=True)
    source = init_source(cfg, dense=True)
    spec = dense_input_spec(cfg, pool.images, final_members)
    recipe = map_recipe(cfg)
    logger.info("pools ready: %d training, %d validation pictures (%.0f s)", len(pool), len(val_pool),
                time.time() - started)

    folds = [i for i, bg in enumerate(backgrounds) if not bg.real_lesions] if lc.folds != "none" else []
    if folds_only and not folds:
        raise ValueError("folds_only needs the leave-one-background-out folds (lesions.folds)")

    _check_validation(val_pool, [(backgrounds[f].id, _as_mask(_members_of(cfg, val_pool, validation=True, held=f)[0],
                                                               len(val_pool))) for f in folds]
                      + [("the final model", _as_mask(final_val, len(val_pool)))])

    def steps(f: int | None) -> int:  # the fit's optimiser steps: a fold's, or the final model's (None)
        return cfg.schedule.epochs * max(1, len(_members_of(cfg, pool, held=f)[0]) // cfg.schedule.batch_size)

    total = sum(steps(f) for f in folds) + (0 if folds_only else steps(None))
    run_dir = cfg.checkpoint_dir or Path("runs") / cfg.name
    digest = run_digest(cfg, *(hashlib.sha256(np.ascontiguousarray(bg.picture).tobytes()).hexdigest()
                                for bg in backgrounds), f"{device.type} amp={amp}",
                        hashlib.sha256(source.weights_path.read_bytes()).hexdigest() if source else "")
    fold_results: dict[int, dict[str, Any]] = {}

    def fold_file(f: int) -> Path:
        return run_dir / "folds" / f"{backgrounds[f].id}.json"

    for f in folds:
        saved = fold_file(f)
        if resume and saved.is_file():
            state = json.loads(saved.read_text())
            if state.get("config") == digest:
                fold_results[f] = state
                logger.info("fold %s: reused from %s", backgrounds[f].id, saved.name)
    todo = [f for f in folds if f not in fold_results]
    reused = sum(steps(f) for f in fold_results)
    data = _FitData(cfg, pool, val_pool, backgrounds, spec, digest,
                    FitCheckpoints(run_dir / "fits", digest, resume, stop_after_epochs))
    with training_progress() as progress:
        what = f"{len(todo)} folds" + ("" if folds_only else " and the final model")
        task = progress.add_task(f"training {cfg.name} ({what})", total=total, completed=reused)

        def fold_done(f: int, state: dict[str, Any]) -> None:  # kept at once, for --resume
            saved = fold_file(f)
            saved.parent.mkdir(parents=True, exist_ok=True)
            saved.write_text(json.dumps(state))
            fold_results[f] = state

        workers = max(1, min(cfg.schedule.workers, len(todo) + (0 if folds_only else 1)))
        try:
            if workers > 1:
                weights = _fit_in_processes(data, todo, workers, run_dir, fold_done,
                                            lambda done: progress.update(task, completed=reused + done),
                                            final=not folds_only)
            else:
                def advance() -> None:
                    progress.advance(task)

                for f in todo:
                    fold_done(f, _fold(data, f, advance))
                weights = None if folds_only else _state_dict_bytes(_fit_final(data, advance))
        except FitInterrupted as stopped:
            logger.info("%s; resume with --resume", stopped)
            return {}
    for f in folds:
        cal = Calibration.from_json(fold_results[f]["calibration"])
        scored = Scored.from_json(fold_results[f]["test"])
        logger.info("fold %s (%.0f s): %s", backgrounds[f].id, fold_results[f]["seconds"],
                    json.dumps(localisation_metrics(scored, cal, seed=cfg.seed)["study"]))
    held_out = _held_out_metrics([fold_results[f] for f in folds], seed=cfg.seed, side=side)
    if weights is None:  # folds only: the recipe's figures, no model
        summary = {"name": cfg.name, "config": str(config_path) if config_path else None, "seed": cfg.seed,
                   "fold_backgrounds": lc.fold_backgrounds, "seconds": round(time.time() - started), **held_out,
                   "training_hardware": hardware}
        out_file = run_dir / "leave-one-out.json"
        out_file.parent.mkdir(parents=True, exist_ok=True)
        out_file.write_text(json.dumps(summary, indent=2) + "\n")
        logger.info("wrote the leave-one-out figures to %s in %.0f s (no bundle: folds only)", out_file,
                    time.time() - started)
        return {"leave_one_out": summary}
    network = build_dense_network(cfg.network.class_, cfg.network.args)
    network.load_state_dict(torch.load(io.BytesIO(weights), weights_only=True))
    network.to(device).eval()
    val = score_set(network, _eval_members(val_pool, final_val), spec, lc, recipe)
    cal = calibrate(val, cfg)
    metrics: dict[str, Any] = {
        "validation": localisation_metrics(val, cal, seed=cfg.seed),
        "test_generated": localisation_metrics(score_set(network, generated_test_set(lc, spec, seed=cfg.seed), spec, lc,
                                                         recipe), cal, seed=cfg.seed),
    }
    metrics.update(held_out or {"test": metrics["test_generated"]})
    real = [bg for bg in backgrounds if bg.real_lesions]
    if real:
        inputs = torch.stack([prepare_frame(bg.picture, spec)[0] for bg in real])
        maps = predict_maps(network, inputs, recipe=recipe)
        probs = cal.probability(study_logits(torch.from_numpy(maps)[:, None])[:, 0].astype(np.float64))
        metrics["real_lesion_backgrounds"] = {bg.id: round(float(p), 4) for bg, p in zip(real, probs, strict=True)}

    out = cfg.output_dir
    weights_sha256 = write_bundle_weights(out, weights)
    metadata = dense_metadata(cfg, spec, cal, metrics, device_uid_for(cfg.name, cfg.version, weights_sha256),
                              weights_sha256, config_path, time.time() - started,
                              [backgrounds[f].id for f in folds if f not in todo], hardware)
    if source is not None:
        metadata["secondreader"]["training"]["init_from"] = {
            "model": source.ref, "weights_sha256": source.metadata["secondreader"].get("weights_sha256")}
    # the calibrated study probabilities against the truth: validation (the shipped model) and the
    # held-out backgrounds pooled (each fold's model, calibrated on its own validation pool)
    curves = {"validation": (cal.probability(val.logits), val.labels)}
    if fold_results:
        held = [(Calibration.from_json(fold_results[f]["calibration"]), Scored.from_json(fold_results[f]["test"]))
                for f in folds]
        curves["held-out backgrounds"] = (np.concatenate([c.probability(s.logits) for c, s in held]),
                                          np.concatenate([s.labels for _, s in held]))
    reliability_png(out / "docs" / "reliability.png", curves)
    metadata["secondreader"]["calibration_plot"] = "docs/reliability.png"
    (out / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
    from .modelcard_dense import write_dense_model_card

    write_dense_model_card(out / "docs" / "README.md", metadata)
    logger.info("wrote bundle %s in %.0f s", cfg.name, time.time() - started)
    return metadata


#: Bands of the held-out nodules for the sensitivity breakdown: contrast (the largest rise of the
#: display value the nodule made where it was inserted) and diameter (a fraction of the model grid's
#: side; about 14 and 21 mm on a 35 cm film).
CONTRAST_BANDS = (0.0, 0.10, 0.15, 0.20)
DIAMETER_BANDS = (0.0, 0.04, 0.06)


def sensitivity_by_band(lesion_scores: np.ndarray, nodules: Sequence[tuple[float, float]], threshold: float,
                        side: int) -> dict[str, list[dict[str, Any]]]:
    """Lesion sensitivity at ``threshold`` within each contrast and diameter band. ``lesion_scores``
    float (n,) and ``nodules`` ``(radius, contrast)`` (n,) in the same order; radii on a ``side``
    grid."""
    attrs = np.asarray(nodules, dtype=np.float64).reshape(-1, 2)
    found = lesion_scores >= threshold
    out: dict[str, list[dict[str, Any]]] = {}
    for name, values, edges in (("contrast", attrs[:, 1], CONTRAST_BANDS),
                                ("diameter_fraction", 2 * attrs[:, 0] / side, DIAMETER_BANDS)):
        rows = []
        for lo, hi in zip(edges, (*edges[1:], math.inf), strict=True):
            inside = (values >= lo) & (values < hi)
            rows.append({"from": lo, "to": None if math.isinf(hi) else hi, "n": int(inside.sum()),
                         "sensitivity": round(float(found[inside].mean()), 4) if inside.any() else None})
        out[name] = rows
    return out


def _held_out_metrics(states: list[dict[str, Any]], *, seed: int, side: int) -> dict[str, Any]:
    """The folds' figures, as the bundle's metrics hold them: ``test`` (pooled), ``folds``, and
    where a fold has a real opacity of unknown nature ``test_strict`` and ``folds_strict``; empty
    without folds."""
    if not states:
        return {}
    pooled, per_fold = _pool_folds(states, seed=seed, side=side)
    metrics: dict[str, Any] = {"test": pooled, "folds": per_fold}
    if any("test_strict" in state for state in states):
        strict, strict_folds = _pool_folds(states, seed=seed, side=side, key="test_strict")
        metrics["test_strict"] = {**strict, "method": strict["method"] + "; real opacities of unknown "
                                  "nature counted as false regions and scoring the study"}
        metrics["folds_strict"] = [f for f, state in zip(strict_folds, states, strict=True) if "test_strict" in state]
    return metrics


def _pool_folds(results: list[dict[str, Any]], *, seed: int, side: int,
                key: str = "test") -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Pooled leave-one-background-out metrics: each fold's test set scored by its own model and
    calibrated by its own validation fit, then pooled; and each fold's own figures. ``key`` picks
    the scoring (``test_strict`` where a fold has it: unknown opacities counted, else ``test``).
    The pooled FROC also breaks the sensitivity at 1 false region per image down by the nodules'
    contrast and diameter (``by_band_at_1``; radii on a ``side`` grid)."""
    probs, labels, images, per_fold = [], [], [], []
    ops: list[float] = []
    nodules: list[tuple[float, float]] | None = []
    for state in results:
        cal = Calibration.from_json(state["calibration"])
        scored = Scored.from_json(state.get(key, state["test"]))
        if scored.nodules is None or nodules is None:
            nodules = None  # a fold kept by an older version: no breakdown
        else:
            nodules.extend(n for ns in scored.nodules for n in ns)
        p = cal.probability(scored.logits)
        probs.append(p)
        labels.append(scored.labels)
        ops.append(cal.operating_point)
        fold_images = [ImageDetections(_cal_scores(im.lesion_scores, cal), _cal_scores(im.false_scores, cal))
                       for im in scored.images]
        images.extend(fold_images)
        pred = p >= cal.operating_point
        y = scored.labels.astype(bool)
        froc = froc_sensitivities(fold_images) if any(im.lesion_scores.size for im in fold_images) else {}
        per_fold.append({"background": state["background"], "n": int(len(y)), "auroc": round(auroc(p, y), 4),
                         "sensitivity": round(float(pred[y].mean()), 4),
                         "specificity": round(float((~pred[~y]).mean()), 4),
                         "froc_1": round(froc.get(1.0, 0.0), 4), "seconds": state["seconds"]})
        if "trained_on" in state:  # a learning-curve run: the real backgrounds this fold's model saw
            per_fold[-1]["trained_on"] = state["trained_on"]
    p_all, y_all = np.concatenate(probs), np.concatenate(labels)
    # Each fold's probabilities are on its own calibrated scale; the pooled operating-point figures
    # apply each fold's own operating point.
    positive = np.concatenate([pr >= op for pr, op in zip(probs, ops, strict=True)])
    study = binary_metrics(p_all, y_all, float(np.median(ops)), seed=seed).to_json()
    study.update({**decision_rates(positive, y_all).to_json(), "threshold": "each fold's own operating point"})
    pooled = {"study": study, "froc": _froc_summary(images, nodules, side, seed=seed),
              "method": "leave one real background out; test nodules by insertion model B at source resolution"}
    return pooled, per_fold


#: Issue 3's targets on the leave-one-background-out test: a model that misses them is shipped for
#: its heatmaps and regions, but does not route studies (see ModelCard.routes).
TARGET_AUROC, TARGET_FROC_AT_1 = 0.95, 0.9


def routing_gate(metrics: dict[str, Any]) -> dict[str, Any]:
    """Whether this model's findings may route studies: only when it met its targets on held-out data
    (scored both ways where a held-out background holds a real opacity of unknown nature: the lower
    figures count)."""
    tests = [metrics.get("test", {})] + ([metrics["test_strict"]] if "test_strict" in metrics else [])
    auroc = min(float(t.get("study", {}).get("auroc", 0.0)) for t in tests)
    froc_1 = min(float(t.get("froc", {}).get("sensitivity", {}).get("1.0", 0.0)) for t in tests)
    met = auroc >= TARGET_AUROC and froc_1 >= TARGET_FROC_AT_1
    reason = (f"held-out study AUROC {auroc:.3f} (target {TARGET_AUROC}), FROC sensitivity at 1 false region "
              f"per image {froc_1:.3f} (target {TARGET_FROC_AT_1})")
    return {"enabled": met, "reason": ("targets met: " if met else "targets not met: ") + reason}


def dense_metadata(cfg: TrainConfig, spec: InputSpec, cal: Calibration, metrics: dict[str, Any], device_uid: str,
                   weights_sha256: str, config_path: Path | None, seconds: float,
                   folds_reused: Sequence[str], hardware: dict[str, str]) -> dict[str, Any]:
    lc = cfg.lesions
    assert lc is not None
    code, side = cfg.data.finding, lc.input_size
    threshold = cal.map_threshold(cal.operating_point)
    return {
        **bundle_header(cfg, "localisation"),
        "copyright": "secondreader authors; background images under their own licences (see data_source)",
        "data_source": cfg.provenance.get("data_source", ""),
        "data_type": f"greyscale chest radiographs, centre-cropped and resized to {side}x{side}",
        "intended_use": cfg.provenance.get("intended_use", ""),
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "magnitude", "modality": "CR/DX", "num_channels": 1,
                                 "spatial_shape": [side, side], "dtype": "float32", "value_range": [0, 1],
                                 "is_patch_data": False, "channel_def": {"0": "image"}}},
            "outputs": {"pred": {"type": "probabilities", "format": "segmentation", "num_channels": 1,
                                 "spatial_shape": [side, side], "dtype": "float32", "value_range": [0, 1],
                                 "is_onehot": False, "channel_def": {"0": code}}},
        },
        "secondreader": {
            "device_uid": device_uid,
            "weights_file": "model.pt",
            "weights_sha256": weights_sha256,
            "network": {"class": cfg.network.class_, "args": cfg.network.args},
            "saliency": {"method": "dense", "smoothing_sigma": cfg.saliency.smoothing_sigma,
                         "flip_average": cfg.saliency.flip_average,
                         "region_threshold": round(threshold, 6),
                         "region_floor": round(max(1e-4, 0.5 * threshold), 6)},
            "input": {"spatial_shape": [side, side], "mean": round(spec.mean, 6), "std": round(spec.std, 6),
                      "preprocessing": "header VOI or 0.5-99.5 percentile window, MONOCHROME1 inversion, "
                                       "centre square crop, area resize, 0.5-99.5 percentile stretch, normalise"},
            "findings": {code: {
                "channel": 0,
                "display_name": cfg.data.display_name,
                "study_score": "maximum of the smoothed logit map (the heatmap is its sigmoid)",
                "calibration": {**cal.calibrator.to_json(), "fitted_on": "validation"},
                "operating_point": round(cal.operating_point, 6),
                "operating_point_method": cfg.operating_point.describe(),
                "urgent_point": round(cal.urgent_point, 6),
                "urgent_point_method": cfg.operating_point.describe_urgent(),
            }},
            "metrics": metrics,
            "routing": routing_gate(metrics),
            "training": {
                "config": str(config_path) if config_path else None,
                "seed": cfg.seed,
                "epochs": cfg.schedule.epochs,
                "loss": describe_loss(cfg.loss, BUILT_IN_DENSE_LOSS),
                "lesions": lc.model_dump(mode="json", exclude={"backgrounds"}),
                "backgrounds": [{"id": b.id, "source": b.source, "real_lesions": b.real_lesions,
                                 "unknown": [u.note for u in b.unknown]} for b in lc.backgrounds],
                "seconds": round(seconds, 1),
                **hardware,
                "folds_reused": list(folds_reused),
            },
            "provenance": cfg.provenance,
        },
    }
