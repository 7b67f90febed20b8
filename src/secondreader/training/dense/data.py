"""The dense recipe's pictures: real backgrounds, training and validation pools, test sets.

- :func:`load_backgrounds` reads the configured real chest films (through the serving chain's
  windowing), reduced to ``lesions.test_max_side``;
- :class:`Pool` and :func:`build_pool`: pictures on the model grid under new geometry, with
  model-A nodules inserted (:mod:`secondreader.training.lesions`), their footprints and loss
  weights; :func:`fit_members` picks the pictures one fit trains or is calibrated on;
- :class:`EvalSet`, :func:`build_test_set` and friends: test images with model-B nodules inserted
  at the source resolution, then prepared as serving prepares a film (``prepare_frame``);
- :func:`save_pool` / :func:`load_pool`: a pool as memory-mapped files for worker processes.

Every picture's random stream is seeded from the run's seed, a stream number (``STREAM_*``) and its
place, so pools and tests do not depend on how they are built.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import astuple, dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from ...preprocessing import InputSpec, prepare_frame
from ..config import BackgroundConfig, LesionConfig, TrainConfig
from ..lesions import (
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

__all__ = ["EvalSet", "Pool", "as_mask", "background_test_set", "build_pool", "build_test_set", "eval_members",
           "fit_members", "generated_test_set", "insert_a_nodules", "load_backgrounds", "load_pool", "members_of",
           "pictures_per_background", "pool_eval_set", "save_pool"]

#: Seeds of the separate random streams: the training pool, the validation pool, the real backgrounds'
#: tests (``STREAM_TEST`` + the background's index), the generated-chest test, the learning curve's draw
#: of a fold's backgrounds.
STREAM_TRAIN, STREAM_VALIDATION, STREAM_TEST, STREAM_TEST_GENERATED, STREAM_FOLD_DRAW = 1, 2, 3, 4, 5


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


def insert_a_nodules(picture: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
                     lc: LesionConfig) -> tuple[list[Nodule], np.ndarray]:
    """Insert 0-``max_nodules`` model-A nodules into ``picture`` (in place) inside ``mask``, as many
    as ``rng`` draws (none in ``1 - positive_fraction`` of pictures); their list and their footprint
    (bool, the picture's shape)."""
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
            nodules, target = insert_a_nodules(picture, mask if unknown is None else mask & ~unknown, rng, lc)
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
        drawn = np.random.default_rng([seed, STREAM_FOLD_DRAW, held]).choice(others, lc.fold_backgrounds, replace=False)
        others = sorted(int(g) for g in drawn)
    keep = (groups < 0) | (np.isin(groups, others) & (ranks < count))
    return np.nonzero(keep)[0], others


def members_of(cfg: TrainConfig, pool: Pool, *, validation: bool = False,
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
    sources = [generated_chest(np.random.default_rng([seed, STREAM_TEST_GENERATED, k]), 2 * side)[0]
               for k in range(max(1, lc.test_generated // 10))]
    return build_test_set(sources, max(2, lc.test_generated // len(sources)), lc, spec, seed=seed,
                          stream=STREAM_TEST_GENERATED)


def background_test_set(lc: LesionConfig, backgrounds: Sequence[RealBackground], f: int, spec: InputSpec, *,
                        seed: int) -> EvalSet:
    """Background ``f``'s test images (model-B nodules): its fold's held-out test."""
    held = backgrounds[f]
    return build_test_set([held.picture], lc.test_per_background, lc, spec, seed=seed, stream=STREAM_TEST + f,
                          unknowns=[held.unknown])


def as_mask(members: np.ndarray, n: int) -> np.ndarray:
    """Indices ``members`` of ``n`` pictures as a bool mask (n,)."""
    keep = np.zeros(n, bool)
    keep[members] = True
    return keep


def eval_members(pool: Pool, members: np.ndarray) -> EvalSet:
    """:func:`pool_eval_set` of the pool's pictures ``members`` (indices)."""
    return pool_eval_set(pool, as_mask(members, len(pool)))


def pool_eval_set(pool: Pool, keep: np.ndarray) -> EvalSet:
    """The pool's pictures where ``keep``; where a picture's label is unknown (loss weight 0: real
    lesions, unknown regions), detections are not counted."""
    idx = np.nonzero(keep)[0]
    unknown = [None if pool.weights[i].all() else np.asarray(pool.weights[i]) == 0 for i in idx]
    return EvalSet(torch.from_numpy(pool.images[idx].astype(np.float32))[:, None],
                   [pool.nodules[i] for i in idx], normalised=False, unknown=unknown)


def save_pool(pool: Pool, folder: Path) -> None:
    """Write ``pool`` to ``folder`` (its arrays as ``.npy`` files, its nodules as JSON) for
    :func:`load_pool` in worker processes."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("images", "targets", "weights", "groups"):
        np.save(folder / f"{name}.npy", getattr(pool, name))
    (folder / "nodules.json").write_text(json.dumps([[astuple(n) for n in ns] for ns in pool.nodules]))


def load_pool(folder: Path) -> Pool:
    """The pool :func:`save_pool` wrote to ``folder``, its pictures, targets and weights memory-mapped."""
    arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in ("images", "targets", "weights")}
    nodules = [[Nodule(*n) for n in ns] for ns in json.loads((folder / "nodules.json").read_text())]
    return Pool(arrays["images"], arrays["targets"], arrays["weights"], np.load(folder / "groups.npy"), nodules)
