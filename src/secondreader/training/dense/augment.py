"""Training augmentation of the dense recipe, for robustness rather than for the generator.

Each training batch (:func:`training_batch`) takes pool pictures through gamma and linear contrast,
Gaussian blur and noise (:func:`_augment_intensity`), a jittered percentile stretch
(:func:`_stretch_points`, as a served crop of the film would be stretched), then random-size square
crops, some centred near a nodule or on a mined false peak (:func:`_crops`). Geometry (scale,
rotation, translation, flip) is drawn when the pool is built (:mod:`.data`). Every random draw comes
from the one ``torch.Generator`` passed in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ...model.dense import gaussian_smooth
from ...preprocessing import InputSpec
from ..config import LesionConfig
from ..lesions import Nodule
from .data import Pool
from .inputs import standardise

__all__ = ["training_batch"]


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
            xi = gaussian_smooth(xi, float(sigmas[i]))
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


def training_batch(pool: Pool, idx: np.ndarray, lc: LesionConfig, spec: InputSpec, g: torch.Generator,
           hard: Sequence[Sequence[tuple[int, int]]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One training batch of the pool's pictures ``idx``: intensity augmentation, the jittered
    percentile stretch and the crops (inputs, targets, weights), every random draw from ``g``."""
    x = torch.from_numpy(pool.images[idx].astype(np.float32))[:, None]
    x = standardise(_augment_intensity(x, lc, g), spec, points=_stretch_points(len(idx), lc, g))
    t = torch.from_numpy(pool.targets[idx].astype(np.float32))[:, None]
    w = torch.from_numpy(pool.weights[idx].astype(np.float32))[:, None]
    return _crops(x, t, w, [pool.nodules[i] for i in idx], lc, g, hard)
