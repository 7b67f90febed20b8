"""Training data sources. Today: the MedMNIST ``.npz`` (PneumoniaMNIST)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = ["Split", "load_manifest", "load_medmnist", "load_splits"]


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


def load_manifest(path: Path, *, finding: str, size: tuple[int, int], limit: int | None = None) -> dict[str, Split]:
    """Splits from a CSV manifest: ``path`` (a DICOM file, relative to the CSV), ``split``
    (train/val/test) and a column named after the finding with 1, 0 or empty (unknown: skipped).

    Each image goes through the serving chain (header read, eligibility, decode, window, crop,
    resize), so training sees what serving will. Ineligible or unreadable files are skipped and
    counted in the log, never fatal.
    """
    import csv
    import logging

    from ..dicom.io import InputFile
    from ..errors import SecondReaderError
    from ..pipeline import display_frames, parse_input
    from ..preprocessing import InputSpec, prepare_frame

    logger = logging.getLogger(__name__)
    spec = InputSpec(size=size, mean=0.0, std=1.0)
    images: dict[str, list[torch.Tensor]] = {"train": [], "val": [], "test": []}
    labels: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    skipped = 0
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        split, label = (row.get("split") or "").strip(), (row.get(finding) or "").strip()
        if split not in images or label not in ("0", "1"):
            skipped += 1
            continue
        if limit is not None and len(images[split]) >= limit:
            continue
        file = (path.parent / row["path"]).resolve()
        parsed = parse_input(InputFile(file.name, file, size=file.stat().st_size if file.exists() else 0))
        if parsed.instance is None or parsed.eligibility is None or not parsed.eligibility.ok:
            skipped += 1
            continue
        try:
            frame = display_frames(parsed, max_pixels=64_000_000)[0]
        except (SecondReaderError, OSError):
            skipped += 1
            continue
        tensor, _ = prepare_frame(frame, spec)
        images[split].append(tensor)
        labels[split].append(int(label))
    if skipped:
        logger.warning("manifest: %d row(s) skipped (unknown label, unknown split, ineligible or unreadable)", skipped)
    out = {}
    for split in ("train", "val", "test"):
        if not images[split]:
            raise ValueError(f"manifest has no usable {split} images")
        out[split] = Split(images=torch.stack(images[split]), labels=np.asarray(labels[split], dtype=np.int64))
    return out


def load_splits(kind: str, path: Path, *, finding: str, limit: int | None = None) -> dict[str, Split]:
    if kind == "medmnist_npz":
        return load_medmnist(path, limit=limit)
    if kind == "manifest":
        return load_manifest(path, finding=finding, size=(28, 28), limit=limit)
    raise ValueError(f"unknown data kind {kind!r}")
