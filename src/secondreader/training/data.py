"""Training data sources. Today: the MedMNIST ``.npz`` (PneumoniaMNIST)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = ["Split", "load_medmnist"]


@dataclass(frozen=True, slots=True)
class Split:
    """``images``: float32 (N, 1, H, W) in [0, 1] (bright bone); ``labels``: int64 (N,)."""

    images: torch.Tensor
    labels: np.ndarray


def load_medmnist(path: Path, *, limit: int | None = None) -> dict[str, Split]:
    """The train/val/test splits of a MedMNIST npz (binary label in column 0); ``limit`` keeps the
    first N images of each split."""
    if not path.is_file():
        raise FileNotFoundError(f"training data not found: {path}")
    with np.load(path) as npz:
        out = {}
        for split in ("train", "val", "test"):
            images = npz[f"{split}_images"][:limit]
            if images.ndim != 3:
                raise ValueError(f"{split}_images must be (N, H, W) greyscale, not {images.shape}")
            out[split] = Split(
                images=torch.from_numpy(images.astype(np.float32) / 255.0)[:, None],
                labels=npz[f"{split}_labels"][:limit].reshape(len(images), -1)[:, 0].astype(np.int64),
            )
    return out
